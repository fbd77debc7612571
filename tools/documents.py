"""Document tools: hybrid search over ingested collections, reading a document, ingesting a
task's attachments, and the deterministic extract-and-verify steps of the "answer a question
across a collection" plan.

The store arrives as `ctx.extras["memory"]`: a `memory.semantic.SemanticStore`, or any object
with its async `search` and `read_document`. Searches look in the task's scope first, then its
project's (`ctx.extras["project_id"]`, when set), then the tenant's org-wide documents.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from memory.semantic import ChunkFilter, Scope, StoreError
from tools.registry import ToolContext, ToolError, tool

__all__ = [
    "ATTACHMENTS_COLLECTION", "check_citations", "extract_evidence", "ingest_attachments", "rank_sentences",
    "read_document", "search_documents", "search_scopes", "semantic_store",
]

ATTACHMENTS_COLLECTION = "attachments"
"""Where a task's attached files are ingested, in the task's own scope."""

Limit = Annotated[int, Field(ge=1, le=50)]
Page = Annotated[int, Field(ge=1)]
MaxChars = Annotated[int, Field(ge=100, le=200_000)]

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    "a an and are as at be by did do does for from has have how in is it its many much of on or the "
    "this to was were what when where which who why with".split()
)
_MARKER = re.compile(r"\[(\d+)\]")


def semantic_store(ctx: ToolContext) -> Any:
    store = ctx.extras.get("memory")
    if store is None:
        raise ToolError(
            "no semantic memory is available to this tool runner; hand a memory.semantic.SemanticStore "
            "to tools as extras['memory']"
        )
    return store


def search_scopes(ctx: ToolContext) -> list[Scope]:
    return Scope.chain(task_id=ctx.task_id, project_id=ctx.extras.get("project_id"))


@tool
async def search_documents(
    ctx: ToolContext,
    query: str,
    collection: str,
    limit: Limit = 5,
    filters: ChunkFilter | None = None,
) -> dict[str, Any]:
    """Search a document collection (hybrid: meaning and keywords) and return passages with citations.

    Args:
        query: The question or keywords to look for.
        collection: The collection the documents were ingested into.
        limit: How many passages to return, best first.
        filters: Optional metadata conditions (source files, doc ids, formats, page range).
    """
    try:
        passages = await semantic_store(ctx).search(
            query, tenant=ctx.tenant, collection=collection, scopes=search_scopes(ctx), limit=limit, filters=filters
        )
    except StoreError as exc:
        raise ToolError(str(exc)) from None
    return {
        "query": query,
        "collection": collection,
        "passages": [
            {
                "n": n,
                "text": p.text,
                "score": round(p.score, 4),
                "doc_id": p.doc_id,
                "source": Path(p.source).name,
                "location": p.location,
                "page": p.page,
                "citation": f"[{n}] {p.citation} (doc {p.doc_id})",
            }
            for n, p in enumerate(passages, start=1)
        ],
    }


@tool
async def read_document(
    ctx: ToolContext, doc_id: str, page_start: Page = 1, page_end: Page | None = None, max_chars: MaxChars = 20_000
) -> dict[str, Any]:
    """Read a document's parsed text by id, optionally a page range (slides and sheets count as pages).

    Args:
        doc_id: The doc_id of a passage returned by search_documents.
        page_start: First page to return (1-based).
        page_end: Last page to return; omit for the rest of the document.
        max_chars: Stop after this much text; `truncated` then says so.
    """
    try:
        doc = await semantic_store(ctx).read_document(
            doc_id,
            tenant=ctx.tenant,
            scopes=search_scopes(ctx),
            page_start=page_start,
            page_end=page_end,
            max_chars=max_chars,
        )
    except StoreError as exc:
        raise ToolError(str(exc)) from None
    return doc.model_dump() | {"source": Path(doc.source).name}


@tool
async def ingest_attachments(ctx: ToolContext) -> dict[str, Any]:
    """Ingest the task's attached files (`attachments/` in its workspace) into its own scope.

    They go into the `attachments` collection, where search_documents finds them before the
    project's and the org's documents. Idempotent: files ingested before are skipped; with no
    attachments it does nothing.
    """
    from memory.ingest import FileStatus, IngestConfig, IngestError

    folder = ctx.workspace / "attachments"
    scope = Scope.task(ctx.task_id)
    summary: dict[str, Any] = {"collection": ATTACHMENTS_COLLECTION, "scope": scope.key, "files": 0, "stored": 0,
                               "unchanged": 0, "duplicates": 0, "failed": 0, "chunks": 0, "failures": [],
                               "documents": []}
    if not folder.is_dir() or not any(p.is_file() for p in folder.rglob("*")):
        return summary
    # The app's settings, but a task's few files need one embedding actor, not the pool: actor 0
    # of the app's (warm) pool, since runs that differ only in actor count share actors.
    config = (ctx.extras.get("ingest_config") or IngestConfig()).model_copy(update={"embed_actors": 1})
    try:
        report = await semantic_store(ctx).ingest(folder, collection=ATTACHMENTS_COLLECTION, tenant=ctx.tenant,
                                                  scope=scope, config=config)
    except (IngestError, ValueError) as exc:
        raise ToolError(f"the attachments could not be ingested: {exc}") from None
    except Exception as exc:  # the store's owner or a worker died: the cluster heals, so a retry may work
        if type(exc).__module__.startswith("ray."):
            raise ToolError(f"ingesting the attachments was interrupted: {type(exc).__name__}",
                            retryable=True) from None
        raise

    def name(source: str) -> str:
        try:
            return Path(source).relative_to(ctx.workspace).as_posix()
        except ValueError:
            return Path(source).name

    summary |= {
        "files": len(report.files),
        "stored": report.count(FileStatus.stored),
        "unchanged": report.count(FileStatus.unchanged),
        "duplicates": report.count(FileStatus.duplicate) + report.count(FileStatus.near_duplicate),
        "failed": len(report.failures),
        "chunks": report.progress.chunks_stored,
        "failures": [{"file": name(f.source), "reason": f.reason} for f in report.failures],
        "documents": [{"file": name(f.source), "status": f.status.value, "doc_id": f.doc_id, "chunks": f.chunks}
                      for f in report.files if f.status != FileStatus.failed],
    }
    return summary


def _terms(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


def rank_sentences(question: str, passages: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The passages' sentences that share words with the question, best first: more shared
    words, then the better-ranked passage, then the earlier sentence."""
    wanted = _terms(question)
    scored = []
    for rank, passage in enumerate(passages):
        for sentence in _SENTENCE.split(passage.get("text", "")):
            overlap = len(wanted & _terms(sentence))
            if overlap:
                scored.append((-overlap, rank, sentence.strip(), passage))
    scored.sort(key=lambda s: s[:2])
    return [(sentence, passage) for _, _, sentence, passage in scored]


@tool
async def extract_evidence(
    ctx: ToolContext, question: str, passages: list[dict[str, Any]], max_sentences: Limit = 5
) -> dict[str, Any]:
    """Pick the sentences of retrieved passages that best answer a question, each with its citation.

    Extractive and deterministic: the fallback writer when no model is configured.

    Args:
        question: The question to answer.
        passages: The `passages` of a search_documents result.
        max_sentences: How many sentences to keep.
    """
    evidence, sources = [], {}
    for sentence, passage in rank_sentences(question, passages)[:max_sentences]:
        key = (passage["doc_id"], passage["location"])
        n = sources.setdefault(key, len(sources) + 1)
        evidence.append({"n": n, "sentence": sentence, "doc_id": passage["doc_id"], "source": passage["source"],
                         "location": passage["location"]})
    lines = [f"{e['sentence']} [{e['n']}]" for e in evidence] or ["The collection holds no passage that answers this."]
    refs = [f"[{n}] {e['source']}, {e['location']} (doc {e['doc_id']})"
            for n, e in sorted({e["n"]: e for e in evidence}.items())]
    body = "\n\n".join(lines)
    markdown = body + ("\n\n## Sources\n\n" + "\n".join(refs) if refs else "")
    sources = [{"n": n, "title": e["source"], "location": e["location"], "doc_id": e["doc_id"]}
               for n, e in sorted({e["n"]: e for e in evidence}.items())]
    return {"question": question, "evidence": evidence, "sources": sources, "body": body, "markdown": markdown}


def _normalise(text: str) -> str:
    return " ".join(text.split())


@tool
async def check_citations(ctx: ToolContext, report: str, evidence: list[dict[str, Any]]) -> dict[str, Any]:
    """Verify that every citation marker in a report is backed by a sentence found in the cited document.

    Deterministic: each cited sentence must occur in the stored text of its document.

    Args:
        report: The report's Markdown, with [n] citation markers.
        evidence: The `evidence` list of extract_evidence (n, sentence, doc_id).
    """
    by_n: dict[int, list[dict[str, Any]]] = {}
    for item in evidence:
        by_n.setdefault(int(item["n"]), []).append(item)
    problems, texts = [], {}
    cited = sorted({int(m) for m in _MARKER.findall(report)})
    for n in cited:
        if n not in by_n:
            problems.append(f"[{n}] has no evidence")
            continue
        for item in by_n[n]:
            if item["doc_id"] not in texts:
                try:
                    doc = await read_document(ctx, item["doc_id"], max_chars=200_000)
                except ToolError as exc:
                    problems.append(f"[{n}] cites {item['doc_id']}: {exc.message}")
                    continue
                texts[item["doc_id"]] = _normalise(" ".join(p["text"] for p in doc["pages"]))
            if _normalise(item["sentence"]) not in texts[item["doc_id"]]:
                problems.append(f"[{n}] sentence not found in doc {item['doc_id']}: {item['sentence'][:80]!r}")
    if problems:
        raise ToolError("unsupported citations: " + "; ".join(problems))
    return {"supported": True, "citations": len(cited), "sentences": sum(len(by_n.get(n, [])) for n in cited)}

"""Extraction across a collection: the answer to one question (or each field of a form) from
every document, as a table.

`extract_per_document` takes one shard of the collection's documents (the plan fans out one
node per shard, so shards run in parallel on the tool pool's replicas) and writes its rows to
the workspace; `tabulate_extraction` joins the shards into CSV and Parquet. Offline and
deterministic: each answer is the sentence of the document's passages nearest the question
(by meaning, then by shared words), quoted with where it was found.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Annotated, Any

from pydantic import Field

from memory.per_document import best_per_document, list_documents
from memory.semantic import StoreError
from tools.builtin.data import write_table
from tools.documents import rank_sentences, search_scopes, semantic_store
from tools.registry import ToolContext, ToolError, tool
from tools.workspace import check_base_name, resolve_inside

__all__ = ["extract_per_document", "tabulate_extraction"]

SHARD_DIR = "extraction"
Fields = Annotated[dict[str, str], Field(min_length=1, max_length=20)]
_COLUMN = r"^[A-Za-z_][A-Za-z0-9_]{0,40}$"


def _fields(question: str | None, fields: dict[str, str] | None) -> dict[str, str]:
    """{column: question}: the form's fields, or the one question as column `answer`."""
    wanted = dict(fields or {})
    if question:
        wanted.setdefault("answer", question)
    if not wanted:
        raise ToolError("say what to extract: a `question`, or `fields` as {column: question}")
    bad = [c for c in wanted if not re.fullmatch(_COLUMN, c) or c in ("doc_id", "source")]
    if bad:
        raise ToolError(f"field names {bad} are not usable as columns: letters, digits and _, not starting with a "
                        "digit, and not doc_id or source")
    return wanted


async def _semantic(ctx: ToolContext) -> Any:
    store = semantic_store(ctx)
    return await store.get() if hasattr(store, "get") else store  # a LazySemanticStore connects on first use


@tool
async def extract_per_document(
    ctx: ToolContext,
    collection: str,
    question: str | None = None,
    fields: Fields | None = None,
    shard: Annotated[int, Field(ge=0)] = 0,
    shards: Annotated[int, Field(ge=1, le=64)] = 1,
    per_document: Annotated[int, Field(ge=1, le=10)] = 3,
) -> dict[str, Any]:
    """Answer a question (or each field of a form) from every document of one shard of a
    collection; the rows go to extraction/shard-<n>.jsonl in the workspace.

    Args:
        collection: The collection the documents were ingested into.
        question: What to find in each document (the column `answer`).
        fields: A form: {column: question}, one column per question.
        shard: Which shard of the collection's documents (0-based); documents are split by doc_id.
        shards: How many shards the plan splits the collection into.
        per_document: Passages of each document to look in, per question.
    """
    if shard >= shards:
        raise ToolError(f"shard {shard} does not exist: shards are numbered 0 to {shards - 1}")
    wanted = _fields(question, fields)
    store = await _semantic(ctx)
    scopes = search_scopes(ctx)
    try:
        documents = await asyncio.to_thread(list_documents, store, tenant=ctx.tenant, collection=collection,
                                            scopes=scopes)
        if not documents:
            raise ToolError(f"collection {collection!r} holds no documents this task can read; ingest files into it "
                            "first (POST /v1/collections/{name}/ingest)")
        mine = documents[shard::shards]
        ids = [d["doc_id"] for d in mine]
        found = {column: await asyncio.to_thread(best_per_document, store, q, tenant=ctx.tenant,
                                                 collection=collection, scopes=scopes, doc_ids=ids,
                                                 per_document=per_document)
                 for column, q in wanted.items()}
    except StoreError as exc:
        raise ToolError(str(exc)) from None
    rows, answered = [], dict.fromkeys(wanted, 0)
    for doc in mine:
        row: dict[str, Any] = {"doc_id": doc["doc_id"], "source": doc["source"]}
        for column, q in wanted.items():
            passages = [p.model_dump() for p in found[column].get(doc["doc_id"], [])]
            ranked = rank_sentences(q, passages)
            sentence, passage = ranked[0] if ranked else (None, passages[0] if passages else None)
            row[column] = sentence
            row[f"{column}_location"] = passage["location"] if sentence and passage else None
            answered[column] += sentence is not None
        rows.append(row)
    out = resolve_inside(ctx.workspace, f"{SHARD_DIR}/shard-{shard}-of-{shards}.jsonl")

    def write() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    await asyncio.to_thread(write)
    return {"shard": shard, "shards": shards, "documents": len(mine), "of_documents": len(documents),
            "answered": answered, "columns": ["doc_id", "source", *[c for f in wanted for c in (f, f"{f}_location")]],
            "file": out.relative_to(ctx.workspace.resolve()).as_posix()}


@tool
async def tabulate_extraction(ctx: ToolContext, shards: list[dict[str, Any]], name: str = "answers") -> dict[str, Any]:
    """Join the shards of an extraction into one table, written as NAME.csv and NAME.parquet.

    Args:
        shards: The outputs of the extract_per_document nodes, one per shard.
        name: File name without extension.
    """
    import polars as pl

    check_base_name(name, (".csv", ".parquet"), "answers")
    counts = {s.get("shards") for s in shards}
    if not shards or len(counts) != 1 or sorted(s.get("shard") for s in shards) != list(range(counts.pop() or 0)):
        raise ToolError(f"expected one output of extract_per_document per shard (0 to n-1, the same n); got shards "
                        f"{sorted(str(s.get('shard')) for s in shards)}")
    root = ctx.workspace.resolve()

    def build() -> dict[str, Any]:
        rows = []
        for s in shards:
            path = resolve_inside(root, str(s.get("file", "")))
            if not path.is_file():
                raise ToolError(f"shard {s.get('shard')}'s rows are missing ({s.get('file')!r}); run its node again")
            rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        rows.sort(key=lambda r: (r["source"], r["doc_id"]))
        frame = pl.DataFrame(rows, schema={c: pl.String for c in shards[0]["columns"]})
        csv, parquet = write_table(root, frame, f"{name}.csv"), write_table(root, frame, f"{name}.parquet")
        answered = {k: sum(s["answered"][k] for s in shards) for k in shards[0]["answered"]}
        return {"rows": len(rows), "columns": frame.columns, "answered": answered, "csv": csv["artifact"],
                "parquet": parquet["artifact"], "documents": shards[0]["of_documents"]}

    return await asyncio.to_thread(build)

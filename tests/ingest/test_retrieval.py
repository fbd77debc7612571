"""Hybrid retrieval over an ingested corpus with planted facts; scopes, filters, reading, and
the document tools and plan template on top of it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import tools.builtin  # noqa: F401  (registers write_report)
import tools.documents  # noqa: F401  (registers the document tools)
from memory.ingest import FileStatus, ingest
from memory.semantic import ChunkFilter, Scope, StoreError
from tests.ingest.corpus import planted_corpus, small_config, write_doc
from tools.registry import ToolContext, ToolError, default_registry
from troupe.models import AcceptanceTest
from troupe.plan_templates import load_template
from troupe.plans import resolve_args, validate_plan

pytestmark = pytest.mark.ray

ORG = [Scope.org()]


@pytest.fixture(scope="module")
def planted(tmp_path_factory, qdrant_settings, ray_cluster):
    corpus, facts = planted_corpus(tmp_path_factory.mktemp("planted"), facts=40, filler_docs=120)
    report = ingest(corpus.root, collection="facts", settings=qdrant_settings, config=small_config())
    assert not report.failures and report.progress.chunks_stored == corpus.expected_chunks
    return facts


def test_the_planted_source_is_in_the_top_five_for_nine_questions_in_ten(planted, store):
    hits = 0
    for fact in planted:
        passages = store.search_sync(fact.question, tenant="default", collection="facts", scopes=ORG, limit=5)
        hits += str(fact.path) in {p.source for p in passages}
    print(f"planted source in the top 5 for {hits}/{len(planted)} questions")
    assert hits / len(planted) >= 0.9, f"{hits}/{len(planted)}"


def test_filters_narrow_the_results(planted, store):
    passages = store.search_sync("project budget", tenant="default", collection="facts", scopes=ORG, limit=10,
                                 filters=ChunkFilter(formats=["pdf"], page_gte=2))
    assert passages and all(p.source.endswith(".pdf") and p.page >= 2 for p in passages)
    assert store.search_sync("project budget", tenant="other", collection="facts", scopes=ORG) == []


def test_a_task_sees_its_own_documents_first_and_no_other_tasks(planted, store, qdrant_settings, tmp_path):
    fact = planted[0]
    body = f"{fact.question.replace('?', '')} is answered here. The figure was revised to 12345 last week."
    attachment = write_doc(tmp_path / "attachment.txt", [("Task Notes", body)])
    report = ingest(attachment, collection="facts", scope=Scope.task("t-1"), settings=qdrant_settings,
                    config=small_config())
    assert report.count(FileStatus.stored) == 1

    def search(task_id: str) -> list:
        return store.search_sync(fact.question, tenant="default", collection="facts",
                                 scopes=Scope.chain(task_id=task_id), limit=5)

    mine = search("t-1")
    assert mine[0].source == str(attachment) and mine[0].scope == "task:t-1"
    assert len(mine) == 5 and str(fact.path) in {p.source for p in mine[1:]}  # then the org's documents
    others = search("t-2")
    assert str(attachment) not in {p.source for p in others}
    with pytest.raises(StoreError, match="no document"):
        store.read_document_sync(mine[0].doc_id, tenant="default", scopes=Scope.chain(task_id="t-2"))


def test_read_document_returns_page_ranges(planted, store):
    pdf = next(f for f in planted if f.path.suffix == ".pdf")
    doc_id = store.search_sync(pdf.question, tenant="default", collection="facts", scopes=ORG,
                               filters=ChunkFilter(sources=[str(pdf.path)]))[0].doc_id
    whole = store.read_document_sync(doc_id, tenant="default", scopes=ORG)
    assert whole.page_count == 3 and [p.page for p in whole.pages] == [1, 2, 3]
    assert pdf.answer in " ".join(p.text for p in whole.pages)
    part = store.read_document_sync(doc_id, tenant="default", scopes=ORG, page_start=2, page_end=2, max_chars=100)
    assert [p.page for p in part.pages] == [2] and part.truncated and len(part.pages[0].text) == 100


def test_near_duplicates_are_stored_once_and_a_copy_takes_over_a_changed_file(store, qdrant_settings, tmp_path):
    sections = [("Freight Review", "The annual freight review measured the costs of every route. " * 6),
                ("Harbour Fees", "The harbour fees doubled for the northern terminal in spring. " * 6)]
    original, copy = write_doc(tmp_path / "a.txt", sections), tmp_path / "b.txt"
    copy.write_bytes(original.read_bytes())
    write_doc(tmp_path / "c.md", sections)  # the same text in another format: a near-duplicate
    (tmp_path / ".notes.txt").write_text("hidden files are not documents")
    # An fsspec URL works as well as a path.
    first = ingest(f"file://{tmp_path}", collection="dups", settings=qdrant_settings, config=small_config())
    assert [(Path(f.source).name, f.status) for f in first.files] == [
        ("a.txt", FileStatus.stored), ("b.txt", FileStatus.duplicate), ("c.md", FileStatus.near_duplicate)]
    assert store.count_sync(tenant="default", collection="dups", scope=Scope.org()) == 2

    write_doc(original, [("Rail Review", "The rail review approved the new timber terminal near the valley. " * 6)])
    second = ingest(tmp_path, collection="dups", settings=qdrant_settings, config=small_config())

    assert {Path(f.source).name: f.status for f in second.files}["a.txt"] == FileStatus.stored
    assert store.count_sync(tenant="default", collection="dups", scope=Scope.org()) == 3
    hit = store.search_sync("harbour fees", tenant="default", collection="dups", scopes=ORG, limit=1)[0]
    assert Path(hit.source).name == "b.txt"  # the old content now cites the copy that still has it


def _ctx(store, workspace: Path, task_id: str = "t-9") -> ToolContext:
    return ToolContext(task_id=task_id, tenant="default", node_id="n", idempotency_key="k", workspace=workspace,
                       extras={"memory": store})


async def test_search_and_read_tools_return_citations(planted, store, tmp_path):
    ctx, fact = _ctx(store, tmp_path), planted[1]
    found = await default_registry.get("search_documents")(ctx, {"query": fact.question, "collection": "facts"})
    top = found["passages"][0]
    assert top["citation"].startswith(f"[1] {top['source']}, {top['location']} (doc {top['doc_id']})")
    doc = await default_registry.get("read_document")(ctx, {"doc_id": top["doc_id"], "page_start": 1})
    assert doc["source"] == top["source"] and doc["pages"]
    with pytest.raises(ToolError, match="use a doc_id returned by search_documents"):
        await default_registry.get("read_document")(ctx, {"doc_id": "0000000000000000"})


async def test_the_answer_template_runs_end_to_end_with_verified_citations(planted, store, tmp_path):
    fact = next(f for f in planted if f.path.suffix == ".docx")
    doc, plan = load_template("answer_from_collection", {"question": fact.question, "collection": "facts"})
    validate_plan(plan, {name: default_registry.get(name) for name in default_registry.names()})
    tests = [AcceptanceTest.model_validate(t) for t in doc["acceptance_tests"]]

    ctx, outputs = _ctx(store, tmp_path), {}
    for node in plan.nodes:  # listed in dependency order
        outputs[node.id] = await default_registry.get(node.tool)(ctx, resolve_args(node.args, outputs))

    answer = (tmp_path / "answer.md").read_text()
    assert fact.answer in answer and outputs["verify"]["supported"]
    pattern = next(t for t in tests if t.id == "cites_sources").params["pattern"]
    assert re.search(pattern, answer, re.MULTILINE)
    forged = [dict(outputs["extract"]["evidence"][0], sentence="The moon is made of cheese.")]
    with pytest.raises(ToolError, match="sentence not found"):
        await default_registry.get("check_citations")(ctx, {"report": "A claim [1]", "evidence": forged})


async def test_the_extraction_template_answers_from_every_document_in_a_table(planted, store, tmp_path):
    """extract_from_collection: four shards, each document once, the planted document's row
    holding its answer with where it was found; the table as CSV, Parquet and a PDF report."""
    import polars as pl
    from pypdf import PdfReader

    import tools.extraction  # noqa: F401  (registers the extraction tools)

    fact = next(f for f in planted if f.path.suffix in (".txt", ".md", ".docx"))
    doc, plan = load_template("extract_from_collection", {"question": fact.question, "collection": "facts"})
    validate_plan(plan, {name: default_registry.get(name) for name in default_registry.names()})
    ctx, outputs = _ctx(store, tmp_path), {}
    for node in plan.nodes:  # listed in dependency order
        outputs[node.id] = await default_registry.get(node.tool)(ctx, resolve_args(node.args, outputs))

    documents = outputs["shard_0"]["of_documents"]
    assert documents == sum(1 for f in fact.path.parent.iterdir() if f.is_file())  # the corpus, one row per file
    table = pl.read_parquet(tmp_path / "answers.parquet")
    assert table.height == documents == sum(outputs[f"shard_{i}"]["documents"] for i in range(4))
    assert table["doc_id"].n_unique() == documents  # each document once, in exactly one shard
    row = table.filter(pl.col("source") == str(fact.path)).row(0, named=True)
    assert fact.answer in row["answer"] and row["answer_location"], row
    assert pl.read_csv(tmp_path / "answers.csv").height == documents
    pdf = "".join(page.extract_text() for page in PdfReader(tmp_path / "answers-report.pdf").pages)
    assert fact.answer in " ".join(pdf.split())

    extract = default_registry.get("extract_per_document")
    with pytest.raises(ToolError, match="shards are numbered 0 to 3"):
        await extract(ctx, {"collection": "facts", "question": "q", "shard": 4, "shards": 4})
    with pytest.raises(ToolError, match="holds no documents"):
        await extract(ctx, {"collection": "nothing-here", "question": "q"})
    with pytest.raises(ToolError, match="not usable as columns"):
        await extract(ctx, {"collection": "facts", "fields": {"doc_id": "q"}})

"""Documents at scale into deliverables: one question asked of every document of a
1,000-document collection, through the `extract_from_collection` plan on a running Troupe.

    python -m bench.extract [--docs 1000] [--store sqlite|postgres]

Generates a corpus (tests/ingest/corpus.py: filler documents of every format, and documents
that each hide one fact, a tenth of them a project's budget), ingests it into the app's
collection (Ray Data), then submits the template's plan over HTTP: four extraction shards
in parallel on the tool pool, the table as CSV and Parquet, and the PDF report. Prints one
JSON line: the ingest time, the task's time and docs/s, rows, answers found, and how many of
the hidden budgets the table holds in the right row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import httpx

if __package__ in (None, ""):  # run as a script: make the repository importable
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import deploy, wait_all

QUESTION = "What budget did the project secure?"


async def extract(app, collection: str) -> dict:
    from memory.store import EventStore
    from troupe.plan_templates import load_template

    doc, plan = load_template("extract_from_collection", {"question": QUESTION, "collection": collection})
    async with httpx.AsyncClient(base_url=app.base_url, headers=app.headers, timeout=60) as c:
        t0 = time.monotonic()
        r = await c.post("/v1/tasks", json={"goal": f"{QUESTION} (every document of {collection})",
                                             "plan": plan.model_dump(mode="json"),
                                             "acceptance_tests": doc["acceptance_tests"]})
        r.raise_for_status()
        task_id = r.json()["task_id"]
        store = EventStore(app.db_url)
        await wait_all(store, [task_id], 1800)
        await store.close()
        elapsed = time.monotonic() - t0
        task = (await c.get(f"/v1/tasks/{task_id}")).json()
    shards = [task["nodes"][f"shard_{i}"] for i in range(4)]
    return {"task_id": task_id, "status": task["status"], "elapsed_s": round(elapsed, 2),
            "table": task["nodes"]["table"]["output"], "shard_documents": [s["output"]["documents"] for s in shards]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()

    import polars as pl

    from memory.ingest import IngestConfig, ingest
    from memory.semantic import QdrantSettings
    from tests.ingest.corpus import planted_corpus
    from troupe.settings import Settings

    facts = args.docs // 20
    root = Path(tempfile.mkdtemp(prefix="troupe-bench-extract-"))
    corpus, planted = planted_corpus(root, facts=facts, filler_docs=args.docs - facts)
    budgets = {str(f.path): f.answer for f in planted if "budget" in f.question}
    with deploy(args.store, "bench-extract", tool_modules=["tools.builtin", "tools.documents", "tools.extraction"]) as app:
        t0 = time.monotonic()
        report = ingest(corpus.root, collection="bench", settings=QdrantSettings.for_app(app.home),
                        config=IngestConfig(embed_actors=1, embed_threads=2))
        ingest_s = time.monotonic() - t0
        result = asyncio.run(extract(app, "bench"))
        workspace = Settings(home=app.home, app_name=app.app_name).workspace("default", result["task_id"])
        table = pl.read_parquet(workspace / "answers.parquet")
    rows = {r["source"]: r["answer"] or "" for r in table.iter_rows(named=True)}
    found = sum(1 for path, n in budgets.items() if n in rows.get(path, ""))
    docs = result["table"]["documents"]
    print(json.dumps({
        "bench": "extract", "store": args.store, "documents": docs, "ingest_s": round(ingest_s, 1),
        "ingest_failures": len(report.failures), "status": result["status"], "extract_s": result["elapsed_s"],
        "docs_per_s": round(docs / result["elapsed_s"], 1), "rows": result["table"]["rows"],
        "answered": result["table"]["answered"], "shard_documents": result["shard_documents"],
        "hidden_budgets_found": f"{found}/{len(budgets)}"}))


if __name__ == "__main__":
    main()

"""`ingest()`: files (a local path or any fsspec URL) into a collection of semantic memory.

    driver: discover -> fingerprint (read + sha256, threads) -> plan (idempotency, exact dedupe)
    Ray Data, streaming over the cluster: parse tasks (partition, clean, chunk, BM25, MinHash)
    driver: near-duplicates -> batches to the embedding actor pool -> batched upserts -> records

The driver routes chunks to the long-lived embedding actors (embedders.py) and does the
writing: it is where a document can be dropped as a near-duplicate before it is embedded, and
where "all of its chunks are stored" is known before its records say it is done. The data it
handles is small next to the work: about 1 KB of text and 1.5 KB of vector per chunk.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from opentelemetry.trace import StatusCode

from memory.ingest.config import IngestConfig, Resources, plan_resources
from memory.ingest.dedupe import NearDuplicateIndex, content_hash
from memory.ingest.embedders import Dispatcher
from memory.ingest.parse import parse_block, read_bytes, short_reason
from memory.ingest.partition import SUPPORTED, extension
from memory.ingest.planning import Fingerprint, RunPlan, plan_run
from memory.ingest.progress import FileStatus, IngestProgress, IngestReport, ProgressCallback
from memory.ingest.telemetry import Stages
from memory.ingest.writer import Writer, load_state
from memory.semantic import QdrantSettings, Scope, connect, ensure_schema
from troupe import metrics
from troupe.tracing import span

__all__ = ["IngestError", "discover", "fingerprint", "ingest"]

log = logging.getLogger(__name__)


class IngestError(Exception):
    """The run as a whole could not proceed (a bad path, no cluster); bad files never raise."""


def discover(sources: str | Path | Sequence[str | Path]) -> list[str]:
    """Every file under the given paths or URLs, sorted; hidden files and folders are skipped."""
    import fsspec

    found: set[str] = set()
    for src in [sources] if isinstance(sources, (str, Path)) else sources:
        fs, root = fsspec.core.url_to_fs(str(src))
        if fs.isdir(root):
            prefix = root.rstrip("/") + "/"
            paths = [p for p in fs.find(root) if not any(part.startswith(".") for part in p[len(prefix):].split("/"))]
        elif fs.exists(root):
            paths = [root]
        else:
            raise IngestError(f"{src} does not exist; pass a file, a folder, or a URL such as s3://bucket/prefix")
        local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        found.update(paths if local else (fs.unstrip_protocol(p) for p in paths))
    return sorted(found)


def fingerprint(paths: list[str], threads: int = 8) -> list[Fingerprint]:
    """Hash every supported file (I/O bound, so threads); unreadable files carry their error."""

    def one(path: str) -> Fingerprint:
        if extension(path) not in SUPPORTED:
            return Fingerprint(path)
        try:
            data = read_bytes(path)
        except Exception as exc:
            return Fingerprint(path, error=short_reason(exc))
        return Fingerprint(path, content_hash(data), len(data))

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, paths))


def _cluster() -> tuple[float, float]:
    import ray

    if not ray.is_initialized():
        ray.init()
    resources = ray.cluster_resources()
    return resources.get("CPU", 0.0), resources.get("GPU", 0.0)


def _execute(plan: RunPlan, config: IngestConfig, resources: Resources, writer: Writer, emit: Any,
             stages: Stages) -> None:
    import ray.data

    items = [{"source": fp.source, "ext": fp.ext, "doc_hash": fp.doc_hash} for fp in plan.to_parse]
    ds = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / config.files_per_task))
    ds.context.enable_progress_bars = False
    ds.context.print_on_execution_start = False
    ds = ds.map_batches(
        parse_block,
        batch_size=config.files_per_task,
        batch_format="numpy",
        fn_kwargs={"config": config.model_dump_json()},
        num_cpus=resources.parse_num_cpus,
    )
    embedders = Dispatcher(config, resources)

    def embed(batch: list[dict[str, Any]]) -> None:
        with stages.embed.active():
            finished = embedders.submit(batch, [r["text"] for r in batch])
        stages.embed.add(batches=1)
        store(finished)

    def store(finished: list[tuple[list[dict[str, Any]], Any]]) -> None:
        for rows, vectors in finished:
            with stages.upsert.active():
                writer.store(rows, vectors)
            stages.upsert.add(batches=1)
            emit()

    waiting: list[dict[str, Any]] = []
    blocks = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    while True:
        with stages.parse.active():  # the wait for Ray Data's parse tasks
            block = next(blocks, None)
        if block is None:
            break
        stages.parse.add(blocks=1)
        waiting += writer.accept(block)
        while len(waiting) >= config.embed_batch_size:
            batch, waiting = waiting[: config.embed_batch_size], waiting[config.embed_batch_size :]
            embed(batch)
        emit()
    if waiting:
        embed(waiting)
    with stages.embed.active():
        finished = list(embedders.drain())
    store(finished)


def ingest(
    sources: str | Path | Sequence[str | Path],
    *,
    collection: str,
    tenant: str = "default",
    scope: Scope | None = None,
    config: IngestConfig | None = None,
    settings: QdrantSettings | None = None,
    client: Any = None,
    on_progress: ProgressCallback | None = None,
) -> IngestReport:
    """Ingest files into `collection`; blocking (call it in a thread from async code).

    `on_progress` is called in this thread with a copy of the counters after every batch. The
    run is an `ingest` span under the caller's current span (a tool call, an ingest job).
    """
    scope = scope or Scope.org()
    # Errors by type only: an IngestError quotes the sources, and a URL may carry credentials.
    with span("ingest", record_exception=False, **{"troupe.tenant": tenant, "troupe.ingest.collection": collection,
                                                   "troupe.ingest.scope": scope.key}) as root:
        try:
            report = _ingest(sources, collection=collection, tenant=tenant, scope=scope, config=config,
                             settings=settings, client=client, on_progress=on_progress, root=root)
        except BaseException as exc:
            root.set_attribute("error.type", type(exc).__name__)
            root.set_status(StatusCode.ERROR, type(exc).__name__)
            raise
        p = report.progress
        root.set_attributes({"troupe.ingest.files": p.files_seen, "troupe.ingest.files_stored":
                             report.count(FileStatus.stored), "troupe.ingest.files_failed": len(report.failures),
                             "troupe.ingest.chunks_stored": p.chunks_stored,
                             "troupe.ingest.chunks_deleted": report.chunks_deleted})
        return report


def _ingest(sources: str | Path | Sequence[str | Path], *, collection: str, tenant: str, scope: Scope,
            config: IngestConfig | None, settings: QdrantSettings | None, client: Any,
            on_progress: ProgressCallback | None, root: Any) -> IngestReport:
    config = config or IngestConfig()
    settings = settings or QdrantSettings.from_env()
    progress = IngestProgress()

    def emit(done: bool = False) -> None:
        progress.tick()
        progress.done = done
        if on_progress is not None:
            on_progress(progress.model_copy())

    with span("ingest.plan", record_exception=False) as planned:
        paths = discover(sources)
        progress.files_seen = len(paths)
        emit()
        if client is None:
            client = connect(settings)
        ensure_schema(client, settings)
        files, docs = load_state(client, settings, tenant, scope, collection)
        plan = plan_run(fingerprint(paths, config.fingerprint_threads), files, docs)
        planned.set_attributes({"troupe.ingest.files": len(paths), "troupe.ingest.files_to_parse": len(plan.to_parse),
                                "troupe.ingest.files_decided": len(plan.decided)})
    near_duplicates = None
    if config.near_duplicates and plan.to_parse:
        near_duplicates = NearDuplicateIndex(config.near_duplicate_threshold, plan.lsh_seed)
    writer = Writer(
        client, settings, tenant=tenant, scope=scope, collection=collection, files=files, docs=docs,
        plan=plan, progress=progress, batch_size=config.upsert_batch_size, near_duplicates=near_duplicates,
    )
    stages = Stages()
    try:
        if plan.to_parse:
            resources = plan_resources(config, *_cluster())
            log.info("ingesting %d files with %s", len(plan.to_parse), resources)
            started = time.perf_counter()
            _execute(plan, config, resources, writer, emit, stages)
            log.info("pipeline finished in %.1fs", time.perf_counter() - started)
        with stages.upsert.active():  # the last batch, the file records, stale documents' removal
            outcomes = writer.finish()
    finally:  # a run cut short still shows how far each stage got
        stages.emit(root, parse={"files_parsed": progress.files_parsed, "files_failed": progress.files_failed},
                    embed={"chunks": progress.chunks_embedded},
                    upsert={"chunks": progress.chunks_stored, "chunks_deleted": writer.chunks_deleted})
    metrics.ingest_finished(tenant, outcomes)
    emit(done=True)
    return IngestReport(
        tenant=tenant, scope=scope.key, collection=collection, progress=progress.model_copy(),
        files=outcomes, chunks_deleted=writer.chunks_deleted,
    )

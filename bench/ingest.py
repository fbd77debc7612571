"""Ingestion throughput: the Ray Data pipeline against the embedding model alone and a plain loop.

    python -m bench.ingest [--docs 1000] [--long-pdfs 10] [--runs 1x1,2x1]

On a warm local cluster (before each Ray run, a small ingest with the same settings loads the
embedding actors and warms the parse workers) it measures,
on one generated corpus (2-6 KB documents of every format plus 20-page PDFs):

- model: the embedding model alone in this process, on exactly the chunks the pipeline makes
  (the hardware limit when embedding dominates), at its best forward-batch size; the better of
  a measurement before and one after the Ray runs;
- sequential: a plain loop, partition -> chunk -> embed (buffered batches) -> upsert;
- ray AxT: `ingest()` with A embedding actors of T torch threads each.

Prints one JSON line: docs/s and chunks/s of each, their ratios to `model`, the CPU seconds
each kind of process used during each Ray run (where the time goes), and CPU per chunk of the
model alone vs each Ray run (`cpu_efficiency`, which other load on the machine hardly moves).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from memory.ingest import IngestConfig, ingest, release_embedders
from memory.semantic import QdrantSettings

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _corpus(root: Path, docs: int, long_pdfs: int):
    from tests.ingest.corpus import mixed_corpus

    return mixed_corpus(
        root, docs, corrupt=0, duplicates=0, sections=(3, 6), section_chars=(500, 1000),
        long_pdfs=long_pdfs, long_pdf_pages=20, seed=11,
    )


def _chunk_texts(paths: list[Path], config: IngestConfig) -> list[str]:
    from memory.ingest.chunking import chunk_elements
    from memory.ingest.partition import extension, partition_bytes

    texts = []
    for path in paths:
        ext = extension(str(path))
        texts += [c.text for c in chunk_elements(partition_bytes(path.read_bytes(), ext), ext, config)]
    return texts


def _sequential(
    paths: list[Path], config: IngestConfig, store: Path, batch_size: int
) -> tuple[dict[str, float], list[str]]:
    """The plain loop a careful engineer writes first; returns (seconds by step, chunk texts)."""
    from qdrant_client import QdrantClient, models

    from memory.ingest.chunking import chunk_elements
    from memory.ingest.encoders import SparseEncoder, load_dense_model
    from memory.ingest.partition import extension, partition_bytes

    model, sparse = load_dense_model(config.model), SparseEncoder()
    client = QdrantClient(path=str(store))
    client.create_collection(
        "chunks",
        vectors_config={"dense": models.VectorParams(size=384, distance=models.Distance.COSINE)},
        sparse_vectors_config={"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)},
    )
    texts: list[str] = []
    buffer: list[str] = []
    steps = {"parse_s": 0.0, "embed_s": 0.0, "upsert_s": 0.0}
    warm = {extension(str(p)): p for p in paths}  # import every partitioner outside the timing
    for ext, path in warm.items():
        partition_bytes(path.read_bytes(), ext)
    model.encode(["warm-up"])

    def flush() -> None:
        t0 = time.perf_counter()
        dense = model.encode(buffer, batch_size=batch_size, normalize_embeddings=True)
        t1 = time.perf_counter()
        points = [
            models.PointStruct(
                id=len(texts) - len(buffer) + i,
                vector={"dense": d.tolist(), "bm25": models.SparseVector(indices=s.indices, values=s.values)},
                payload={"text": t},
            )
            for i, (t, d, s) in enumerate(zip(buffer, dense, sparse.encode_documents(buffer), strict=True))
        ]
        client.upsert("chunks", points=points)
        steps["embed_s"] += t1 - t0
        steps["upsert_s"] += time.perf_counter() - t1
        buffer.clear()

    started = time.perf_counter()
    for path in paths:
        t0 = time.perf_counter()
        ext = extension(str(path))
        for chunk in chunk_elements(partition_bytes(path.read_bytes(), ext), ext, config):
            texts.append(chunk.text)
            buffer.append(chunk.text)
        steps["parse_s"] += time.perf_counter() - t0
        if len(buffer) >= config.embed_batch_size:
            flush()
    if buffer:
        flush()
    steps["s"] = time.perf_counter() - started
    client.close()
    return {k: round(v, 2) for k, v in steps.items()}, texts


class _Model:
    """The embedding model alone in this process (torch's default threads: every core)."""

    def __init__(self, texts: list[str]):
        from memory.ingest.encoders import load_dense_model

        self.texts = texts
        self.model = load_dense_model(IngestConfig().model)
        self.model.encode(texts[:64], batch_size=8)  # warm-up
        # Its best forward-batch size on these chunks, so the reference is not handicapped.
        sample, timings = texts[:: max(1, len(texts) // 256)], {}
        for batch_size in (8, 16, 32):
            started = time.perf_counter()
            self.model.encode(sample, batch_size=batch_size)
            timings[batch_size] = time.perf_counter() - started
        self.batch_size = min(timings, key=timings.__getitem__)

    def measure(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds) to embed every chunk."""
        started, cpu = time.perf_counter(), time.process_time()
        self.model.encode(self.texts, batch_size=self.batch_size, normalize_embeddings=True)
        return time.perf_counter() - started, time.process_time() - cpu


class _CpuSampler:
    """CPU seconds used by this process and its Ray cluster (its children), grouped by role.

    Sampled in a thread, because Ray Data's actors exit when a run ends and take their counters
    with them; other users' Ray processes on the machine are not counted.
    """

    ROLES = (("EmbedWorker", "embed_actors"), ("QdrantOwner", "qdrant_owner"), ("ray::", "parse_tasks"))

    def __init__(self, period_s: float = 0.5):
        import threading

        import psutil

        self._me = psutil.Process()
        self._seen: dict[int, tuple[str, float]] = {}
        self._start = self._snapshot()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period_s,), daemon=True)
        self._thread.start()

    def _role(self, proc: Any) -> str:
        if proc.pid == self._me.pid:
            return "driver"
        name = " ".join(proc.cmdline()) or proc.name()
        # ray:: workers that are not actors run the parse tasks (or sit idle).
        return next((role for key, role in self.ROLES if key in name), "ray_system")

    def _snapshot(self) -> dict[int, tuple[str, float]]:
        import psutil

        out = {}
        for proc in [self._me, *self._me.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                out[proc.pid] = (self._role(proc), t.user + t.system)
            except psutil.Error:
                continue
        return out

    def _run(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            self._seen.update(self._snapshot())

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._seen.update(self._snapshot())
        roles: dict[str, float] = {}
        for pid, (role, cpu) in self._seen.items():
            roles[role] = roles.get(role, 0.0) + cpu - self._start.get(pid, (role, 0.0))[1]
        return {k: round(v, 1) for k, v in sorted(roles.items())}


def _ray_run(corpus_root: Path, warm: list[Path], config: IngestConfig, store: Path) -> dict[str, Any]:
    from actors.qdrant_owner import release_owner

    settings = QdrantSettings(path=store, prefix="bench")
    # A warm cluster: this configuration's embedding actors loaded, parse workers imported.
    ingest(warm, collection="warm-up", settings=settings, config=config)
    sampler = _CpuSampler()
    started = time.perf_counter()
    report = ingest(corpus_root, collection="bench", settings=settings, config=config)
    seconds = time.perf_counter() - started
    cpu = sampler.stop()
    release_owner(store)
    return {"seconds": seconds, "chunks": report.progress.chunks_stored, "failed": len(report.failures), "cpu_s": cpu}


def _rate(docs: int, chunks: int, seconds: float) -> dict[str, float]:
    return {"s": round(seconds, 2), "docs_per_s": round(docs / seconds, 2), "chunks_per_s": round(chunks / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--long-pdfs", type=int, default=10)
    parser.add_argument("--runs", default="1x1,2x1", help="AxT: A embedding actors of T threads each, e.g. 1x1,2x1,1x2")
    args = parser.parse_args()

    import ray

    ray.init(include_dashboard=False, log_to_driver=False, namespace="bench-ingest")
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        corpus = _corpus(work / "corpus", args.docs, args.long_pdfs)
        paths = sorted(d.path for d in corpus.docs)
        config = IngestConfig()
        warm = _corpus(work / "warm", 64, 0).root

        texts = _chunk_texts(paths, config)  # untimed: the chunks both references embed
        model = _Model(texts)
        # Other work on a shared machine only ever slows a run down: the reference is the
        # better of two measurements, one before and one after the pipeline runs.
        model_runs = [model.measure()]
        seq, seq_texts = _sequential(paths, config, work / "seq", model.batch_size)
        assert seq_texts == texts
        rays: dict[str, dict[str, Any]] = {}
        for n, spec in enumerate(args.runs.split(",")):
            actors, threads = (int(x) for x in spec.split("x"))
            run_config = config.model_copy(update={"embed_actors": actors, "embed_threads": threads})
            run = _ray_run(corpus.root, warm, run_config, work / f"ray-{n}-{spec}")
            if run["chunks"] != len(texts):
                raise AssertionError(f"ray {spec} stored {run['chunks']} chunks; the chunker made {len(texts)}")
            rays[spec if spec not in rays else f"{spec}#{n}"] = run
        model_runs.append(model.measure())
        model_s, model_cpu = min(model_runs)
        docs, chunks = len(paths), len(texts)
        result: dict[str, Any] = {
            "docs": docs,
            "chunks": chunks,
            "cpus": os.cpu_count(),
            "model": _rate(docs, chunks, model_s) | {
                "encode_batch_size": model.batch_size,
                "runs_s": [round(w, 1) for w, _ in model_runs],
                "cpu_ms_per_chunk": round(1000 * model_cpu / chunks, 1),
            },
            "sequential": _rate(docs, chunks, seq["s"]) | {"steps_s": seq},
            "ray": {
                name: _rate(docs, run["chunks"], run["seconds"]) | {
                    "cpu_s": run["cpu_s"],
                    "cpu_ms_per_chunk": round(1000 * sum(run["cpu_s"].values()) / chunks, 1),
                }
                for name, run in rays.items()
            },
        }
        model_rate = result["model"]["chunks_per_s"]
        result["ratios"] = {"sequential": round(result["sequential"]["chunks_per_s"] / model_rate, 3)} | {
            f"ray_{k}": round(v["chunks_per_s"] / model_rate, 3) for k, v in result["ray"].items()
        }
        # Immune to other load on the machine: CPU spent per chunk, model alone vs the pipeline.
        result["cpu_efficiency"] = {
            f"ray_{k}": round(result["model"]["cpu_ms_per_chunk"] / v["cpu_ms_per_chunk"], 3)
            for k, v in result["ray"].items()
        }
        result["load_avg_1m"] = round(os.getloadavg()[0], 2)
        print(json.dumps(result))
    finally:
        release_embedders()
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

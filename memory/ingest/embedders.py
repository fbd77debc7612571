"""The embedding actor pool: long-lived named actors, fed batches by the ingesting driver.

Loading the model costs a fresh process ~7 CPU-seconds (torch, transformers and
sentence-transformers imports), as much as embedding 200 chunks. A pool created per run
pays that on every ingest; this one is created on first use and kept warm, as every model in
Troupe is, until it has been idle for `idle_timeout_s`. Actors are named by model and thread
count, so runs with the same settings share them.

`Dispatcher` keeps `depth` batches queued on each actor, sending each new batch to the least
loaded one, so no actor waits for the driver between batches.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from actors.qdrant_owner import NAMESPACE
from memory.ingest.config import IngestConfig, Resources
from memory.ingest.offline import disable_telemetry

__all__ = ["Dispatcher", "EmbedWorker", "embedder_pool", "release_embedders"]

log = logging.getLogger(__name__)

_PREFIX = "troupe-embedder-"


class EmbedWorker:
    """One model replica; exits by itself once idle for `idle_timeout_s` (frees CPU/GPU)."""

    def __init__(self, model: str, device: str, threads: int, encode_batch_size: int, idle_timeout_s: float):
        from memory.ingest.encoders import load_dense_model

        disable_telemetry()
        self._model = load_dense_model(model, device=device, threads=threads)
        self._batch = encode_batch_size
        self._last = time.monotonic()
        self._busy = False
        threading.Thread(target=self._exit_when_idle, args=(idle_timeout_s,), daemon=True).start()

    def embed(self, texts: list[str]) -> np.ndarray:
        self._busy = True
        try:
            return self._model.encode(
                texts, batch_size=self._batch, normalize_embeddings=True, convert_to_numpy=True
            ).astype(np.float32)
        finally:
            self._busy, self._last = False, time.monotonic()

    def dim(self) -> int:
        return int(self._model.get_embedding_dimension())

    def _exit_when_idle(self, timeout_s: float) -> None:
        import ray

        while True:
            time.sleep(min(timeout_s, 5.0))
            if not self._busy and time.monotonic() - self._last > timeout_s:
                log.info("embedder idle for %.0fs; exiting", timeout_s)
                ray.actor.exit_actor()


def _pool_key(config: IngestConfig, resources: Resources) -> str:
    model = re.sub(r"[^A-Za-z0-9]+", "-", config.model.rsplit("/", 1)[-1]).strip("-")[:40]
    # Everything that changes what an actor is, but not how many there are: runs asking for
    # one or two actors share actor 0.
    r = resources
    settings = (config.model, r.device, r.embed_threads, r.encode_batch_size, r.num_gpus, r.embed_num_cpus)
    digest = hashlib.sha1(repr(settings).encode()).hexdigest()[:6]
    return f"{model}-{resources.device}-{resources.embed_threads}t-{digest}"


def _thread_env(threads: int) -> dict[str, str]:
    value = str(threads)
    parallel_tokenizer = "true" if threads > 1 else "false"
    return {"OMP_NUM_THREADS": value, "MKL_NUM_THREADS": value, "TOKENIZERS_PARALLELISM": parallel_tokenizer}


def _handle(config: IngestConfig, resources: Resources, index: int) -> Any:
    import ray

    return (
        ray.remote(EmbedWorker)
        .options(
            name=f"{_PREFIX}{_pool_key(config, resources)}-{index}",
            namespace=NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
            num_cpus=resources.embed_num_cpus,
            num_gpus=resources.num_gpus or None,
            # Replicas on different nodes on a cluster; one machine runs them all anyway.
            scheduling_strategy="SPREAD",
            # Thread caps must be in the environment before torch starts its pools.
            runtime_env={"env_vars": _thread_env(resources.embed_threads)},
        )
        .remote(
            config.model,
            resources.device,
            resources.embed_threads,
            resources.encode_batch_size,
            config.embed_idle_timeout_s,
        )
    )


def embedder_pool(config: IngestConfig, resources: Resources) -> list[Any]:
    """Handles of the pool's actors, starting any that are not running."""
    return [_handle(config, resources, i) for i in range(resources.embed_actors)]


def release_embedders() -> int:
    """Stop every embedding actor now (they also stop by themselves when idle); returns how many."""
    import ray

    stopped = 0
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] == NAMESPACE and entry["name"].startswith(_PREFIX):
            ray.kill(ray.get_actor(entry["name"], namespace=NAMESPACE))
            stopped += 1
    return stopped


class Dispatcher:
    """Submits batches to the pool, least-loaded actor first, at most `depth` queued per actor."""

    def __init__(self, config: IngestConfig, resources: Resources):
        self._config, self._resources = config, resources
        self._actors = embedder_pool(config, resources)
        self._depth = config.embed_queue_depth
        self._load = [0] * len(self._actors)
        self._flight: dict[Any, tuple[int, Any, list[str], int]] = {}  # ref -> (actor, payload, texts, tries)

    def submit(self, payload: Any, texts: list[str]) -> list[tuple[Any, np.ndarray]]:
        """Queue a batch; returns the batches that finished while waiting for room."""
        done: list[tuple[Any, np.ndarray]] = []
        while len(self._flight) >= self._depth * len(self._actors):
            done += self._wait()
        self._send(payload, texts, tries=0)
        return done

    def drain(self) -> Iterator[tuple[Any, np.ndarray]]:
        while self._flight:
            yield from self._wait()

    def _send(self, payload: Any, texts: list[str], tries: int) -> None:
        index = min(range(len(self._actors)), key=self._load.__getitem__)
        self._flight[self._actors[index].embed.remote(texts)] = (index, payload, texts, tries)
        self._load[index] += 1

    def _wait(self) -> list[tuple[Any, np.ndarray]]:
        import ray
        from ray.exceptions import RayActorError

        ready, _ = ray.wait(list(self._flight), num_returns=1)
        out = []
        for ref in ready:
            index, payload, texts, tries = self._flight.pop(ref)
            self._load[index] -= 1
            try:
                out.append((payload, ray.get(ref)))
            except RayActorError:
                # The actor died (idle exit racing this call, a crash, a lost node): start a
                # replacement under the same name and send the batch again, once.
                if tries:
                    raise
                log.warning("embedding actor %d died; replacing it", index)
                self._actors[index] = _handle(self._config, self._resources, index)
                self._send(payload, texts, tries + 1)
        return out

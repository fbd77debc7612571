"""The single owner of an embedded (local-mode) Qdrant store.

qdrant-client's local mode keeps the whole store in one process and locks its directory, so
every other process (Ray Data workers, Serve replicas, the CLI) reaches it through this named,
detached actor. `OwnerClient` makes that look like a plain `QdrantClient`: any method call is
forwarded and runs here, one at a time (local mode is not thread-safe).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from pathlib import Path
from typing import Any

import ray

__all__ = ["NAMESPACE", "OwnerClient", "QdrantOwner", "owner_client", "owner_name", "release_owner"]

NAMESPACE = "troupe"
"""Named actors live in one namespace so a Serve app, the CLI and jobs all find the same owner."""

log = logging.getLogger(__name__)


class QdrantOwner:
    """Holds `QdrantClient(path=...)`; `call` runs one client method on it."""

    def __init__(self, path: str):
        from qdrant_client import QdrantClient

        Path(path).mkdir(parents=True, exist_ok=True)
        self._path = path
        self._client = QdrantClient(path=path)
        self._tuned: set[int] = set()
        self._tune_storage()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if method.startswith("_"):
            raise AttributeError(f"QdrantClient.{method} is private and cannot be called remotely")
        result = getattr(self._client, method)(*args, **kwargs)
        if method in ("create_collection", "recreate_collection"):
            self._tune_storage()
        return result

    def _tune_storage(self) -> None:
        """WAL journal and synchronous=NORMAL on each collection's SQLite file.

        Local mode commits once per point; with the default rollback journal every commit is
        an fsync, which makes upserts ~3x dearer in CPU and ~5x slower. WAL/NORMAL never
        corrupts the file; a power cut may lose the last commits, which re-ingestion redoes.
        This reaches into qdrant-client internals, so any surprise leaves the defaults.
        """
        collections = getattr(getattr(self._client, "_client", None), "collections", None) or {}
        for name, collection in collections.items():
            conn = getattr(getattr(collection, "storage", None), "storage", None)
            if not isinstance(conn, sqlite3.Connection) or id(conn) in self._tuned:
                continue
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                self._tuned.add(id(conn))
            except sqlite3.Error as exc:
                log.warning("could not tune the SQLite storage of collection %s: %s", name, exc)

    def path(self) -> str:
        return self._path

    def close(self) -> None:
        self._client.close()


def owner_name(path: str | Path) -> str:
    """One owner per store directory; the digest keeps names short and unique per path."""
    resolved = str(Path(path).expanduser().resolve())
    return f"troupe-qdrant-owner-{hashlib.sha1(resolved.encode()).hexdigest()[:10]}"


def _owner(path: str | Path) -> ray.actor.ActorHandle:
    resolved = str(Path(path).expanduser().resolve())
    # num_cpus=0: the owner mostly waits on SQLite, and must never keep an ingestion pool or a
    # Serve replica from being scheduled. Detached: it outlives the job that happened to start it.
    return (
        ray.remote(QdrantOwner)
        .options(
            name=owner_name(resolved),
            namespace=NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
            num_cpus=0,
            max_restarts=-1,
        )
        .remote(resolved)
    )


class OwnerClient:
    """A `QdrantClient` look-alike whose methods run in the owner actor (blocking calls)."""

    def __init__(self, handle: ray.actor.ActorHandle):
        self._handle = handle

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)

        def forward(*args: Any, **kwargs: Any) -> Any:
            return ray.get(self._handle.call.remote(method, *args, **kwargs))

        forward.__name__ = method
        return forward

    def close(self) -> None:
        """The store belongs to the owner; a client has nothing of its own to close."""

    def __reduce__(self):
        # Ray workers receive the handle, not a copy of the store.
        return (OwnerClient, (self._handle,))


def owner_client(path: str | Path) -> OwnerClient:
    """Start (or find) the owner of the store at `path` and return a client for it."""
    if not ray.is_initialized():
        ray.init()
    return OwnerClient(_owner(path))


def release_owner(path: str | Path) -> bool:
    """Close and stop the owner of `path`, freeing its directory lock; False if none ran."""
    try:
        handle = ray.get_actor(owner_name(path), namespace=NAMESPACE)
    except ValueError:
        return False
    try:
        ray.get(handle.close.remote())
    finally:
        ray.kill(handle)
    return True

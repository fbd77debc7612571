"""Embedded SQLite for the stores: WAL, a reader engine, and writers that queue fairly.

SQLite lets one writer in at a time. A writer that finds the database locked waits in
SQLite's busy handler, which polls with sleeps that grow to 100 ms: with a Gateway, a
Conductor, a ToolPool and a Supervisor all committing, writers slept far more than they
wrote (the runtime bench ran 1.75 x faster on PostgreSQL with the same CPU per node). So
each writer first takes an exclusive `flock` on a file beside the database: the kernel
wakes the next waiter the moment the lock is free, and SQLite's own lock is then almost
always free. The file lock only orders the writers; SQLite's lock still guards the data,
so a writer that skips it (another tool on the same file) is merely slower, never unsafe.

Statements run whole in worker threads (memory/sqlite_threads.py): one thread hop each,
where aiosqlite made several.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from memory.sqlite_threads import ThreadedConnection, ThreadedEngine

__all__ = ["QueuedWriter", "sqlite_engines"]


class QueuedWriter:
    """The writer engine, whose `begin()` waits its turn on the database's write-lock file
    (in a thread of its own, so the event loop never blocks); everything else is the engine's."""

    def __init__(self, engine: AsyncEngine | ThreadedEngine, lock_path: Path):
        self.engine = engine
        self._lock_path = lock_path
        self._fd: int | None = None
        self._turn: asyncio.Lock | None = None
        """One writer of this engine at a time: a second `flock` on our own descriptor would
        succeed at once and leave the two to SQLite's busy handler again."""
        self._waiter: ThreadPoolExecutor | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection | ThreadedConnection]:
        if self._turn is None:
            self._turn = asyncio.Lock()
        async with self._turn:
            await self._lock()
            try:
                async with self.engine.begin() as conn:
                    yield conn
            finally:
                self._unlock()

    async def _lock(self) -> None:
        if self._fd is None:
            self._fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fd = self._fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if self._waiter is None:
            self._waiter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-write-turn")
        waiting = asyncio.get_running_loop().run_in_executor(self._waiter, fcntl.flock, fd, fcntl.LOCK_EX)
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:
            # The thread still gets the lock: give it back then, or every writer waits forever.
            waiting.add_done_callback(lambda f: f.cancelled() or f.exception() or fcntl.flock(fd, fcntl.LOCK_UN))
            raise

    def _unlock(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._waiter is not None:
            self._waiter.shutdown(wait=False)
            self._waiter = None


def sqlite_engines(url: str) -> tuple[AsyncEngine | QueuedWriter, AsyncEngine | ThreadedEngine]:
    """A writer whose transactions BEGIN IMMEDIATE (take the write lock up front, so
    concurrent writers queue instead of failing to upgrade a read lock), queued on a lock
    file for a file database, and a reader engine with plain deferred transactions, which
    WAL lets run beside a writer."""
    path = make_url(url).database
    on_file = bool(path) and path != ":memory:"
    if on_file:
        Path(path).parent.mkdir(parents=True, exist_ok=True)

    def configure(engine: AsyncEngine | ThreadedEngine, begin: str) -> None:
        @event.listens_for(engine.sync_engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql(begin)

    # An in-memory database lives in its one connection: keep aiosqlite's StaticPool. A file
    # gets worker threads, one for the writer, whose transactions run one at a time anyway.
    def make(threads: int, begin: str) -> AsyncEngine | ThreadedEngine:
        engine = ThreadedEngine(url, threads=threads) if on_file else create_async_engine(
            url, connect_args={"timeout": 60})
        configure(engine, begin)
        return engine

    writer, reader = make(1, "BEGIN IMMEDIATE"), make(4, "BEGIN")
    return (QueuedWriter(writer, Path(f"{path}.write-lock")) if on_file else writer), reader

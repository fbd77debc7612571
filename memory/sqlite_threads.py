"""SQLite for asyncio with one thread hop per statement.

aiosqlite runs every DB-API call in the connection's thread and wakes the event loop after
each: SQLAlchemy's adapter makes four or five such calls per statement (cursor, execute,
fetchall, close) and more per transaction (BEGIN, COMMIT, the pool's reset). A hop costs
about 170 us of CPU on the 2-core machines Troupe is measured on, against 11 us for the
query itself, so a primary-key read cost 1.8 ms of CPU. Here a synchronous SQLAlchemy
engine (pysqlite) runs each statement whole in a worker thread and hands back its rows,
buffered: one hop per statement, and the connection goes back to the pool without making
anyone wait for it.

`ThreadedEngine` offers what the stores use of SQLAlchemy's `AsyncEngine` (`connect()`,
`begin()`, `dispose()`, `sync_engine`) with connections offering `execute`, `run_sync` and
`commit`. PostgreSQL keeps asyncpg, which is asyncio-native.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import Any

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import Result, make_url

__all__ = ["ThreadedConnection", "ThreadedEngine"]

log = logging.getLogger("troupe.store")


class BufferedResult:
    """A statement's outcome, read whole in the worker thread: its rows as a SQLAlchemy
    `Result` (`one()`, `all()`, `scalars()`, `mappings()` ...) and its `rowcount`."""

    def __init__(self, result: Any):
        self.rowcount = result.rowcount
        self._rows: Result | None = result.freeze()() if result.returns_rows else None

    def __getattr__(self, name: str) -> Any:
        if self._rows is None:
            raise AttributeError(f"{name}: this statement returned no rows (only rowcount)")
        return getattr(self._rows, name)

    def __iter__(self) -> Any:
        if self._rows is None:
            raise TypeError("this statement returned no rows")
        return iter(self._rows)


class ThreadedConnection:
    """One pooled connection, checked out by its first statement and given back on exit.
    Its statements run one after another: a hop waits for the one before it, even when the
    coroutine that started that one was cancelled and went on to close the connection."""

    def __init__(self, engine: ThreadedEngine, transaction: bool):
        self._engine = engine
        self._transaction = transaction
        self._sync: Connection | None = None
        self._last: Future | None = None

    @property
    def dialect(self) -> Any:
        return self._engine.sync_engine.dialect

    def _open(self) -> Connection:
        if self._sync is None:
            self._sync = self._engine.sync_engine.connect()
            if self._transaction:
                self._sync.begin()
        return self._sync

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        before = self._last

        def run() -> Any:
            if before is not None:
                futures_wait([before])  # started before us (the pool is FIFO): never a deadlock
            return fn(*args)

        self._last = self._engine.submit(run)
        return self._last

    async def _hop(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.wrap_future(self._submit(fn, *args))

    def _execute(self, statement: Any, parameters: Any) -> BufferedResult:
        conn = self._open()
        return BufferedResult(conn.execute(statement) if parameters is None else conn.execute(statement, parameters))

    async def execute(self, statement: Any, parameters: Any = None) -> BufferedResult:
        return await self._hop(self._execute, statement, parameters)

    async def run_sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await self._hop(lambda: fn(self._open(), *args, **kwargs))

    async def commit(self) -> None:
        await self._hop(lambda: self._sync is not None and self._sync.commit())

    def _close(self, commit: bool) -> None:
        conn, self._sync = self._sync, None
        if conn is None:
            return
        try:
            if commit and conn.in_transaction():
                conn.commit()
        finally:
            conn.close()  # rolls back whatever is left, and returns the connection to the pool

    async def _finish(self, commit: bool) -> None:
        if self._last is not None:  # else never checked out
            await self._hop(self._close, commit)

    def _release(self) -> None:
        """Give the connection back, with nothing to commit. Ending a read transaction costs
        microseconds, less than a hop: done here, unless a statement still runs (its caller
        was cancelled), in which case after it, without waiting."""
        if self._last is None:
            return  # never checked out
        if self._last.done():
            try:
                self._close(commit=False)
            except Exception:
                log.warning("could not return a SQLite connection to the pool", exc_info=True)
            return

        def done(future: Future) -> None:
            if not future.cancelled() and future.exception() is not None:
                log.warning("could not return a SQLite connection to the pool", exc_info=future.exception())

        self._submit(self._close, False).add_done_callback(done)


class ThreadedEngine:
    """A synchronous SQLite engine behind an asyncio face; `threads` workers run its statements.
    Connection setup (PRAGMAs, how transactions begin) is the caller's, on `sync_engine`."""

    def __init__(self, url: str, *, threads: int):
        sync_url = make_url(url).set(drivername="sqlite")
        # Overflow without bound: a checkout never blocks a worker, so the worker that would
        # give a connection back is never stuck behind one waiting for it. A worker checks a
        # connection out and the event loop gives it back, so under a backlog more are out than
        # there are workers: with 2 per worker, 200 reads at once opened and closed one every
        # few reads (2 ms of CPU to close one); with 8, almost none.
        self.sync_engine: Engine = create_engine(sync_url, connect_args={"timeout": 60, "check_same_thread": False},
                                                 pool_size=threads * 8, max_overflow=-1)
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="sqlite")
        return self._pool

    def submit(self, fn: Callable[[], Any]) -> Future:
        return self._executor().submit(fn)

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[ThreadedConnection]:
        """A connection whose writes are committed only by `commit()` (as AsyncEngine.connect)."""
        conn = ThreadedConnection(self, transaction=False)
        try:
            yield conn
        finally:
            conn._release()

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[ThreadedConnection]:
        """A transaction: committed on a clean exit (and awaited: durable before we go on)."""
        conn = ThreadedConnection(self, transaction=True)
        try:
            yield conn
        except BaseException:
            await asyncio.shield(conn._finish(commit=False))
            raise
        await asyncio.shield(conn._finish(commit=True))

    async def dispose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.get_running_loop().run_in_executor(None, pool.shutdown, True)
        self.sync_engine.dispose()

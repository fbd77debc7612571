"""memory/sqlite_threads.py: SQLite statements run whole in worker threads, one hop each,
with AsyncEngine's semantics for what the stores use (reads, transactions, rollback)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text, update

from memory.sqlite import sqlite_engines
from memory.sqlite_threads import ThreadedEngine

meta = MetaData()
items = Table("items", meta, Column("id", Integer, primary_key=True), Column("name", String))


@pytest.fixture
async def engines(tmp_path):
    writer, reader = sqlite_engines(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    assert isinstance(reader, ThreadedEngine)
    async with writer.begin() as conn:
        await conn.run_sync(meta.create_all)
    yield writer, reader
    await writer.dispose()
    await reader.dispose()


def _count_hops(engine: ThreadedEngine) -> list[int]:
    hops = [0]
    submit = engine.submit

    def counted(fn):
        hops[0] += 1
        return submit(fn)

    engine.submit = counted
    return hops


async def test_reads_and_writes_behave_as_the_async_engine(engines):
    writer, reader = engines
    async with writer.begin() as conn:
        await conn.execute(insert(items), [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
        changed = await conn.execute(update(items).where(items.c.id == 2).values(name="B"))
        assert changed.rowcount == 1
        assert (await conn.execute(update(items).where(items.c.id == 2).values(name="bb")
                                   .returning(items.c.name))).scalar_one() == "bb"
    async with reader.connect() as conn:
        result = await conn.execute(select(items).order_by(items.c.id))
        assert [(r.id, r.name) for r in result] == [(1, "a"), (2, "bb")]
        assert (await conn.execute(select(items.c.name).where(items.c.id == 1))).scalar_one_or_none() == "a"
        assert (await conn.execute(select(items).where(items.c.id == 1))).mappings().one() == {"id": 1, "name": "a"}
        assert (await conn.execute(select(items).where(items.c.id == 9))).first() is None
        with pytest.raises(AttributeError, match="returned no rows"):
            (await conn.execute(text("UPDATE items SET name = name WHERE id = 9"))).all()


async def test_a_failed_transaction_leaves_nothing(engines):
    writer, reader = engines
    with pytest.raises(RuntimeError, match="midway"):
        async with writer.begin() as conn:
            await conn.execute(insert(items).values(id=3, name="c"))
            raise RuntimeError("midway")
    async with reader.connect() as conn:
        assert (await conn.execute(select(items).where(items.c.id == 3))).first() is None


async def test_one_hop_per_statement(engines):
    """The point of the module: a read is one hop (its connection goes back inline), a
    transaction one per statement plus its commit."""
    writer, reader = engines
    hops = _count_hops(reader)
    async with reader.connect() as conn:
        await conn.execute(select(items))
    assert hops[0] == 1
    hops = _count_hops(writer.engine)
    async with writer.begin() as conn:
        await conn.execute(insert(items).values(id=4, name="d"))
        await conn.execute(update(items).where(items.c.id == 4).values(name="D"))
    assert hops[0] == 3


async def test_a_cancelled_statement_finishes_before_its_connection_is_reused(engines):
    """A caller cancelled while its statement runs in a worker: the connection is closed only
    after that statement, never from two threads at once, and the pool gets it back."""
    _, reader = engines
    inside = threading.Event()

    def slow(conn):
        inside.set()
        time.sleep(0.3)
        return conn.execute(select(items)).all()

    async def read() -> None:
        async with reader.connect() as conn:
            await conn.run_sync(slow)

    task = asyncio.create_task(read())
    await asyncio.to_thread(inside.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pool = reader.sync_engine.pool
    assert pool.checkedout() == 1  # still running its statement
    deadline = time.monotonic() + 5
    while pool.checkedout() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert pool.checkedout() == 0
    async with reader.connect() as conn:
        assert (await conn.execute(select(items))).all() == []

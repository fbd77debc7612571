"""The event store: SQLAlchemy 2 async over SQLite (embedded, WAL) or PostgreSQL.

Appends are group-committed here; what one commit writes (and how `seq` and the lease
epoch are kept) is memory/appends.py.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import and_, bindparam, case, func, or_, select, text, tuple_, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from memory.appends import (DISPATCHED, PENDING, TERMINAL, WAITING, Append, NewEvent, StaleLease, TaskNotFound,
                             write_batch)
from memory.live import EventBus
from memory.schema import events, learned_templates, tasks
from memory.sqlite import QueuedWriter, sqlite_engines
from troupe.models import Event, EventType, Priority, Task, TaskStatus, utcnow
from troupe.reducer import apply, snapshot_of, task_from_snapshot

__all__ = ["EventStore", "NewEvent", "SideStore", "StaleLease", "TaskNotFound", "TaskRow"]

log = logging.getLogger("troupe.store")

MIGRATIONS = Path(__file__).parent / "migrations"


DRIVER_HEARTBEAT_S = 2.0
"""How often a process beats the heartbeat of every task it drives."""
DRIVER_SILENT_BEATS = 5
"""Beats missed before the Supervisor's watchdog takes a dispatched task for driverless."""


@dataclass(frozen=True)
class TaskRow:
    task_id: str
    tenant: str
    goal: str
    status: TaskStatus
    priority: Priority
    dispatch_state: str
    last_seq: int
    epoch: int
    created_at: datetime
    updated_at: datetime
    waiting_on: str | None = None


_RANK_TO_PRIORITY = {p.rank: p for p in Priority}
_ROW = [c for c in tasks.c if c.name != "snapshot"]
"""The tasks row as listings and the queue read it: without the (large) snapshot."""
SNAPSHOT_EVERY = 256
"""Events folded past a task's snapshot before whoever folded them writes a newer one."""


# The reads every task and request makes, built once with bound parameters: building a
# statement (and its cache key) cost more CPU than SQLite spends running it.
_GET = select(*_ROW).where(tasks.c.task_id == bindparam("task_id"))
_GET_OF_TENANT = _GET.where(tasks.c.tenant == bindparam("tenant"))
_HEARTBEAT = select(tasks.c.epoch, tasks.c.heartbeat_at, tasks.c.dispatch_state).where(
    tasks.c.task_id == bindparam("task_id"))
_SNAPSHOT = select(tasks.c.tenant, tasks.c.snapshot, tasks.c.snapshot_seq).where(tasks.c.task_id == bindparam("task_id"))
_READ = (select(events).where(events.c.task_id == bindparam("task_id"), events.c.seq > bindparam("after_seq"))
         .order_by(events.c.seq))
_READ_SOME = _READ.limit(bindparam("limit"))
_PENDING_COUNTS = (select(func.count(), func.coalesce(func.sum(case((tasks.c.tenant == bindparam("tenant"), 1),
                                                                    else_=0)), 0))
                   .select_from(tasks).where(tasks.c.dispatch_state == PENDING))


def _utc(ts: datetime) -> datetime:
    """SQLite hands datetimes back naive; every timestamp we store is UTC."""
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def _row(r: Any) -> TaskRow:
    return TaskRow(
        task_id=r.task_id,
        tenant=r.tenant,
        goal=r.goal,
        status=TaskStatus(r.status),
        priority=_RANK_TO_PRIORITY[r.priority_rank],
        dispatch_state=r.dispatch_state,
        last_seq=r.last_seq,
        epoch=r.epoch,
        created_at=_utc(r.created_at),
        updated_at=_utc(r.updated_at),
        waiting_on=r.waiting_on,
    )


def _event(r: Any) -> Event:
    return Event(task_id=r.task_id, seq=r.seq, ts=_utc(r.ts), type=r.type, payload=r.payload, trace_id=r.trace_id)


def _encode_cursor(created_at: datetime, task_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created_at.isoformat(), task_id]).encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ValueError on a cursor this store did not hand out."""
    try:
        ts, task_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(ts), str(task_id)
    except Exception as exc:  # any garbage in a user-supplied cursor is the same fault
        raise ValueError("cursor is not one this server returned; drop it to start from the first page") from exc


class EventStore:
    """Async event store; one per process, shared by all the coroutines in it."""

    max_batch = 256
    """Appends at most per group commit."""

    def __init__(self, url: str):
        self.url = url
        self._queue: list[Append] = []
        self._flusher: asyncio.Task | None = None
        self._leases: dict[str, tuple[int, Callable[[], None] | None]] = {}
        self._background: set[asyncio.Task] = set()
        self.bus: EventBus | None = None
        """Where committed appends are announced (memory/live.py); set by the process that owns the store."""
        self._beater: asyncio.Task | None = None
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self._writer, self._reader = sqlite_engines(url)
        else:
            self._writer = self._reader = create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)

    @property
    def writer(self) -> AsyncEngine | QueuedWriter:
        """The engine for write transactions (on SQLite, BEGIN IMMEDIATE)."""
        return self._writer

    @property
    def reader(self) -> AsyncEngine:
        return self._reader

    async def close(self) -> None:
        await self._writer.dispose()
        if self._reader is not self._writer:
            await self._reader.dispose()

    # -- schema -----------------------------------------------------------------------

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision; safe to call from many processes."""
        if self.is_sqlite:
            lock_path = Path(make_url(self.url).database or ".troupe/troupe.db").with_suffix(".migrate.lock")
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            with open(lock_path, "w") as lock:
                await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
                async with self._writer.connect() as conn:
                    await conn.run_sync(self._upgrade)
                    await conn.commit()
        else:
            async with self._writer.begin() as conn:
                # Serialises concurrent migrators; released with the transaction.
                await conn.execute(text("SELECT pg_advisory_xact_lock(7272727)"))
                await conn.run_sync(self._upgrade)

    @staticmethod
    def _upgrade(sync_conn: Any) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, "head")

    async def ping(self) -> None:
        async with self._reader.connect() as conn:
            await conn.execute(text("SELECT 1"))

    # -- writes -----------------------------------------------------------------------

    async def create_task(
        self,
        task_id: str,
        *,
        tenant: str,
        goal: str,
        priority: Priority,
        payload: dict[str, Any],
        trace_id: str | None = None,
    ) -> Event:
        """Insert the task row and its `task.submitted` event (seq 1) in one transaction."""
        row = {"task_id": task_id, "tenant": tenant, "goal": goal, "status": TaskStatus.queued.value,
               "priority_rank": priority.rank, "dispatch_state": PENDING, "last_seq": 0, "epoch": 0}
        [event] = await self._enqueue(Append(task_id, [NewEvent(EventType.submitted, payload)], None, trace_id,
                                              asyncio.get_running_loop().create_future(), create=row))
        return event

    async def append(
        self,
        task_id: str,
        new: Sequence[NewEvent],
        *,
        epoch: int | None = None,
        trace_id: str | None = None,
        wake: bool = False,
    ) -> list[Event]:
        """Append events atomically. With `epoch`, only while that lease is current. With
        `wake`, a task waiting for the user is queued for dispatch in the same transaction.

        Appends from concurrent coroutines are group-committed: whatever queued while the
        previous transaction ran goes into the next one, so one commit (one fsync) serves
        many tasks, and each append still succeeds or fails on its own."""
        if not new:
            return []
        return await self._enqueue(Append(task_id, list(new), epoch, trace_id,
                                           asyncio.get_running_loop().create_future(), wake=wake))

    async def _enqueue(self, item: Append) -> list[Event]:
        # A caller cancelled while waiting never reads its outcome; mark it read.
        item.done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.append(item)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await asyncio.shield(item.done)

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            try:
                results = await self._write(batch)
            except Exception:
                # One bad item must not fail its neighbours: write each on its own.
                results = []
                for item in batch:
                    try:
                        results += await self._write([item])
                    except Exception as exc:
                        results.append(exc)
            for item, result in zip(batch, results):
                if item.done.done():
                    continue
                if isinstance(result, Exception):
                    item.done.set_exception(result)
                else:
                    item.done.set_result(result)

    async def _write(self, batch: list[Append]) -> list[list[Event] | Exception]:
        # The whole batch in one call of synchronous code: on SQLite, one thread hop for the
        # batch's statements (memory/sqlite_threads.py), not one each.
        async with self._writer.begin() as conn:
            results, rows = await conn.run_sync(write_batch, batch, utcnow())
        if self.bus is not None and rows:
            heads: dict[str, int] = {}
            for r in rows:
                heads[r["task_id"]] = max(heads.get(r["task_id"], 0), r["seq"])
            self.bus.published(heads)
        return results

    async def claim(self, task_id: str, *, from_states: Sequence[str] = (PENDING, DISPATCHED)) -> int | None:
        """Take a new lease for dispatch; returns the new epoch, or None if not claimable."""
        return (await self.claim_many([task_id], from_states=from_states)).get(task_id)

    async def claim_many(self, task_ids: Sequence[str], *, from_states: Sequence[str] = (PENDING,)) -> dict[str, int]:
        """Lease several tasks in one transaction: {task_id: new epoch} for those claimable."""
        if not task_ids:
            return {}
        async with self._writer.begin() as conn:
            rows = await conn.execute(
                update(tasks)
                .where(tasks.c.task_id.in_(list(task_ids)), tasks.c.dispatch_state.in_(list(from_states)))
                .values(epoch=tasks.c.epoch + 1, dispatch_state=DISPATCHED, heartbeat_at=utcnow())
                .returning(tasks.c.task_id, tasks.c.epoch)
            )
            return {r.task_id: r.epoch for r in rows}

    async def park(self, task_id: str, epoch: int, seen_seq: int) -> bool:
        """A driver found its waiting task still waiting: take it off dispatch, unless an
        event came since `seen_seq` (a reply racing the driver), which the driver must read."""
        async with self._writer.begin() as conn:
            result = await conn.execute(update(tasks).where(
                tasks.c.task_id == task_id, tasks.c.epoch == epoch, tasks.c.last_seq == seen_seq,
                tasks.c.dispatch_state == DISPATCHED).values(dispatch_state=WAITING))
            return result.rowcount > 0

    async def waiting(self, on: str, *, limit: int = 1000) -> list[TaskRow]:
        """Tasks off dispatch, waiting for `on` (e.g. `model`), oldest first."""
        q = (select(*_ROW).where(tasks.c.dispatch_state == WAITING, tasks.c.waiting_on == on)
             .order_by(tasks.c.updated_at).limit(limit))
        async with self._reader.connect() as conn:
            return [_row(r) for r in await conn.execute(q)]

    async def wake(self, task_ids: Sequence[str], *, on: str) -> list[str]:
        """Put tasks waiting for `on` back on the dispatch queue (what they waited for has
        come); returns those woken. A task that moved on meanwhile is left alone."""
        if not task_ids:
            return []
        async with self._writer.begin() as conn:
            rows = await conn.execute(update(tasks).where(
                tasks.c.task_id.in_(list(task_ids)), tasks.c.dispatch_state == WAITING, tasks.c.waiting_on == on)
                .values(dispatch_state=PENDING).returning(tasks.c.task_id))
            return [r.task_id for r in rows]

    def hold(self, task_id: str, epoch: int, on_lost: Callable[[], None] | None = None) -> None:
        """This process drives the task under `epoch`: beat its heartbeat until `release`;
        `on_lost` is called once a beat finds the lease taken by a newer dispatch."""
        self._leases[task_id] = (epoch, on_lost)
        if self._beater is None or self._beater.done():
            self._beater = asyncio.create_task(self._beat_loop())

    def release(self, task_id: str, epoch: int) -> None:
        if self._leases.get(task_id, (None, None))[0] == epoch:
            del self._leases[task_id]

    async def _beat_loop(self) -> None:
        while self._leases:
            await asyncio.sleep(DRIVER_HEARTBEAT_S)
            held = dict(self._leases)
            try:
                current = await self.beat({t: e for t, (e, _) in held.items()})
            except Exception:  # a missed beat only brings the watchdog a little sooner
                log.warning("driver heartbeat failed", exc_info=True)
                continue
            for task_id, (epoch, on_lost) in held.items():
                if task_id not in current and self._leases.get(task_id, (None, None))[0] == epoch:
                    del self._leases[task_id]
                    if on_lost is not None:
                        on_lost()

    async def beat(self, leases: dict[str, int]) -> set[str]:
        """Drivers' heartbeats, one statement for every task a process drives: {task: epoch}.
        Returns the tasks whose lease is still current."""
        if not leases:
            return set()
        async with self._writer.begin() as conn:
            rows = await conn.execute(update(tasks).where(tuple_(tasks.c.task_id, tasks.c.epoch).in_(list(leases.items())))
                                      .values(heartbeat_at=utcnow()).returning(tasks.c.task_id))
            return {r.task_id for r in rows}

    async def orphans(self, silent_s: float, *, limit: int = 1000) -> list[TaskRow]:
        """Tasks dispatched whose driver has shown no sign of life for `silent_s`."""
        before = utcnow() - timedelta(seconds=silent_s)
        q = (select(*_ROW).where(tasks.c.dispatch_state == DISPATCHED,
                                 func.coalesce(tasks.c.heartbeat_at, tasks.c.updated_at) < before)
             .order_by(tasks.c.updated_at).limit(limit))
        async with self._reader.connect() as conn:
            return [_row(r) for r in await conn.execute(q)]

    async def heartbeat(self, task_id: str) -> tuple[int, datetime | None] | None:
        """(epoch, last heartbeat) of a task, or None if it is gone."""
        async with self._reader.connect() as conn:
            r = (await conn.execute(_HEARTBEAT, {"task_id": task_id})).first()
        if r is None:
            return None
        return r.epoch, (_utc(r.heartbeat_at) if r.heartbeat_at else None)

    # -- reads ------------------------------------------------------------------------

    async def read(self, task_id: str, *, after_seq: int = 0, limit: int | None = None) -> list[Event]:
        params = {"task_id": task_id, "after_seq": after_seq, "limit": limit}
        async with self._reader.connect() as conn:
            return [_event(r) for r in await conn.execute(_READ_SOME if limit else _READ, params)]

    async def load_task(self, task_id: str, *, tenant: str | None = None) -> Task | None:
        """The task's state: its snapshot and the events after it, so the cost does not grow
        with the log's length. Whoever folds many events past the snapshot writes a newer one."""
        return (await self._load(task_id, tenant))[0]

    async def load_submitted(self, task_id: str) -> tuple[Task | None, dict[str, Any]]:
        """The task's state and its submission (`task.created`'s payload: the plan as given),
        which a task without a snapshot yet gets from the same read."""
        task, first = await self._load(task_id, None)
        if task is not None and first is None:
            first = (await self.read(task_id, limit=1))[0]
        return task, first.payload if first is not None else {}

    async def _load(self, task_id: str, tenant: str | None) -> tuple[Task | None, Event | None]:
        async with self._reader.connect() as conn:
            row = (await conn.execute(_SNAPSHOT, {"task_id": task_id})).first()
        if row is None or tenant is not None and row.tenant != tenant:
            return None, None
        task = task_from_snapshot(row.snapshot)
        after = task.last_seq if task is not None else 0
        events = await self.read(task_id, after_seq=after)
        for e in events:
            task = apply(task, e)
        if task is not None and task.last_seq - after >= SNAPSHOT_EVERY:
            self.snapshot_soon(task)
        return task, events[0] if events and events[0].seq == 1 else None

    def snapshot_soon(self, task: Task) -> None:
        """Write `task` (the state at its last_seq) as its snapshot, in the background; best
        effort, and never over a newer one."""
        body, seq = snapshot_of(task), task.last_seq

        async def write() -> None:
            try:
                async with self._writer.begin() as conn:
                    await conn.execute(update(tasks).where(
                        tasks.c.task_id == task.id, func.coalesce(tasks.c.snapshot_seq, 0) < seq,
                        tasks.c.last_seq >= seq).values(snapshot=body, snapshot_seq=seq))
            except Exception:  # the next reader folds a few more events, and tries again
                log.warning("could not write the snapshot of task %s", task.id, exc_info=True)

        job = asyncio.get_running_loop().create_task(write())
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    async def get(self, task_id: str, *, tenant: str | None = None) -> TaskRow | None:
        async with self._reader.connect() as conn:
            r = (await conn.execute(_GET if tenant is None else _GET_OF_TENANT,
                                    {"task_id": task_id, "tenant": tenant})).first()
        return _row(r) if r else None

    async def list_tasks(
        self, tenant: str | None, *, status: TaskStatus | None = None, limit: int = 50, cursor: str | None = None,
        goal_contains: str | None = None,
    ) -> tuple[list[TaskRow], str | None]:
        """Newest first; the cursor is opaque and resumes after the last row returned.
        `goal_contains` keeps the tasks whose goal holds that text, ignoring case. `tenant`
        None lists every tenant's (the console's admin view)."""
        q = select(*_ROW) if tenant is None else select(*_ROW).where(tasks.c.tenant == tenant)
        if status is not None:
            q = q.where(tasks.c.status == status.value)
        if goal_contains:
            # LIKE's wildcards in the search text are literal characters, not patterns.
            pattern = goal_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            q = q.where(tasks.c.goal.ilike(f"%{pattern}%", escape="\\"))
        if cursor:
            ts, tid = decode_cursor(cursor)
            q = q.where(or_(tasks.c.created_at < ts, and_(tasks.c.created_at == ts, tasks.c.task_id < tid)))
        q = q.order_by(tasks.c.created_at.desc(), tasks.c.task_id.desc()).limit(limit + 1)
        async with self._reader.connect() as conn:
            rows = [_row(r) for r in await conn.execute(q)]
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (_encode_cursor(rows[-1].created_at, rows[-1].task_id) if more and rows else None)

    async def by_dispatch_state(self, *states: str, limit: int = 1000) -> list[TaskRow]:
        """Tasks in these states, queue order: priority, then age."""
        q = (
            select(*_ROW)
            .where(tasks.c.dispatch_state.in_(states))
            .order_by(tasks.c.priority_rank, tasks.c.created_at, tasks.c.task_id)
            .limit(limit)
        )
        async with self._reader.connect() as conn:
            return [_row(r) for r in await conn.execute(q)]

    async def recently_failed(self, since: datetime, *, limit: int = 10) -> list[TaskRow]:
        """Tasks of every tenant that failed since `since`, the latest first (the System page)."""
        q = (select(*_ROW).where(tasks.c.dispatch_state == TERMINAL, tasks.c.status == TaskStatus.failed.value,
                                 tasks.c.updated_at >= since)
             .order_by(tasks.c.updated_at.desc(), tasks.c.task_id).limit(limit))
        async with self._reader.connect() as conn:
            return [_row(r) for r in await conn.execute(q)]

    async def fair_pending(self, room: int, *, running: dict[str, int], cap: int) -> list[TaskRow]:
        """Up to `room` pending tasks to start, round robin over tenants with pending work.

        Each tenant's queue is ordered by priority, then age; the pass takes every tenant's
        first task, then every tenant's second, and so on, so a tenant with a long backlog
        (or one at its cap of `cap` running tasks, which is left out) never hides another."""
        if room <= 0:
            return []
        full = [t for t, n in running.items() if n >= cap]
        rank = func.row_number().over(partition_by=tasks.c.tenant,
                                      order_by=(tasks.c.priority_rank, tasks.c.created_at, tasks.c.task_id))
        inner = select(*_ROW, rank.label("turn")).where(tasks.c.dispatch_state == PENDING)
        if full:
            inner = inner.where(tasks.c.tenant.not_in(full))
        ranked = inner.subquery()
        q = (select(ranked).where(ranked.c.turn <= min(room, cap))
             .order_by(ranked.c.turn, ranked.c.priority_rank, ranked.c.created_at, ranked.c.task_id))
        async with self._reader.connect() as conn:
            rows = [_row(r) for r in await conn.execute(q)]
        chosen, taken = [], dict(running)
        for row in rows:
            if taken.get(row.tenant, 0) < cap:
                taken[row.tenant] = taken.get(row.tenant, 0) + 1
                chosen.append(row)
                if len(chosen) >= room:
                    break
        return chosen

    async def dispatched_by_tenant(self) -> dict[str, int]:
        """Tasks dispatched now (leased to a driver), per tenant."""
        q = (select(tasks.c.tenant, func.count()).where(tasks.c.dispatch_state == DISPATCHED)
             .group_by(tasks.c.tenant))
        async with self._reader.connect() as conn:
            return {tenant: int(n) for tenant, n in await conn.execute(q)}

    async def queue_position(self, row: TaskRow) -> int | None:
        """1-based place in the dispatch queue, or None when the task is not waiting in it."""
        if row.dispatch_state != PENDING:
            return None
        rank = row.priority.rank
        ahead = or_(
            tasks.c.priority_rank < rank,
            and_(tasks.c.priority_rank == rank, tasks.c.created_at < row.created_at),
            and_(tasks.c.priority_rank == rank, tasks.c.created_at == row.created_at, tasks.c.task_id < row.task_id),
        )
        q = select(func.count()).select_from(tasks).where(tasks.c.dispatch_state == PENDING, ahead)
        async with self._reader.connect() as conn:
            return int((await conn.execute(q)).scalar_one()) + 1

    # -- procedural memory ------------------------------------------------------------

    async def save_learned(self, templates: Sequence[dict[str, Any]]) -> None:
        """Store (or replace: a replayed drive learns again) verified plans as templates, in one
        transaction: each a dict of template_id, tenant, goal, embedding and body."""
        rows = [{**t, "created_at": utcnow()} for t in templates]
        if not rows:
            return
        async with self._writer.begin() as conn:
            await conn.execute(learned_templates.delete().where(
                learned_templates.c.template_id.in_([r["template_id"] for r in rows])))
            await conn.execute(learned_templates.insert(), rows)

    async def learned(self, tenant: str, *, limit: int = 2000) -> list[dict[str, Any]]:
        """The tenant's learned templates, newest first."""
        q = (select(learned_templates).where(learned_templates.c.tenant == tenant)
             .order_by(learned_templates.c.created_at.desc()).limit(limit))
        async with self._reader.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(q)]

    async def pending_counts(self, tenant: str) -> tuple[int, int]:
        """(the tenant's tasks waiting for dispatch, everyone's), in one query."""
        async with self._reader.connect() as conn:
            total, mine = (await conn.execute(_PENDING_COUNTS, {"tenant": tenant})).one()
        return int(mine), int(total)

    async def count_pending(self, tenant: str | None = None) -> int:
        q = select(func.count()).select_from(tasks).where(tasks.c.dispatch_state == PENDING)
        if tenant is not None:
            q = q.where(tasks.c.tenant == tenant)
        async with self._reader.connect() as conn:
            return int((await conn.execute(q)).scalar_one())


class SideStore:
    """Base of the stores beside the event log (ingest jobs, access): the same database, with
    a small pool of their own; the event store's migrations create their tables."""

    def __init__(self, url: str):
        self.url = url
        if url.startswith("sqlite"):
            self._writer, self._reader = sqlite_engines(url)
        else:
            self._writer = self._reader = create_async_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True)

    async def migrate(self) -> None:
        store = EventStore(self.url)
        try:
            await store.migrate()
        finally:
            await store.close()

    async def close(self) -> None:
        await self._writer.dispose()
        if self._reader is not self._writer:
            await self._reader.dispose()

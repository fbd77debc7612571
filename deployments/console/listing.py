"""The tasks list's rows: one tenant's through the store, or for admins every tenant's, read
from the tasks table the same way (newest first, the store's opaque cursor, goal search)."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import and_, or_, select

from memory.schema import tasks
from memory.store import EventStore, decode_cursor
from troupe.models import Priority, TaskStatus, utcnow
from troupe.reducer import reduce

__all__ = ["EVERY_TENANT", "PAGE_SIZE", "Listing", "age", "task_rows", "tenants"]

PAGE_SIZE = 20
EVERY_TENANT = "*"
"""The admins' list of every tenant's tasks (the `tenant` filter left empty)."""
_BY_RANK = {p.rank: p for p in Priority}
_MAX_TENANTS = 500  # the admin's tenant picker suggests at most this many


@dataclass(frozen=True)
class Listing:
    """What the list shows: whose tasks, in which status, holding which text, from where."""

    tenant: str
    status: TaskStatus | None = None
    q: str = ""
    cursor: str | None = None


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)  # SQLite hands back naive times


def age(ts: datetime, now: datetime) -> str:
    s = max(0, int((now - ts).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


async def _every_tenant(store: EventStore, f: Listing) -> tuple[list[Any], str | None]:
    """Rows of every tenant, as `EventStore.list_tasks` pages one tenant's."""
    q = select(tasks.c.task_id, tasks.c.tenant, tasks.c.goal, tasks.c.status, tasks.c.priority_rank,
               tasks.c.created_at)
    if f.status is not None:
        q = q.where(tasks.c.status == f.status.value)
    if f.q:
        pattern = f.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        q = q.where(tasks.c.goal.ilike(f"%{pattern}%", escape="\\"))
    if f.cursor:
        ts, tid = decode_cursor(f.cursor)
        q = q.where(or_(tasks.c.created_at < ts, and_(tasks.c.created_at == ts, tasks.c.task_id < tid)))
    q = q.order_by(tasks.c.created_at.desc(), tasks.c.task_id.desc()).limit(PAGE_SIZE + 1)
    async with store.reader.connect() as conn:
        rows = list(await conn.execute(q))
    more, rows = len(rows) > PAGE_SIZE, rows[:PAGE_SIZE]
    last = rows[-1] if more and rows else None
    cursor = base64.urlsafe_b64encode(json.dumps([_utc(last.created_at).isoformat(), last.task_id]).encode()
                                      ).decode() if last else None
    return [{"task_id": r.task_id, "tenant": r.tenant, "goal": r.goal, "status": TaskStatus(r.status),
             "priority": _BY_RANK[r.priority_rank], "created_at": _utc(r.created_at)} for r in rows], cursor


async def task_rows(store: EventStore, f: Listing) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the list, each row with its cost (from its log) and age."""
    if f.cursor:
        try:
            decode_cursor(f.cursor)
        except ValueError:
            f = Listing(f.tenant, f.status, f.q)  # a stale or edited link starts from the first page
    if f.tenant == EVERY_TENANT:
        rows, next_cursor = await _every_tenant(store, f)
    else:
        found, next_cursor = await store.list_tasks(f.tenant, status=f.status, limit=PAGE_SIZE, cursor=f.cursor,
                                                    goal_contains=f.q or None)
        rows = [{"task_id": r.task_id, "tenant": r.tenant, "goal": r.goal, "status": r.status,
                 "priority": r.priority, "created_at": r.created_at} for r in found]
    # Cost is in each task's log; a page is PAGE_SIZE small logs, read concurrently.
    logs = await asyncio.gather(*(store.read(r["task_id"]) for r in rows))
    now = utcnow()
    items = []
    for row, events in zip(rows, logs):
        task = reduce(events)
        items.append({"id": row["task_id"], "goal": row["goal"], "status": row["status"].value,
                      "tenant": row["tenant"], "priority": row["priority"].value,
                      "cost": task.usage.cost_usd if task else 0.0, "age": age(row["created_at"], now),
                      "created_at": row["created_at"].isoformat()})
    return items, next_cursor


async def tenants(store: EventStore) -> list[str]:
    """Tenants that have tasks, for the admin's tenant picker."""
    q = select(tasks.c.tenant).distinct().order_by(tasks.c.tenant).limit(_MAX_TENANTS)
    async with store.reader.connect() as conn:
        return [r[0] for r in await conn.execute(q)]

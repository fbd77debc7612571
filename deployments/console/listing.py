"""The tasks list's rows: one tenant's, or for admins every tenant's (newest first, the
store's opaque cursor, goal search), each with its cost and age."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from memory.schema import tasks
from memory.store import EventStore, decode_cursor
from troupe.models import TaskStatus, utcnow
from troupe.reducer import reduce

__all__ = ["EVERY_TENANT", "PAGE_SIZE", "Listing", "age", "task_rows", "tenants"]

PAGE_SIZE = 20
EVERY_TENANT = "*"
"""The admins' list of every tenant's tasks (the `tenant` filter left empty)."""
_MAX_TENANTS = 500  # the admin's tenant picker suggests at most this many


@dataclass(frozen=True)
class Listing:
    """What the list shows: whose tasks, in which status, holding which text, from where."""

    tenant: str
    status: TaskStatus | None = None
    q: str = ""
    cursor: str | None = None


def age(ts: datetime, now: datetime) -> str:
    s = max(0, int((now - ts).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


async def task_rows(store: EventStore, f: Listing) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the list, each row with its cost (from its log) and age."""
    if f.cursor:
        try:
            decode_cursor(f.cursor)
        except ValueError:
            f = Listing(f.tenant, f.status, f.q)  # a stale or edited link starts from the first page
    found, next_cursor = await store.list_tasks(None if f.tenant == EVERY_TENANT else f.tenant, status=f.status,
                                                limit=PAGE_SIZE, cursor=f.cursor, goal_contains=f.q or None)
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

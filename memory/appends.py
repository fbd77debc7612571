"""Appending to task logs: the events, the errors an append can meet, and what one group
commit writes, in one call of synchronous code (on SQLite, one hop to a worker thread).

Appending allocates `seq` by bumping the task row's counter inside the same transaction
as the insert: concurrent appenders to one task serialize on that row (PostgreSQL row
lock, SQLite's single writer), so seq stays dense and unique, and a rolled-back append
leaves no gap. The same row carries the lease `epoch`: a driver appends with the epoch it
was dispatched with, and a newer dispatch fences the older driver out.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Update, and_, bindparam, case, select, update

from memory.call_ledger import record_results
from memory.schema import events, tasks
from memory.webhooks import enqueue_deliveries
from troupe.models import Event, EventType, TaskStatus

__all__ = ["DISPATCHED", "PENDING", "TERMINAL", "WAITING", "Append", "NewEvent", "StaleLease", "TaskNotFound",
           "write_batch"]

# dispatch_state values: the durable dispatch queue lives in the tasks table.
PENDING, DISPATCHED, WAITING, TERMINAL = "pending", "dispatched", "waiting", "terminal"


class TaskNotFound(LookupError):
    def __init__(self, task_id: str):
        self.task_id = task_id
        super().__init__(f"no task {task_id!r}")


class StaleLease(RuntimeError):
    """The task was dispatched again since this driver took it; the driver must stop."""

    def __init__(self, task_id: str, epoch: int):
        self.task_id, self.epoch = task_id, epoch
        super().__init__(f"task {task_id!r}: lease epoch {epoch} is no longer current")


@dataclass(frozen=True)
class NewEvent:
    type: EventType
    payload: dict[str, Any]


@dataclass
class Append:
    task_id: str
    new: list[NewEvent]
    epoch: int | None
    trace_id: str | None
    done: asyncio.Future
    create: dict[str, Any] | None = None
    """Set for a new task: the tasks row to insert before its first events."""
    wake: bool = False
    """A waiting task goes back to the dispatch queue in the same transaction (a reply, a raise)."""


def write_batch(conn: Connection, batch: list[Append],
                now: datetime) -> tuple[list[list[Event] | Exception], list[dict[str, Any]]]:
    """Write one group commit's appends on `conn` (inside its transaction): each item's events,
    or the error that item alone meets (a stale lease, no such task). Also returns the rows
    written, for the live bus."""
    results: list[list[Event] | Exception] = []
    rows: list[dict[str, Any]] = []
    for item in batch:
        if item.create is not None:
            conn.execute(_INSERT_TASK, {**item.create, "created_at": now, "updated_at": now})
        projected = _projection(item.new)
        bump = _bump(item.epoch is not None, item.wake, tuple((c, v is _REOPEN) for c, v in projected.items()))
        params = {"a_task_id": item.task_id, "a_epoch": item.epoch, "a_count": len(item.new), "a_now": now,
                  **{f"a_{c}": v for c, v in projected.items() if v is not _REOPEN}}
        last = conn.execute(bump, params).scalar_one_or_none()
        if last is None:
            stale = item.epoch is not None and conn.execute(
                select(tasks.c.task_id).where(tasks.c.task_id == item.task_id)).first() is not None
            results.append(StaleLease(item.task_id, item.epoch or 0) if stale else TaskNotFound(item.task_id))
            continue
        first = last - len(item.new) + 1
        mine = [{"task_id": item.task_id, "seq": first + i, "ts": now, "type": e.type.value,
                 "payload": e.payload, "trace_id": item.trace_id} for i, e in enumerate(item.new)]
        rows += mine
        results.append([Event(**{**r, "type": EventType(r["type"])}) for r in mine])
        if any(e.type == EventType.tool_result for e in item.new):
            record_results(conn, item.task_id, [(first + i, e) for i, e in enumerate(item.new)])
        if any(e.type == EventType.status for e in item.new):  # the webhook outbox, same transaction
            enqueue_deliveries(conn, item.task_id, [(first + i, e) for i, e in enumerate(item.new)])
    if rows:
        conn.execute(_INSERT_EVENTS, rows)
    return results, rows


_INSERT_TASK = tasks.insert()
_INSERT_EVENTS = events.insert()
_REOPEN = object()
"""A column of `_projection` that a follow-up reopens: `_REOPENED`'s expression, not a value."""
_ended = tasks.c.dispatch_state == TERMINAL
_REOPENED = {  # a follow-up reopens an ended task, and only that
    "status": case((_ended, TaskStatus.queued.value), else_=tasks.c.status),
    "dispatch_state": case((_ended, PENDING), else_=tasks.c.dispatch_state),
    "waiting_on": case((_ended, None), else_=tasks.c.waiting_on),
}


@functools.cache  # the shapes are few: a fence or not, a wake or not, and which columns the events set
def _bump(fenced: bool, wake: bool, columns: tuple[tuple[str, bool], ...]) -> Update:
    """The tasks row's update for an append of this shape, built once with bound parameters:
    building it (and its cache key) for each append cost a quarter of the Conductor's CPU."""
    cond = tasks.c.task_id == bindparam("a_task_id")
    if fenced:
        cond = and_(cond, tasks.c.epoch == bindparam("a_epoch"))
    values: dict[str, Any] = {"last_seq": tasks.c.last_seq + bindparam("a_count"), "updated_at": bindparam("a_now")}
    if wake:
        values["dispatch_state"] = case((tasks.c.dispatch_state == WAITING, PENDING), else_=tasks.c.dispatch_state)
    for column, reopen in columns:  # after the wake: what the events set wins
        values[column] = _REOPENED[column] if reopen else bindparam(f"a_{column}")
    return update(tasks).where(cond).values(**values).returning(tasks.c.last_seq)


def _projection(new: Sequence[NewEvent]) -> dict[str, Any]:
    """Columns of the tasks row that the appended events change: a value, or `_REOPEN`."""
    values: dict[str, Any] = {}
    for e in new:
        if e.type == EventType.status:
            status = TaskStatus(e.payload["status"])
            values["status"] = status.value
            values["waiting_on"] = e.payload.get("waiting_on") if status == TaskStatus.waiting_for_input else None
            if status.terminal:
                values["dispatch_state"] = TERMINAL
            elif status == TaskStatus.waiting_for_input:
                values["dispatch_state"] = WAITING
        elif e.type == EventType.iteration_started:
            values.update(dict.fromkeys(_REOPENED, _REOPEN))
    return values

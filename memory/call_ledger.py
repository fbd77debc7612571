"""The idempotency ledger: what the executing side knows about each tool call, by its key.

A call runs only after it has claimed its key's row (`running`). Its outcome is written
there as soon as the tool returns (`executed`), and the runner's `tool.result` append
marks the row `recorded` in the same transaction as the event (see `record_results`).
A call issued again (a resumed drive, a retry, a duplicate request) finds the row and:

- gets the recorded outcome back, without running, when one is there;
- waits (`busy`) while another run of it still beats its heartbeat;
- runs again when the earlier run is in doubt (it died, timed out, or was cancelled) and
  the tool is idempotent, or the user confirmed exactly that run with `retry`;
- is told `in_doubt` otherwise: a side-effecting call is never run twice on its own.

A run that stopped before the tool did anything (what it needs was unreachable) gives its
key back (`release`), so asking again runs it.

A call whose lease epoch is older than the task's current one is refused (`fenced`), and
the heartbeat cancels an idempotent call of a superseded driver mid-run.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from memory.schema import tasks, tool_calls
from troupe.models import EventType, utcnow

if TYPE_CHECKING:
    from memory.store import EventStore, NewEvent
    from troupe.tool_calls import ToolCall, ToolOutcome

__all__ = ["CallLedger", "CallState", "Claim", "Decision", "record_results"]

log = logging.getLogger("troupe.ledger")


class CallState(StrEnum):
    running = "running"
    """Claimed by a run that has not returned; in doubt once its heartbeat stops."""
    abandoned = "abandoned"
    """Its run was cancelled mid-way: in doubt at once."""
    executed = "executed"
    """The tool returned; the outcome is here, the runner may not have logged it yet."""
    recorded = "recorded"
    """The outcome is in the task's log (`tool.result`)."""


class Decision(StrEnum):
    run = "run"
    replay = "replay"
    busy = "busy"
    in_doubt = "in_doubt"
    fenced = "fenced"


@dataclass(frozen=True)
class Claim:
    decision: Decision
    run_id: str | None = None
    outcome: dict[str, Any] | None = None
    runs: int = 0
    """How many times the call has been started, this claim's run included."""


@dataclass
class _Run:
    key: str
    task_id: str
    epoch: int
    cancel_when_fenced: bool
    job: asyncio.Task | None = field(default=None, repr=False)


def _insert_ignore(conn: AsyncConnection | Connection, values: dict[str, Any]) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(tool_calls).values(**values).on_conflict_do_nothing(index_elements=["idempotency_key"])


class CallLedger:
    """The executing side's view of the ledger; one per process, over that process's store."""

    def __init__(self, store: EventStore, *, heartbeat_s: float = 1.0, stale_beats: int = 4):
        self.store = store
        self.heartbeat_s = heartbeat_s
        self.stale_beats = stale_beats
        self._runs: dict[str, _Run] = {}
        self._beater: asyncio.Task | None = None

    async def claim(self, call: ToolCall) -> Claim:
        """Decide, in one transaction, whether this call may run now."""
        now = utcnow()
        run_id = uuid.uuid4().hex
        async with self.store.writer.begin() as conn:
            if call.epoch is not None:
                current = (await conn.execute(select(tasks.c.epoch).where(tasks.c.task_id == call.task_id))
                           ).scalar_one_or_none()
                if current is not None and current > call.epoch:
                    return Claim(Decision.fenced)
            fresh = {"idempotency_key": call.idempotency_key, "task_id": call.task_id, "node_id": call.node_id,
                     "tool": call.tool, "state": CallState.running.value, "attempt": call.attempt,
                     "epoch": call.epoch or 0, "runs": 1, "run_id": run_id, "outcome": None,
                     "started_at": now, "heartbeat_at": now, "updated_at": now}
            inserted = (await conn.execute(_insert_ignore(conn, fresh).returning(tool_calls.c.runs))).first()
            if inserted is not None:
                return Claim(Decision.run, run_id, runs=1)
            row = (await conn.execute(select(tool_calls).where(tool_calls.c.idempotency_key == call.idempotency_key)
                                      .with_for_update())).one()
            decision = self._decide(row, call, now)
            if decision != Decision.run:
                return Claim(decision, outcome=row.outcome, runs=row.runs)
            await conn.execute(update(tool_calls).where(tool_calls.c.idempotency_key == call.idempotency_key).values(
                state=CallState.running.value, attempt=max(call.attempt, row.attempt), epoch=call.epoch or row.epoch,
                runs=row.runs + 1, run_id=run_id, outcome=None, result_seq=None, started_at=now, heartbeat_at=now,
                updated_at=now))
            return Claim(Decision.run, run_id, runs=row.runs + 1)

    def _decide(self, row: Any, call: ToolCall, now: Any) -> Decision:
        if row.outcome is not None:
            # A known failure the tool called retryable may run again as a later attempt.
            again = not row.outcome.get("ok") and row.outcome.get("retryable") and call.attempt > row.attempt
            return Decision.run if again else Decision.replay
        stale_after = timedelta(seconds=self.heartbeat_s * self.stale_beats)
        beating = row.state == CallState.running and now - _aware(row.heartbeat_at) < stale_after
        if beating:
            return Decision.busy
        # `confirmed_runs` 0: the user confirmed a call whose run count could not be read.
        if not call.side_effects or call.confirmed_runs in (row.runs, 0):
            return Decision.run
        return Decision.in_doubt

    async def finish(self, call: ToolCall, run_id: str, outcome: ToolOutcome) -> None:
        """The tool returned: keep its outcome, so a call issued again gets it instead of a run."""
        self._forget(run_id)
        body = {"ok": outcome.ok, "output": outcome.output, "error": outcome.error, "retryable": outcome.retryable}
        await self._set(call.idempotency_key, run_id, state=CallState.executed.value, outcome=body)

    async def release(self, call: ToolCall, run_id: str, outcome: ToolOutcome) -> None:
        """The run stopped before the tool did anything (what it needs could not be reached):
        a first run gives its key back, so the call asked again runs; a later run (one the user
        confirmed) keeps the failure, as `finish` would, rather than forget the run before it."""
        self._forget(run_id)
        async with self.store.writer.begin() as conn:
            freed = await conn.execute(delete(tool_calls).where(
                tool_calls.c.idempotency_key == call.idempotency_key, tool_calls.c.run_id == run_id,
                tool_calls.c.state == CallState.running.value, tool_calls.c.runs == 1))
        if not freed.rowcount:
            await self.finish(call, run_id, outcome)

    async def abandon(self, call: ToolCall, run_id: str) -> None:
        """The run was cancelled mid-way: whatever it did is unknown."""
        self._forget(run_id)
        await self._set(call.idempotency_key, run_id, state=CallState.abandoned.value)

    async def _set(self, key: str, run_id: str, **values: Any) -> None:
        async with self.store.writer.begin() as conn:
            await conn.execute(update(tool_calls).where(
                tool_calls.c.idempotency_key == key, tool_calls.c.run_id == run_id,
                tool_calls.c.state == CallState.running.value).values(**values, updated_at=utcnow()))

    # -- heartbeats ---------------------------------------------------------------------

    def track(self, call: ToolCall, run_id: str, job: asyncio.Task) -> None:
        """Beat the heartbeat of this run until it ends; cancel it if fenced and re-runnable."""
        self._runs[run_id] = _Run(call.idempotency_key, call.task_id, call.epoch or 0,
                                  cancel_when_fenced=not call.side_effects, job=job)
        if self._beater is None or self._beater.done():
            self._beater = asyncio.create_task(self._beat())

    def _forget(self, run_id: str) -> None:
        self._runs.pop(run_id, None)

    async def _beat(self) -> None:
        """One statement per beat for every run of this process, however many there are."""
        while self._runs:
            await asyncio.sleep(self.heartbeat_s)
            runs = dict(self._runs)
            if not runs:
                break
            try:
                async with self.store.writer.begin() as conn:
                    await conn.execute(update(tool_calls).where(
                        tool_calls.c.run_id.in_(list(runs)), tool_calls.c.state == CallState.running.value)
                        .values(heartbeat_at=utcnow()))
                    task_ids = {r.task_id for r in runs.values()}
                    epochs = dict((await conn.execute(select(tasks.c.task_id, tasks.c.epoch)
                                                      .where(tasks.c.task_id.in_(task_ids)))).tuples().all())
            except Exception:  # a missed beat only makes a run look in doubt sooner
                log.warning("tool call heartbeat failed", exc_info=True)
                continue
            for run_id, run in runs.items():
                if run.cancel_when_fenced and epochs.get(run.task_id, run.epoch) > run.epoch and run.job:
                    log.info("call %s: its driver's lease was superseded; cancelling it", run.key)
                    run.job.cancel()

    async def get(self, key: str) -> dict[str, Any] | None:
        async with self.store.reader.connect() as conn:
            row = (await conn.execute(select(tool_calls).where(tool_calls.c.idempotency_key == key))).first()
        return dict(row._mapping) if row else None


def _aware(ts: Any) -> Any:
    from datetime import timezone

    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def record_results(conn: Connection, task_id: str, written: list[tuple[int, NewEvent]]) -> None:
    """Mark the ledger rows of the `tool.result` events being appended as `recorded`, in the
    append's own transaction: the log and the ledger never disagree about an outcome."""
    now = utcnow()
    for seq, e in written:
        key = e.payload.get("idempotency_key") if e.type == EventType.tool_result else None
        if not key or not (e.payload.get("side_effects") or e.payload.get("skipped")):
            continue  # only side-effecting calls go through the ledger (tools/executor.py)
        p = e.payload
        outcome = {"ok": "output" in p, "output": p.get("output"), "error": p.get("error"),
                   "retryable": bool(p.get("retryable")), "skipped": bool(p.get("skipped"))}
        conn.execute(_insert_ignore(conn, {
            "idempotency_key": key, "task_id": task_id, "node_id": p.get("node_id", ""), "tool": p.get("tool", ""),
            "state": CallState.recorded.value, "attempt": int(p.get("attempt", 1)), "epoch": 0, "runs": 0,
            "run_id": None, "outcome": outcome, "result_seq": seq, "started_at": now, "heartbeat_at": now,
            "updated_at": now}))
        conn.execute(update(tool_calls).where(and_(tool_calls.c.idempotency_key == key)).values(
            state=CallState.recorded.value, outcome=outcome, result_seq=seq, updated_at=now))

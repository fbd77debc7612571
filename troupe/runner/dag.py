"""Executing the DAG: ready nodes run in parallel, each tool call through the executing
side's idempotency ledger; failures whose outcome is known are retried with backoff, calls
in doubt of side-effecting tools are gathered and put to the user once nothing else runs."""

from __future__ import annotations

import asyncio
import random
import time

from memory.live import Watch
from memory.store import NewEvent, StaleLease
from troupe import metrics
from troupe.models import EventType, NodeState, NodeStatus, PlanNode, TaskStatus, Verdict
from troupe.plans import ReferenceError_, resolve_args
from troupe.runner.base import RunnerBase
from troupe.tool_calls import ToolCall, ToolOutcome
from troupe.tracing import carrier, span

__all__ = ["DagExecutor"]

BUSY_POLL_S = 0.5
"""How often a call waits on another live run of itself (after a takeover) before asking again."""
ANNOUNCE_AFTER_S = 0.05
"""An idempotent call that answers within this long is recorded started and finished in one append."""
MAX_LOST_ASKS = 8
"""Times a call lost on the way (pool gone, its ledger unreachable, a side-effecting call's timeout)
is asked again of the ledger, with backoff (about 35 s in all), before it counts as a failed
attempt or as in doubt."""


class DagExecutor(RunnerBase):
    async def _execute(self) -> None:
        with self._watching() as watch:
            await self._execute_watched(watch)

    async def _execute_watched(self, watch: Watch | None) -> None:
        task = self.task
        assert task is not None and task.plan is not None
        if task.status != TaskStatus.executing:
            await self._status(TaskStatus.executing)
        running: dict[str, asyncio.Task] = {}
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            while True:
                nodes = task.nodes
                if task.interrupts and not running:  # a safe point: no call in flight
                    await self._interrupt()
                    if task.status != TaskStatus.executing:
                        return
                    continue
                failed = [n for n in nodes.values() if n.status == NodeStatus.failed]
                if failed and running and await self._correctable():
                    pass  # let the siblings finish before the planner rewrites the plan
                elif failed:
                    await self._cancel_all(running)
                    await self._node_failed(failed)
                    if task.status != TaskStatus.executing:
                        return
                    continue  # corrected: run the new and redefined nodes
                if all(n.status == NodeStatus.done for n in nodes.values()):
                    return
                for node in task.plan.nodes:
                    state = nodes[node.id]
                    if (not failed and not task.interrupts and node.id not in running and node.id not in self._in_doubt
                            and state.status != NodeStatus.done
                            and all(nodes[d].status == NodeStatus.done for d in node.deps)):
                        # A call whose outcome the log lacks is issued again: the ledger
                        # returns its outcome, or runs it, or says it is in doubt.
                        run = self._run_agent if node.kind == "agent" else self._run_node
                        running[node.id] = asyncio.create_task(run(node), name=f"node:{node.id}")
                if not running and task.interrupts:
                    continue  # one came with the last fold: act on it before anything else starts
                if not running and self._in_doubt:
                    return await self._ask_in_doubt()
                if not running:
                    # Nothing can run and nothing is done: a dep failed or the plan is stuck.
                    return await self._status(TaskStatus.failed, "no node can run; check the plan's deps")
                finished, _ = await asyncio.wait(
                    [*running.values(), stop], timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED
                )
                for node_id, t in list(running.items()):
                    if t in finished:
                        del running[node_id]
                        t.result()  # re-raise StaleLease and the like
                if not finished:
                    await self._maybe_catch_up(watch)
                    if task.cancel_requested:
                        self._stop.set()
                if self._stop.is_set():
                    await self._cancel_all(running)
                    return await self._finish_cancelled()
        finally:
            stop.cancel()
            for t in running.values():
                t.cancel()

    async def _correctable(self) -> bool:
        """Whether a failure can be corrected: a planner with a model, and rounds left."""
        task = self.task
        assert task is not None
        return (self.planner is not None and task.corrections < task.max_corrections
                and await self._uses_model())

    async def _node_failed(self, failed: list[NodeState]) -> None:
        """A node failed for good: with a model, correct the plan around it; else the task fails."""
        reason = f"node {failed[0].id!r} failed: {failed[0].error}"
        if not await self._correctable():
            return await self._status(TaskStatus.failed, reason)
        await self._correct([Verdict(test_id=f"node:{n.id}", passed=False,
                                     reason=f"node {n.id!r} failed: {n.error}") for n in failed])

    async def _ask_in_doubt(self) -> None:
        """Nothing else can run: ask the user about every side-effecting call in doubt."""
        calls = [c for doubts in self._in_doubt.values() for c in doubts]
        self._in_doubt.clear()
        names = ", ".join(f"{c['tool']!r} of node {c['node_id']!r}" for c in calls)
        await self._emit(NewEvent(EventType.status, {
            "status": TaskStatus.waiting_for_input.value, "waiting_on": "side_effects",
            "resume": TaskStatus.executing.value, "calls": calls,
            "reason": f"the outcome of {names} is unknown: a run started and its process died, timed out or lost "
                      "its tool pool, and the tool has side effects. Reply 'retry' to run it again or 'skip' to "
                      "go on without it."}))

    def _doubt(self, call: ToolCall, outcome: ToolOutcome, call_id: str | None = None) -> None:
        self._in_doubt.setdefault(call.node_id, []).append({
            "node_id": call.node_id, "call_id": call_id, "tool": call.tool, "args": call.args,
            "idempotency_key": call.idempotency_key, "attempt": call.attempt, "runs": outcome.runs,
            "known": outcome.error})

    @staticmethod
    async def _cancel_all(running: dict[str, asyncio.Task]) -> None:
        for t in running.values():
            t.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        running.clear()

    async def _run_node(self, node: PlanNode) -> None:
        task = self.task
        assert task is not None
        state = task.nodes[node.id]
        key = self._key(node.id)
        attempt = state.attempts + 1
        while True:
            outputs = {n.id: n.output for n in task.nodes.values() if n.status == NodeStatus.done}
            try:
                args = resolve_args(node.args, outputs)
            except ReferenceError_ as exc:
                await self._emit(NewEvent(EventType.node_failed, {"node_id": node.id, "error": str(exc)}))
                return
            with span("node", task_id=self.task_id, node_id=node.id, tool=node.tool, attempt=attempt):
                started = [
                    NewEvent(EventType.node_started, {"node_id": node.id, "attempt": attempt, "idempotency_key": key}),
                    NewEvent(EventType.tool_called, {"node_id": node.id, "tool": node.tool, "args": args,
                                                     "attempt": attempt, "idempotency_key": key}),
                ]
                call = ToolCall(tool=node.tool or "", args=args, task_id=self.task_id, tenant=task.tenant,
                                node_id=node.id, idempotency_key=key, attempt=attempt, trace=carrier(),
                                epoch=self.epoch, side_effects=self._side_effects(node),
                                confirmed_runs=state.confirmed_runs)
                metrics.node_attempt_started(self.task_id, node.id)
                if call.side_effects:  # its start is on record before it can act
                    await self._emit(*started)
                    started = []
                    outcome = await self._call(call, node.timeout_s)
                else:
                    outcome, started = await self._call_announced(call, node.timeout_s, started)
            if outcome.in_doubt:
                await self._emit(*started)
                return self._doubt(call, outcome)
            base = {"node_id": node.id, "attempt": attempt, "tool": node.tool, "idempotency_key": key,
                    "duration_s": round(outcome.duration_s, 6), **({"replayed": True} if outcome.replayed else {}),
                    **({"side_effects": True} if call.side_effects else {})}
            if outcome.ok:
                await self._emit(*started, NewEvent(EventType.tool_result, {**base, "output": outcome.output}),
                                 NewEvent(EventType.node_done, {"node_id": node.id}))
                return
            result = NewEvent(EventType.tool_result, {**base, "error": outcome.error, "retryable": outcome.retryable})
            if not outcome.retryable or attempt >= node.retry.max_attempts:
                why = outcome.error if attempt == 1 else f"{outcome.error} (after {attempt} attempts)"
                await self._emit(*started, result, NewEvent(EventType.node_failed, {"node_id": node.id, "error": why}))
                return
            delay = node.retry.delay_s(attempt, random.random())
            await self._emit(*started, result, NewEvent(EventType.node_retry, {
                "node_id": node.id, "attempt": attempt, "error": outcome.error, "delay_s": round(delay, 3)}))
            await asyncio.sleep(delay)
            attempt += 1

    async def _call_announced(self, call: ToolCall, timeout_s: float,
                              started: list[NewEvent]) -> tuple[ToolOutcome, list[NewEvent]]:
        """An idempotent call, with its start events: appended once the call has run for
        ANNOUNCE_AFTER_S (watchers see it running), or, for a call that answers sooner, handed
        back to ride on the result's append, one commit per node instead of two. Safe because
        running it again is harmless: a drive that dies before the result is recorded runs it again."""
        call_task = asyncio.ensure_future(self._call(call, timeout_s))
        try:
            done, _ = await asyncio.wait({call_task}, timeout=ANNOUNCE_AFTER_S)
            if not done:
                await self._emit(*started)
                started = []
            return await call_task, started
        except BaseException:  # cancelled, or our lease is gone: the call goes too
            call_task.cancel()
            raise

    async def _call(self, call: ToolCall, timeout_s: float) -> ToolOutcome:
        """One call through the executing side's ledger. A call whose fate is lost on the way
        (timeout, pool gone) is issued again only where the ledger decides: a side-effecting
        one comes back replayed, or run if it never started, or `in_doubt`, never run twice."""
        started = time.monotonic()
        call = call.model_copy(update={"budget_s": timeout_s})  # the tool's own waits end before ours
        lost = 0
        maybe_ran = False  # whether a lost ask may have run the tool (a timeout, a pool that died)
        busy_since: float | None = None
        while True:
            try:
                outcome = await asyncio.wait_for(self.call_tool(call), timeout_s)
            except asyncio.TimeoutError:
                outcome = ToolOutcome.failure(f"timed out after {timeout_s:g} s", retryable=True)
                metrics.tool_timeout(call.tool)
                maybe_ran = True
                if not call.side_effects:  # too slow: a failed attempt, retried with backoff
                    return outcome.model_copy(update={"duration_s": time.monotonic() - started})
            except Exception as exc:  # the pool's replica died or is unreachable: not the tool's failure
                outcome = ToolOutcome.failure(f"tool pool unavailable: {type(exc).__name__}: {exc}"[:2000],
                                              retryable=True)
                maybe_ran = True
            else:
                if outcome.fenced:
                    raise StaleLease(self.task_id, self.epoch)
                if outcome.busy:  # another run of this very call is alive: wait for its outcome
                    busy_since = busy_since or time.monotonic()
                    if call.side_effects and time.monotonic() - busy_since > timeout_s:
                        return outcome.model_copy(update={"busy": False, "in_doubt": True, "error": (
                            f"an earlier run is still going after {timeout_s:g} s (its timeout); its outcome is "
                            "unknown")})
                    await asyncio.sleep(BUSY_POLL_S)
                    continue
                if not outcome.unavailable:
                    return outcome
                # The ledger could not be reached, so nothing ran: an outage to wait out, not an
                # attempt and never a result a model sees.
            # Lost on the way: ask again (the ledger replays, runs, waits or says in doubt), without
            # spending one of the node's attempts, until the pool has been gone too long.
            lost += 1
            if lost >= MAX_LOST_ASKS:
                if call.side_effects and maybe_ran:  # the ledger cannot be asked: what happened is unknown
                    return ToolOutcome(ok=False, in_doubt=True, runs=call.confirmed_runs or 0, error=outcome.error)
                return outcome.model_copy(update={"duration_s": time.monotonic() - started, "unavailable": False})
            await asyncio.sleep(min(10.0, 0.25 * 2 ** lost))

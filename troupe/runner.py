"""Drives one task from its log to an end: plan -> execute DAG -> verify -> publish.

The runner holds no state of its own worth keeping: it replays the log, and every step
it takes is appended (with its lease epoch) before it is acted on. If the process dies,
the next runner replays the same log and carries on; a node whose result is in the log
is never run again, a node that was in flight is run again with the same idempotency key.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from memory.store import EventStore, NewEvent, StaleLease
from tools.registry import ToolRegistry
from troupe.checks import run_checks
from troupe.models import AcceptanceTest, EventType, NodeStatus, Plan, PlanNode, Task, TaskStatus
from troupe.plans import PlanError, ReferenceError_, resolve_args, validate_plan
from troupe.publish import collect_artifacts, write_manifest
from troupe.reducer import apply, reduce
from troupe.tool_calls import ToolCall, ToolOutcome
from troupe.tracing import carrier, span, task_trace_id

__all__ = ["CallTool", "TaskRunner"]

log = logging.getLogger("troupe.runner")

CallTool = Callable[[ToolCall], Awaitable[ToolOutcome]]

DEFAULT_TESTS = [AcceptanceTest(id="all_nodes_done", description="every node finished", check_type="all_nodes_done")]


class _Stop(Exception):
    """Ends the drive early: cancellation requested, or a pause for the user."""


class TaskRunner:
    def __init__(
        self,
        store: EventStore,
        call_tool: CallTool,
        tools: ToolRegistry,
        workspace_for: Callable[[str, str], Path],
        task_id: str,
        epoch: int,
        *,
        poll_s: float = 2.0,
    ):
        self.store = store
        self.call_tool = call_tool
        self.tools = tools
        self.workspace_for = workspace_for
        self.task_id = task_id
        self.epoch = epoch
        self.poll_s = poll_s
        self.trace_id = task_trace_id(task_id)
        self.task: Task | None = None
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()

    # -- the log ----------------------------------------------------------------------

    async def _emit(self, *new: NewEvent) -> None:
        """Append events under our lease, then fold them (and any foreign ones) into state."""
        async with self._lock:
            written = await self.store.append(self.task_id, new, epoch=self.epoch, trace_id=self.trace_id)
            assert self.task is not None
            if written[0].seq != self.task.last_seq + 1:
                await self._catch_up(before=written[0].seq)
            for e in written:
                apply(self.task, e)
        if self.task.cancel_requested:
            self._stop.set()

    async def _catch_up(self, before: int | None = None) -> None:
        """Fold in events others appended (cancel requests, messages) since we last looked."""
        assert self.task is not None
        for e in await self.store.read(self.task_id, after_seq=self.task.last_seq):
            if before is not None and e.seq >= before:
                break
            apply(self.task, e)

    async def _status(self, status: TaskStatus, reason: str | None = None) -> None:
        payload: dict = {"status": status.value}
        if reason:
            payload["reason"] = reason
        await self._emit(NewEvent(EventType.status, payload))

    # -- the drive --------------------------------------------------------------------

    async def drive(self) -> str:
        """Run the task as far as it can go; returns the status it stopped in."""
        self.task = reduce(await self.store.read(self.task_id))
        if self.task is None:
            return "missing"
        if self.task.status.terminal:
            return self.task.status.value
        with span("task", task_id=self.task_id, tenant=self.task.tenant, epoch=self.epoch):
            try:
                await self._emit(NewEvent(EventType.dispatched, {"epoch": self.epoch}))
                await self._phases()
            except StaleLease:
                log.info("task %s: lease %s superseded; leaving it to the newer driver", self.task_id, self.epoch)
                return "superseded"
            except asyncio.CancelledError:
                await self._on_cancelled()
                raise
            except _Stop:
                pass
        return self.task.status.value

    async def _phases(self) -> None:
        task = self.task
        assert task is not None
        if task.cancel_requested:
            return await self._finish_cancelled()
        if task.status == TaskStatus.waiting_for_input and not await self._take_reply():
            return
        if task.plan is None:
            await self._plan()
        if task.status in (TaskStatus.queued, TaskStatus.planning, TaskStatus.executing, TaskStatus.waiting_for_input):
            await self._execute()
        if task.status in (TaskStatus.executing, TaskStatus.verifying):
            await self._verify()
        if task.status == TaskStatus.publishing:
            await self._publish()

    async def _plan(self) -> None:
        task = self.task
        assert task is not None
        await self._status(TaskStatus.planning)
        submitted = (await self.store.read(self.task_id, limit=1))[0].payload
        if submitted.get("plan") is None:
            # Autonomous planning arrives with the planner deployment; until then a goal
            # needs an explicit plan.
            return await self._status(TaskStatus.failed, "no plan was given and no planner is configured; submit a plan")
        try:
            plan = Plan.model_validate(submitted["plan"])
            validate_plan(plan, {n: self.tools.get(n) for n in self.tools.names()})
        except (PlanError, ValueError) as exc:
            return await self._status(TaskStatus.failed, f"invalid plan: {exc}")
        tests = task.acceptance_tests or DEFAULT_TESTS
        await self._emit(
            NewEvent(EventType.plan_set, {"plan": plan.model_dump(mode="json"),
                                          "acceptance_tests": [t.model_dump(mode="json") for t in tests]})
        )

    async def _take_reply(self) -> bool:
        """A waiting task resumes only on the user's reply; returns whether it may go on."""
        task = self.task
        assert task is not None and task.plan is not None
        if task.reply is None:
            return False
        skip = "skip" in task.reply.lower()
        unknown = [n for n in task.nodes.values() if n.outcome_unknown and n.status != NodeStatus.done]
        events = []
        for n in unknown:
            if skip:
                events.append(NewEvent(EventType.node_done, {"node_id": n.id, "output": None, "skipped": True}))
            else:
                events.append(NewEvent(EventType.node_retry, {"node_id": n.id, "attempt": n.attempts,
                                                              "error": "outcome unknown; run again on the user's reply",
                                                              "delay_s": 0, "confirmed": True}))
        await self._emit(*events, NewEvent(EventType.status, {"status": TaskStatus.executing.value}))
        return True

    # -- executing --------------------------------------------------------------------

    async def _execute(self) -> None:
        task = self.task
        assert task is not None and task.plan is not None
        if task.status != TaskStatus.executing:
            await self._status(TaskStatus.executing)
        running: dict[str, asyncio.Task] = {}
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            while True:
                nodes = task.nodes
                failed = [n for n in nodes.values() if n.status == NodeStatus.failed]
                if failed:
                    await self._cancel_all(running)
                    return await self._status(
                        TaskStatus.failed, f"node {failed[0].id!r} failed: {failed[0].error}"
                    )
                if all(n.status == NodeStatus.done for n in nodes.values()):
                    return
                for node in task.plan.nodes:
                    state = nodes[node.id]
                    if (node.id not in running and state.status != NodeStatus.done
                            and all(nodes[d].status == NodeStatus.done for d in node.deps)):
                        if state.outcome_unknown and self._side_effects(node):
                            await self._cancel_all(running)
                            return await self._status(
                                TaskStatus.waiting_for_input,
                                f"node {node.id!r} runs tool {node.tool!r}, which has side effects, and its "
                                "last call's outcome is unknown (its process died). Reply 'retry' to run it "
                                "again or 'skip' to treat it as done.",
                            )
                        running[node.id] = asyncio.create_task(self._run_node(node), name=f"node:{node.id}")
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
                    await self._catch_up()
                    if task.cancel_requested:
                        self._stop.set()
                if self._stop.is_set():
                    await self._cancel_all(running)
                    return await self._finish_cancelled()
        finally:
            stop.cancel()
            for t in running.values():
                t.cancel()

    def _side_effects(self, node: PlanNode) -> bool:
        if node.side_effects is not None:
            return node.side_effects
        return node.tool in self.tools and self.tools.get(node.tool).side_effects

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
        key = f"{self.task_id}:{task.iteration}:{node.id}"
        attempt = state.attempts + 1
        while True:
            outputs = {n.id: n.output for n in task.nodes.values() if n.status == NodeStatus.done}
            try:
                args = resolve_args(node.args, outputs)
            except ReferenceError_ as exc:
                await self._emit(NewEvent(EventType.node_failed, {"node_id": node.id, "error": str(exc)}))
                return
            with span("node", task_id=self.task_id, node_id=node.id, tool=node.tool, attempt=attempt):
                await self._emit(
                    NewEvent(EventType.node_started, {"node_id": node.id, "attempt": attempt, "idempotency_key": key}),
                    NewEvent(EventType.tool_called, {"node_id": node.id, "tool": node.tool, "args": args,
                                                     "attempt": attempt, "idempotency_key": key}),
                )
                call = ToolCall(tool=node.tool or "", args=args, task_id=self.task_id, tenant=task.tenant,
                                node_id=node.id, idempotency_key=key, attempt=attempt, trace=carrier())
                outcome = await self._call(call, node.timeout_s)
            if outcome.ok:
                await self._emit(
                    NewEvent(EventType.tool_result, {"node_id": node.id, "attempt": attempt, "output": outcome.output,
                                                     "duration_s": round(outcome.duration_s, 6)}),
                    NewEvent(EventType.node_done, {"node_id": node.id}),
                )
                return
            result = NewEvent(EventType.tool_result, {"node_id": node.id, "attempt": attempt, "error": outcome.error,
                                                      "duration_s": round(outcome.duration_s, 6)})
            if not outcome.retryable or attempt >= node.retry.max_attempts:
                why = outcome.error if attempt == 1 else f"{outcome.error} (after {attempt} attempts)"
                await self._emit(result, NewEvent(EventType.node_failed, {"node_id": node.id, "error": why}))
                return
            delay = node.retry.delay_s(attempt, random.random())
            await self._emit(result, NewEvent(EventType.node_retry, {"node_id": node.id, "attempt": attempt,
                                                                     "error": outcome.error, "delay_s": round(delay, 3)}))
            await asyncio.sleep(delay)
            attempt += 1

    async def _call(self, call: ToolCall, timeout_s: float) -> ToolOutcome:
        started = time.monotonic()
        try:
            return await asyncio.wait_for(self.call_tool(call), timeout_s)
        except asyncio.TimeoutError:
            return ToolOutcome.failure(f"timed out after {timeout_s:g} s", retryable=True,
                                       duration_s=time.monotonic() - started)
        except Exception as exc:  # the pool's replica died or is unreachable: worth a retry
            return ToolOutcome.failure(f"tool pool unavailable: {type(exc).__name__}: {exc}"[:2000], retryable=True,
                                       duration_s=time.monotonic() - started)

    # -- verify, publish, cancel ------------------------------------------------------

    async def _verify(self) -> None:
        task = self.task
        assert task is not None
        if task.status != TaskStatus.verifying:
            await self._status(TaskStatus.verifying)
        workspace = self.workspace_for(task.tenant, task.id)
        verdicts = await asyncio.to_thread(run_checks, task.acceptance_tests or DEFAULT_TESTS, task, workspace)
        passed = all(v.passed for v in verdicts)
        await self._emit(NewEvent(EventType.verdicts, {"passed": passed,
                                                       "verdicts": [v.model_dump() for v in verdicts]}))
        if passed:
            await self._status(TaskStatus.publishing)
        else:
            failing = "; ".join(f"{v.test_id}: {v.reason}" for v in verdicts if not v.passed)
            await self._status(TaskStatus.failed, f"acceptance tests failed: {failing}")

    async def _publish(self) -> None:
        task = self.task
        assert task is not None
        workspace = self.workspace_for(task.tenant, task.id)
        artifacts = await asyncio.to_thread(collect_artifacts, task.id, workspace)
        manifest = await asyncio.to_thread(write_manifest, task.id, workspace, artifacts)
        known = {(a.name, a.sha256) for a in task.artifacts}
        new = [a for a in [*artifacts, manifest] if (a.name, a.sha256) not in known]
        await self._emit(*[NewEvent(EventType.artifact, {"artifact": a.model_dump()}) for a in new])
        await self._status(TaskStatus.done)

    async def _finish_cancelled(self) -> None:
        await self._status(TaskStatus.cancelled, "cancelled at the user's request")

    async def _on_cancelled(self) -> None:
        """Our request was cancelled: record it if the user asked; otherwise (shutdown,
        redeploy) write nothing, so the next driver resumes the task."""
        try:
            await asyncio.shield(self._catch_up())
            if self.task is not None and self.task.cancel_requested and not self.task.status.terminal:
                await asyncio.shield(self._finish_cancelled())
        except Exception:  # best effort: the log still holds the request for the next driver
            log.exception("task %s: could not record the cancellation", self.task_id)

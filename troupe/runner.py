"""Drives one task from its log to an end: plan -> execute DAG -> verify -> correct -> publish.

The runner holds no state of its own worth keeping: it replays the log, and every step
it takes is appended (with its lease epoch) before it is acted on. If the process dies,
the next runner replays the same log and carries on; a node whose result is in the log
is never run again, a node that was in flight is run again with the same idempotency key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from memory.store import EventStore, NewEvent, StaleLease
from tools.registry import ToolRegistry
from troupe.checks import run_checks
from troupe.llm import ChatRequest, LLMClient, LLMReply, LLMRequestError, LLMUnavailable, LLMUsage, ToolCallRequest
from troupe.models import (
    AcceptanceTest,
    EventType,
    NodeState,
    NodeStatus,
    Plan,
    PlanNode,
    Task,
    TaskStatus,
    Verdict,
)
from troupe.planner import PlanningContext, PlanningFailed, PlanProposal, pinned_block
from troupe.plans import PlanError, ReferenceError_, resolve_args, validate_plan
from troupe.publish import collect_artifacts, write_manifest
from troupe.reducer import apply, brief, reduce
from troupe.tool_calls import ToolCall, ToolOutcome
from troupe.tracing import carrier, span, task_trace_id
from troupe.verifier import Verification

__all__ = ["CallTool", "PlannerPort", "TaskRunner", "Verification", "VerifierPort"]

log = logging.getLogger("troupe.runner")

CallTool = Callable[[ToolCall], Awaitable[ToolOutcome]]

DEFAULT_TESTS = [AcceptanceTest(id="all_nodes_done", description="every node finished", check_type="all_nodes_done")]


class _Stop(Exception):
    """Ends the drive early: cancellation requested, or a pause for the user."""


class PlannerPort(Protocol):
    """The Planner deployment as the runner sees it (a handle adapter, or a local object)."""

    async def plan(self, ctx: PlanningContext) -> PlanProposal: ...
    async def correct(self, ctx: PlanningContext) -> PlanProposal: ...
    async def learn(self, task: Task) -> str | None: ...


class VerifierPort(Protocol):
    async def verify(self, task: Task, workspace: str) -> Verification: ...


AGENT_SYSTEM = """\
You are an agent node of a Troupe task. Reach the goal you are given by calling the tools
you have; calls in one turn run in parallel. When you have what you need, answer with the
final result as plain text and no tool call. Never repeat a call whose result you have."""
REPEAT_MARK = "Not run: identical to an earlier call"
BUSY_POLL_S = 0.5
"""How often a call waits on another live run of itself (after a takeover) before asking again."""
MAX_LOST_ASKS = 8
"""Side-effecting calls lost on the way (pool gone, timeout) asked again of the ledger before giving up."""
TOOL_RESULT_CHARS = 8000
LEARN_TIMEOUT_S = 120.0


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
        planner: PlannerPort | None = None,
        verifier: VerifierPort | None = None,
        llm: LLMClient | None = None,
    ):
        self.planner = planner
        self.verifier = verifier
        self.llm = llm
        self._guidance: str | None = None
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
        self._first_payload: dict[str, Any] = {}
        self._model_configured: bool | None = None
        self._confirmed: dict[str, int | None] = {}
        """Agent calls in doubt the user said to run again: call id -> the run they saw."""
        self._in_doubt: dict[str, list[dict[str, Any]]] = {}
        """Calls of this drive the ledger called in doubt, by node: asked about once nothing runs."""

    # -- the log ----------------------------------------------------------------------

    async def _emit(self, *new: NewEvent) -> None:
        """Append events under our lease, then fold them (and any foreign ones) into state.

        The lock makes this runner the one owner of `self.task`: every fold, ours or a
        catch-up, happens under it, in seq order, and `apply` skips what it has seen."""
        if not new:
            return
        async with self._lock:
            written = await self.store.append(self.task_id, new, epoch=self.epoch, trace_id=self.trace_id)
            assert self.task is not None
            if written[0].seq != self.task.last_seq + 1:
                await self._fold_from_log(before=written[0].seq)
            for e in written:
                apply(self.task, e)
        if self.task.cancel_requested:
            self._stop.set()

    async def _catch_up(self) -> None:
        """Fold in events others appended (cancel requests, messages) since we last looked."""
        async with self._lock:
            await self._fold_from_log()

    async def _fold_from_log(self, before: int | None = None) -> None:
        assert self.task is not None and self._lock.locked()
        for e in await self.store.read(self.task_id, after_seq=self.task.last_seq):
            if before is not None and e.seq >= before:
                break
            apply(self.task, e)

    async def _status(self, status: TaskStatus, reason: str | None = None) -> None:
        payload: dict = {"status": status.value}
        if reason:
            payload["reason"] = reason
        await self._emit(NewEvent(EventType.status, payload))

    async def _wait(self, on: str, reason: str, resume: TaskStatus) -> None:
        """Pause for the user: `on` says why, `resume` is where a reply takes the task back."""
        await self._emit(NewEvent(EventType.status, {"status": TaskStatus.waiting_for_input.value, "reason": reason,
                                                     "waiting_on": on, "resume": resume.value}))

    def _usage_event(self, usage: LLMUsage, purpose: str) -> NewEvent:
        return NewEvent(EventType.llm_called, {"purpose": purpose, **usage.model_dump()})

    async def _check_budget(self, resume: TaskStatus) -> None:
        """Before a model call: pause the task (and stop this drive) if its budget is spent."""
        task = self.task
        assert task is not None
        why = task.usage.exceeded(task.budget)
        if why:
            await self._wait("budget", f"budget reached: {why}. Raise it with POST /v1/tasks/{task.id}/budget, or "
                                       "reply to the task to double the limit that was reached.", resume)
            raise _Stop

    async def _model_unavailable(self, exc: Exception, resume: TaskStatus) -> None:
        why = exc.message if isinstance(exc, LLMUnavailable | LLMRequestError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, LLMRequestError):
            await self._status(TaskStatus.failed, f"the model refused the request: {why}")
        elif isinstance(exc, LLMUnavailable) and not exc.retryable:
            await self._status(TaskStatus.failed, f"no model can be used: {why}")
        else:
            await self._wait("model", f"no model answered: {why}. Nothing is lost; reply 'retry' to try again.",
                             resume)
        raise _Stop

    # -- the drive --------------------------------------------------------------------

    async def drive(self) -> str:
        """Run the task as far as it can go; returns the status it stopped in."""
        log_ = await self.store.read(self.task_id)
        self.task = reduce(log_)
        if self.task is None:
            return "missing"
        self._first_payload = log_[0].payload
        if self.task.status.terminal:
            return self.task.status.value
        with span("task", task_id=self.task_id, tenant=self.task.tenant, epoch=self.epoch):
            self.store.hold(self.task_id, self.epoch)  # the heartbeat the Supervisor's watchdog reads
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
            finally:
                self.store.release(self.task_id, self.epoch)
        return self.task.status.value

    async def _phases(self) -> None:
        task = self.task
        assert task is not None
        if task.cancel_requested:
            return await self._finish_cancelled()
        while task.status == TaskStatus.waiting_for_input and not await self._resume():
            # Still waiting: off the dispatch queue, unless a reply came meanwhile (read it).
            seen = task.last_seq
            if await self.store.park(self.task_id, self.epoch, seen):
                return
            await self._catch_up()
            if task.last_seq == seen:
                return  # not ours to park: a newer lease holds it, or it left dispatch
        while not task.status.terminal and task.status != TaskStatus.waiting_for_input:
            if task.plan is None:
                await self._plan()
            elif task.status in (TaskStatus.queued, TaskStatus.planning, TaskStatus.executing):
                await self._execute()
                if task.status == TaskStatus.executing:
                    await self._status(TaskStatus.verifying)
            elif task.status == TaskStatus.verifying:
                await self._verify()
            elif task.status == TaskStatus.publishing:
                await self._publish()

    async def _plan(self) -> None:
        task = self.task
        assert task is not None
        if task.status != TaskStatus.planning:
            await self._status(TaskStatus.planning)
        if task.attachments and not task.attachments_ingested:
            await self._ingest_attachments()
        submitted = self._first_payload
        if submitted.get("plan") is not None and task.iteration == 1:
            try:
                plan = Plan.model_validate(submitted["plan"])
                validate_plan(plan, {n: self.tools.get(n) for n in self.tools.names()})
            except (PlanError, ValueError) as exc:
                return await self._status(TaskStatus.failed, f"invalid plan: {exc}")
            pins = [NewEvent(EventType.requirements_pinned, {"requirements": task.requirements})] \
                if task.requirements else []
            tests = task.acceptance_tests or DEFAULT_TESTS
            return await self._emit(*pins, NewEvent(EventType.plan_set, {
                "plan": plan.model_dump(mode="json"), "source": "submitted",
                "acceptance_tests": [t.model_dump(mode="json") for t in tests]}))
        if self.planner is None:
            return await self._status(TaskStatus.failed, "no plan was given and no planner is configured; submit a plan")
        if await self._uses_model():
            await self._check_budget(TaskStatus.planning)
        try:
            proposal = await self.planner.plan(self._context())
        except PlanningFailed as exc:
            await self._emit(*[self._usage_event(c, "plan") for c in exc.calls],
                             NewEvent(EventType.status, {"status": TaskStatus.failed.value,
                                                         "reason": f"planning failed: {exc.reason}"}))
            return
        except Exception as exc:  # the model (or the planner's replica) is unavailable
            return await self._model_unavailable(exc, TaskStatus.planning)
        tests = proposal.acceptance_tests or task.acceptance_tests or DEFAULT_TESTS
        await self._emit(
            *[self._usage_event(c, "plan") for c in proposal.calls],
            NewEvent(EventType.requirements_pinned, {"requirements": proposal.pinned_requirements}),
            NewEvent(EventType.plan_set, {"plan": proposal.plan.model_dump(mode="json"), "source": proposal.source,
                                          "repairs": proposal.repairs,
                                          "acceptance_tests": [t.model_dump(mode="json") for t in tests]}),
        )

    async def _uses_model(self) -> bool:
        """Whether a model is configured; asked once per drive (the router's config is fixed
        between deploys, and a drive is short next to a redeploy)."""
        if self._model_configured is None:
            if self.llm is None:
                self._model_configured = False
            else:
                try:
                    self._model_configured = await self.llm.configured()
                except Exception:
                    return True  # a router that cannot answer will say why when called
        return self._model_configured

    def _context(self, **extra: Any) -> PlanningContext:
        task = self.task
        assert task is not None
        return PlanningContext(
            task_id=task.id, tenant=task.tenant, goal=task.goal, requirements=task.requirements,
            pinned_requirements=task.pinned_requirements, history=task.history,
            artifacts=[a.name for a in task.artifacts], attachments=task.attachments, **extra)

    async def _ingest_attachments(self) -> None:
        """Files attached to the task go into its own document scope before planning."""
        task = self.task
        assert task is not None
        if "ingest_attachments" not in self.tools:
            return await self._status(TaskStatus.failed, "the task has attachments but no tool module provides "
                                                         "ingest_attachments; add tools.documents to tool_modules")
        key = f"{task.id}:{task.iteration}:_attachments"
        for attempt in range(1, 4):
            call = ToolCall(tool="ingest_attachments", args={}, task_id=task.id, tenant=task.tenant,
                            node_id="_attachments", idempotency_key=key, attempt=attempt, trace=carrier())
            outcome = await self._call(call, 3600)
            if outcome.ok:
                return await self._emit(NewEvent(EventType.attachments_ingested, {"summary": outcome.output}))
            if not outcome.retryable:
                break
            await asyncio.sleep(min(10.0, 0.5 * 2 ** attempt))
        await self._status(TaskStatus.failed, f"the attachments could not be ingested: {outcome.error}")

    async def _resume(self) -> bool:
        """A waiting task goes on when what it waits for has come; returns whether it may."""
        task = self.task
        assert task is not None
        on = task.waiting_on or "side_effects"
        resume = task.resume_status or TaskStatus.executing
        events: list[NewEvent] = []
        if on == "budget":
            if task.usage.exceeded(task.budget) and task.reply is not None:
                events.append(NewEvent(EventType.budget_raised, _raised(task)))
            elif task.usage.exceeded(task.budget):
                return False
        elif task.reply is None:
            return False
        elif on == "side_effects":
            events += self._settle_unknown(skip="skip" in task.reply.lower())
        elif on == "verification":
            self._guidance = task.reply
        await self._emit(*events, NewEvent(EventType.status, {"status": resume.value}))
        return True

    def _settle_unknown(self, skip: bool) -> list[NewEvent]:
        """The user's answer about side-effecting calls whose outcome is unknown."""
        task = self.task
        assert task is not None
        events = []
        asked = {(c.get("node_id"), c.get("call_id")): c for c in task.in_doubt}
        for n in task.nodes.values():
            if n.status == NodeStatus.done:
                continue
            if n.outcome_unknown and (n.id, None) in asked:
                key = asked[(n.id, None)].get("idempotency_key")
                if skip:
                    events.append(NewEvent(EventType.tool_result, {
                        "node_id": n.id, "idempotency_key": key, "skipped": True,
                        "error": "skipped at the user's request; its outcome is unknown"}))
                    events.append(NewEvent(EventType.node_done, {"node_id": n.id, "output": None, "skipped": True}))
                else:
                    events.append(NewEvent(EventType.node_retry, {
                        "node_id": n.id, "attempt": n.attempts, "delay_s": 0,
                        "error": "outcome unknown; run again on the user's reply",
                        "confirmed_runs": asked[(n.id, None)].get("runs")}))
            for call_id in n.unknown_calls:  # an agent's call: answer it in the transcript
                doubt = asked.get((n.id, call_id))
                if doubt is None:
                    continue  # not asked about: it runs through the ledger like any other
                if skip:
                    events.append(NewEvent(EventType.tool_result, {
                        "node_id": n.id, "call_id": call_id, "skipped": True,
                        "idempotency_key": doubt.get("idempotency_key"),
                        "content": "Skipped at the user's request: its outcome is unknown; assume it may have run."}))
                else:
                    self._confirmed[call_id] = doubt.get("runs")
        return events

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
                    if (not failed and node.id not in running and node.id not in self._in_doubt
                            and state.status != NodeStatus.done
                            and all(nodes[d].status == NodeStatus.done for d in node.deps)):
                        # A call whose outcome the log lacks is issued again: the ledger
                        # returns its outcome, or runs it, or says it is in doubt.
                        run = self._run_agent if node.kind == "agent" else self._run_node
                        running[node.id] = asyncio.create_task(run(node), name=f"node:{node.id}")
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

    def _side_effects(self, node: PlanNode, tool: str | None = None) -> bool:
        """Whether a run in doubt needs the user: the node's override, else the tool's declaration."""
        if node.side_effects is not None:
            return node.side_effects
        name = tool or node.tool
        return name in self.tools and not self.tools.get(name).idempotent

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

    def _key(self, node_id: str) -> str:
        """Idempotency key: stable across re-runs of the same node definition."""
        task = self.task
        assert task is not None
        state = task.nodes[node_id]
        round_ = f".{state.round}" if state.round else ""
        return f"{self.task_id}:{task.iteration}{round_}:{node_id}"

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
                await self._emit(
                    NewEvent(EventType.node_started, {"node_id": node.id, "attempt": attempt, "idempotency_key": key}),
                    NewEvent(EventType.tool_called, {"node_id": node.id, "tool": node.tool, "args": args,
                                                     "attempt": attempt, "idempotency_key": key}),
                )
                call = ToolCall(tool=node.tool or "", args=args, task_id=self.task_id, tenant=task.tenant,
                                node_id=node.id, idempotency_key=key, attempt=attempt, trace=carrier(),
                                epoch=self.epoch, side_effects=self._side_effects(node),
                                confirmed_runs=state.confirmed_runs)
                outcome = await self._call(call, node.timeout_s)
            if outcome.in_doubt:
                return self._doubt(call, outcome)
            base = {"node_id": node.id, "attempt": attempt, "tool": node.tool, "idempotency_key": key,
                    "duration_s": round(outcome.duration_s, 6), **({"replayed": True} if outcome.replayed else {})}
            if outcome.ok:
                await self._emit(NewEvent(EventType.tool_result, {**base, "output": outcome.output}),
                                 NewEvent(EventType.node_done, {"node_id": node.id}))
                return
            result = NewEvent(EventType.tool_result, {**base, "error": outcome.error, "retryable": outcome.retryable})
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
        """One call through the executing side's ledger. A call whose fate is lost on the way
        (timeout, pool gone) is issued again only where the ledger decides: a side-effecting
        one comes back replayed, or run if it never started, or `in_doubt`, never run twice."""
        started = time.monotonic()
        lost = 0
        while True:
            try:
                outcome = await asyncio.wait_for(self.call_tool(call), timeout_s)
            except asyncio.TimeoutError:
                outcome = ToolOutcome.failure(f"timed out after {timeout_s:g} s", retryable=True)
                lost += 1
            except Exception as exc:  # the pool's replica died or is unreachable
                outcome = ToolOutcome.failure(f"tool pool unavailable: {type(exc).__name__}: {exc}"[:2000],
                                              retryable=True)
                lost += 1
            else:
                if outcome.fenced:
                    raise StaleLease(self.task_id, self.epoch)
                if outcome.busy:  # another run of this very call is alive: wait for its outcome
                    await asyncio.sleep(BUSY_POLL_S)
                    continue
                return outcome
            if not call.side_effects:
                return outcome.model_copy(update={"duration_s": time.monotonic() - started})
            if lost >= MAX_LOST_ASKS:  # the ledger cannot be asked: what happened is unknown
                return ToolOutcome(ok=False, in_doubt=True, runs=call.confirmed_runs or 0, error=outcome.error)
            await asyncio.sleep(min(10.0, 0.25 * 2 ** lost))

    # -- verify, publish, cancel ------------------------------------------------------

    async def _verify(self) -> None:
        task = self.task
        assert task is not None
        workspace = self.workspace_for(task.tenant, task.id)
        tests = task.acceptance_tests or DEFAULT_TESTS
        if self.verifier is not None:
            if await self._uses_model() and any(t.check_type == "llm_judge" for t in tests):
                await self._check_budget(TaskStatus.verifying)
            try:
                result = await self.verifier.verify(task, str(workspace))
            except Exception as exc:
                return await self._model_unavailable(exc, TaskStatus.verifying)
        else:
            result = Verification(verdicts=await asyncio.to_thread(run_checks, tests, task, workspace))
        passed = all(v.passed for v in result.verdicts)
        await self._emit(*[self._usage_event(c, "verify") for c in result.calls],
                         NewEvent(EventType.verdicts, {"passed": passed, "round": task.corrections,
                                                       "verdicts": [v.model_dump() for v in result.verdicts]}))
        if passed:
            return await self._status(TaskStatus.publishing)
        failed = [v for v in result.verdicts if not v.passed]
        failing = "; ".join(f"{v.test_id}: {v.reason}" for v in failed)
        if self.planner is None:
            return await self._status(TaskStatus.failed, f"acceptance tests failed: {failing}")
        if task.corrections >= task.max_corrections and self._guidance is None:
            return await self._wait(
                "verification", f"acceptance tests still fail after {task.corrections} corrections: {failing}. "
                "Reply with guidance to try another correction.", TaskStatus.verifying)
        await self._correct(failed)

    async def _correct(self, failed: list[Verdict]) -> None:
        """Ask the planner for a sub-plan covering only what failed, then run it."""
        task = self.task
        assert task is not None and task.plan is not None
        if await self._uses_model():
            await self._check_budget(TaskStatus.verifying)
        outputs = {n.id: n.output for n in task.nodes.values() if n.status == NodeStatus.done}
        ctx = self._context(plan=task.plan, acceptance_tests=task.acceptance_tests or DEFAULT_TESTS,
                            outputs={k: brief(v, 3000) for k, v in outputs.items()}, failed=failed, guidance=self._guidance)
        try:
            proposal = await self.planner.correct(ctx)  # type: ignore[union-attr]
        except PlanningFailed as exc:
            failing = "; ".join(f"{v.test_id}: {v.reason}" for v in failed)
            await self._emit(*[self._usage_event(c, "correct") for c in exc.calls],
                             NewEvent(EventType.status, {"status": TaskStatus.failed.value,
                                                         "reason": f"acceptance tests failed: {failing}; "
                                                                   f"no correction: {exc.reason}"}))
            return
        except Exception as exc:
            return await self._model_unavailable(exc, TaskStatus.verifying)
        self._guidance = None
        await self._emit(
            *[self._usage_event(c, "correct") for c in proposal.calls],
            NewEvent(EventType.plan_corrected, {"round": task.corrections + 1, "failed": [v.test_id for v in failed],
                                                "nodes": [n.model_dump(mode="json") for n in proposal.plan.nodes]}),
            NewEvent(EventType.status, {"status": TaskStatus.executing.value}),
        )

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
        await self._learn()

    async def _learn(self) -> None:
        """Procedural memory: a verified plan becomes a template for similar goals. After
        `done`, so the user never waits for it, and recorded in the templates table only, so
        `task.status: done` stays the log's last event; best effort, a lost lesson loses no work."""
        if self.planner is None:
            return
        try:
            await asyncio.wait_for(self.planner.learn(self.task), LEARN_TIMEOUT_S)
        except Exception:
            log.warning("task %s: could not store its plan as a learned template", self.task_id, exc_info=True)

    # -- agent nodes ----------------------------------------------------------------------

    async def _run_agent(self, node: PlanNode) -> None:
        """A tool-calling loop. Every model turn and every call result is an event, so a
        drive that resumes mid-loop rebuilds the conversation and repeats no finished call."""
        task = self.task
        assert task is not None
        state = task.nodes[node.id]
        if self.llm is None:
            await self._emit(NewEvent(EventType.node_failed, {"node_id": node.id,
                                                              "error": "agent nodes need a model; configure one"}))
            return
        outputs = {n.id: n.output for n in task.nodes.values() if n.status == NodeStatus.done}
        try:
            instructions = resolve_args(node.instructions or "", outputs)
        except ReferenceError_ as exc:
            await self._emit(NewEvent(EventType.node_failed, {"node_id": node.id, "error": str(exc)}))
            return
        if state.status == NodeStatus.pending:
            await self._emit(NewEvent(EventType.node_started, {"node_id": node.id, "attempt": 1,
                                                               "idempotency_key": self._key(node.id)}))
        system = "\n\n".join(filter(None, [AGENT_SYSTEM, pinned_block(task.pinned_requirements)]))
        head = [{"role": "system", "content": system}, {"role": "user", "content": instructions}]
        specs = [{"type": "function", "function": {"name": t, "description": self.tools.get(t).description,
                                                   "parameters": self.tools.get(t).parameters}}
                 for t in node.tools if t in self.tools]
        with span("agent", task_id=self.task_id, node_id=node.id):
            while True:
                pending = _pending_calls(state.transcript)
                if pending:
                    if await self._agent_calls(node, state, pending):
                        return
                    continue
                turns = sum(1 for m in state.transcript if m.get("role") == "assistant")
                if turns >= node.max_steps:
                    await self._emit(NewEvent(EventType.node_failed, {"node_id": node.id, "error":
                        f"agent stopped after max_steps={node.max_steps} model turns without a final answer"}))
                    return
                await self._check_budget(TaskStatus.executing)
                try:
                    reply: LLMReply = await self.llm.chat(ChatRequest(
                        group=node.model_group, messages=[*head, *state.transcript], tools=specs or None,
                        task_id=self.task_id))
                except Exception as exc:
                    await self._model_unavailable(exc, TaskStatus.executing)
                step = NewEvent(EventType.agent_step, {"node_id": node.id, "step": turns + 1,
                                                       "message": reply.assistant_message()})
                if not reply.tool_calls:
                    await self._emit(self._usage_event(reply.usage, f"agent:{node.id}"), step,
                                     NewEvent(EventType.node_done, {"node_id": node.id, "output": {
                                         "answer": reply.content or "", "steps": turns + 1,
                                         "tool_calls": state.tool_calls}}))
                    return
                await self._emit(self._usage_event(reply.usage, f"agent:{node.id}"), step)

    async def _agent_calls(self, node: PlanNode, state: NodeState, pending: list[ToolCallRequest]) -> bool:
        """Run one turn's calls in parallel; returns True when the node has ended (stuck)."""
        earlier = _call_signatures(state.transcript, exclude={c.id for c in pending})
        nudged = any(str(m.get("content", "")).startswith(REPEAT_MARK) for m in state.transcript
                     if m.get("role") == "tool")
        results: list[NewEvent] = []
        to_run: list[tuple[ToolCallRequest, dict[str, Any]]] = []
        for call in pending:
            problem, args = self._agent_call_problem(node, call)
            if problem:
                results.append(_agent_result(node.id, call.id, error=problem))
            elif _signature(call.name, args) in earlier:
                if nudged:
                    await self._emit(*results, NewEvent(EventType.node_failed, {"node_id": node.id, "error":
                        f"agent stuck: it repeated the identical call {call.name}({_short(args)}) after being "
                        "told to change strategy"}))
                    return True
                nudged = True
                results.append(_agent_result(node.id, call.id, content=(
                    f"{REPEAT_MARK} ({call.name} with the same arguments); its result is above. Change strategy: "
                    "use other arguments or another tool, or give your final answer.")))
            else:
                earlier.add(_signature(call.name, args))
                to_run.append((call, args))
        if results:
            await self._emit(*results)
        await asyncio.gather(*[self._agent_call(node, call, args) for call, args in to_run])
        return node.id in self._in_doubt  # the node waits for the user's word on a call

    def _agent_call_problem(self, node: PlanNode, call: ToolCallRequest) -> tuple[str | None, dict[str, Any]]:
        if call.name not in node.tools:
            return f"tool {call.name!r} is not allowed here; allowed: {', '.join(node.tools)}", {}
        try:
            args = call.args()
        except ValueError as exc:
            return f"the arguments are not a JSON object: {exc}", {}
        try:
            self.tools.get(call.name).validate(args)
        except ValueError as exc:
            return str(exc), args
        return None, args

    async def _agent_call(self, node: PlanNode, call: ToolCallRequest, args: dict[str, Any]) -> None:
        task = self.task
        assert task is not None
        key = f"{self._key(node.id)}:{call.id}"
        if call.id not in task.nodes[node.id].unknown_calls:
            await self._emit(NewEvent(EventType.tool_called, {"node_id": node.id, "call_id": call.id,
                                                              "tool": call.name, "args": args, "idempotency_key": key}))
        request = ToolCall(tool=call.name, args=args, task_id=self.task_id, tenant=task.tenant, node_id=node.id,
                           idempotency_key=key, trace=carrier(), epoch=self.epoch,
                           side_effects=self._side_effects(node, call.name), confirmed_runs=self._confirmed.get(call.id))
        outcome = await self._call(request, node.timeout_s)
        if outcome.in_doubt:
            return self._doubt(request, outcome, call_id=call.id)
        result = _agent_result(node.id, call.id, output=outcome.output, error=outcome.error, ok=outcome.ok,
                               duration_s=outcome.duration_s)
        result.payload.update(idempotency_key=key, tool=call.name)
        await self._emit(result)

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


def _raised(task: Task) -> dict[str, Any]:
    """A reply to a budget pause doubles each limit that was reached."""
    b, u = task.budget, task.usage
    raised: dict[str, Any] = {"by": "reply"}
    if u.llm_calls >= b.max_llm_calls:
        raised["max_llm_calls"] = max(b.max_llm_calls * 2, u.llm_calls + 1)
    if u.cost_usd >= b.max_cost_usd:
        raised["max_cost_usd"] = max(b.max_cost_usd * 2, round(u.cost_usd * 1.5, 6), 0.01)
    return raised


def _pending_calls(transcript: list[dict[str, Any]]) -> list[ToolCallRequest]:
    """Calls of the last model turn that have no result yet."""
    last = max((i for i, m in enumerate(transcript) if m.get("role") == "assistant"), default=None)
    if last is None:
        return []
    answered = {m.get("tool_call_id") for m in transcript[last + 1:] if m.get("role") == "tool"}
    return [ToolCallRequest(id=c["id"], name=c["function"]["name"], arguments=c["function"].get("arguments") or "{}")
            for c in transcript[last].get("tool_calls") or [] if c["id"] not in answered]


def _signature(name: str, args: dict[str, Any]) -> str:
    return name + json.dumps(args, sort_keys=True, separators=(",", ":"), default=str)


def _call_signatures(transcript: list[dict[str, Any]], exclude: set[str]) -> set[str]:
    sigs = set()
    for m in transcript:
        for c in m.get("tool_calls") or []:
            if c["id"] in exclude:
                continue
            try:
                args = json.loads(c["function"].get("arguments") or "{}")
            except json.JSONDecodeError:
                continue
            if isinstance(args, dict):
                sigs.add(_signature(c["function"]["name"], args))
    return sigs


def _short(args: dict[str, Any]) -> str:
    text = json.dumps(args, ensure_ascii=False, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def _agent_result(node_id: str, call_id: str, *, output: Any = None, error: str | None = None, ok: bool = False,
                  content: str | None = None, duration_s: float = 0.0) -> NewEvent:
    """A call's result, with the text the model will see (cut to size)."""
    payload: dict[str, Any] = {"node_id": node_id, "call_id": call_id, "duration_s": round(duration_s, 6)}
    if content is not None:
        payload["skipped"] = True
    elif ok:
        payload["output"] = output
        text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False, default=str)
        content = text if len(text) <= TOOL_RESULT_CHARS else text[:TOOL_RESULT_CHARS] + " ... (cut)"
    else:
        payload["error"] = error
        content = f"error: {error}"
    payload["content"] = content
    return NewEvent(EventType.tool_result, payload)

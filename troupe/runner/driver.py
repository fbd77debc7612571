"""Drives one task from its log to an end: plan -> execute DAG -> verify -> correct -> publish.

The runner holds no state of its own worth keeping: it replays the log, and every step
it takes is appended (with its lease epoch) before it is acted on. If the process dies,
the next runner replays the same log and carries on; a node whose result is in the log
is never run again, a call in flight is issued again under the same idempotency key.
"""

from __future__ import annotations

import asyncio
from typing import Any

from memory.store import NewEvent, StaleLease
from troupe.logs import task_context
from troupe.models import EventType, NodeStatus, Plan, Task, TaskStatus
from troupe.planner import PlanningFailed
from troupe.plans import PlanError, validate_plan
from troupe.runner.agents import AgentLoop
from troupe.runner.base import DEFAULT_TESTS, Stop, log
from troupe.runner.dag import DagExecutor
from troupe.runner.review import Review
from troupe.tool_calls import ToolCall
from troupe.tracing import carrier, span
from troupe.transitions import next_iteration

__all__ = ["TaskRunner"]


class TaskRunner(DagExecutor, AgentLoop, Review):
    async def drive(self) -> str:
        """Run the task as far as it can go; returns the status it stopped in."""
        self.task, self._first_payload = await self.store.load_submitted(self.task_id)
        if self.task is None:
            return "missing"
        self._snapshot_seq = self.task.last_seq
        if self.task.status.terminal:  # e.g. dispatched again after the last drive failed to start its follow-up
            await self._start_queued_iteration()
            return self.task.status.value
        with span("task", task_id=self.task_id, tenant=self.task.tenant, epoch=self.epoch), \
                task_context(self.task_id, self.task.tenant):
            phases: asyncio.Future | None = None
            superseded = False

            def lease_lost() -> None:  # a newer dispatch holds the task: stop our turns and calls now
                nonlocal superseded
                superseded = True
                if phases is not None:
                    phases.cancel()

            # The heartbeat the Supervisor's watchdog reads; it also tells us of a newer lease.
            self.store.hold(self.task_id, self.epoch, on_lost=lease_lost)
            try:
                self._unsent.append(NewEvent(EventType.dispatched, {"epoch": self.epoch}))
                phases = asyncio.ensure_future(self._phases())
                try:
                    await phases
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if superseded and not (current and current.cancelling()):
                        raise StaleLease(self.task_id, self.epoch) from None
                    raise
            except StaleLease:
                log.info("task %s: lease %s superseded; leaving it to the newer driver", self.task_id, self.epoch)
                return "superseded"
            except asyncio.CancelledError:
                await self._on_cancelled()
                raise
            except Stop:
                pass
            finally:
                self.store.release(self.task_id, self.epoch)
            if not superseded:
                await self._start_queued_iteration()
            if self._unsent and not superseded:
                await self._emit()  # a drive that appended nothing else still records its dispatch
        return self.task.status.value

    def may_hold_sessions(self) -> bool:
        """Whether the task may have called a tool that keeps state for it elsewhere (a
        browser session): its plan names one, or an agent node may call one."""
        plan = self.task.plan if self.task is not None else None
        if plan is None:
            return False
        names = {t for n in plan.nodes for t in ([n.tool] if n.tool else []) + list(n.tools)}
        return any(name in self.tools and self.tools.get(name).holds_session for name in names)

    async def _start_queued_iteration(self) -> None:
        """The iteration has ended (done or failed): messages sent while it ran start the next
        one, planned afresh by the next drive (iteration.started puts the task back on the
        dispatch queue).

        No read of the log is needed for a message that came late: one committed before our
        last append was folded by that append (`_emit` reads the gap below its own seq), and
        one committed after it saw the iteration ended, so its sender starts the next one
        (`troupe.transitions._start_if_ended`)."""
        task = self.task
        assert task is not None
        if task.status in (TaskStatus.done, TaskStatus.failed) and task.queued_messages:
            await self._emit(next_iteration(task))

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
            if task.interrupts and task.status != TaskStatus.executing:  # executing: the DAG takes them
                await self._interrupt()
            elif task.plan is None:
                await self._plan()
            elif task.status in (TaskStatus.queued, TaskStatus.planning, TaskStatus.executing):
                await self._execute()
                if task.status == TaskStatus.executing:
                    await self._verify()
            elif task.status == TaskStatus.verifying:
                await self._verify()
            elif task.status == TaskStatus.publishing:
                await self._publish()

    async def _plan(self) -> None:
        task = self.task
        assert task is not None
        submitted = self._first_payload
        given = submitted.get("plan") is not None and task.iteration == 1
        ingest = bool(task.attachments) and not task.attachments_ingested
        if task.status != TaskStatus.planning:
            planning = NewEvent(EventType.status, {"status": TaskStatus.planning.value})
            if given and not ingest:
                self._unsent.append(planning)  # recorded with the plan: nothing runs before it
            else:
                await self._emit(planning)
        if ingest:
            await self._ingest_attachments()
        if given:
            try:
                plan = Plan.model_validate(submitted["plan"])
                validate_plan(plan, {n: self.tools.get(n) for n in self.tools.names()})
            except (PlanError, ValueError) as exc:
                return await self._status(TaskStatus.failed, f"invalid plan: {exc}")
            pins = [NewEvent(EventType.requirements_pinned, {"requirements": task.requirements})] \
                if task.requirements else []
            tests = task.acceptance_tests or DEFAULT_TESTS
            # One append takes a submitted plan from queued to executing: nothing is acted on in between.
            return await self._emit(*pins, NewEvent(EventType.plan_set, {
                "plan": plan.model_dump(mode="json"), "source": "submitted",
                "acceptance_tests": [t.model_dump(mode="json") for t in tests]}),
                NewEvent(EventType.status, {"status": TaskStatus.executing.value}))
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
            NewEvent(EventType.status, {"status": TaskStatus.executing.value}),  # as a submitted plan: one append
        )

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
        elif task.reply is None and on != "model":
            return False  # a task waiting on the model is dispatched again once the model answers a probe
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
                    events.append(NewEvent(EventType.node_retry, {
                        "node_id": n.id, "call_id": call_id, "confirmed_runs": doubt.get("runs"),
                        "error": "outcome unknown; run again on the user's reply"}))
        return events

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

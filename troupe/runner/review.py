"""After execution: verify against the acceptance tests, correct what failed with a
sub-plan, publish the artifacts, and learn the verified plan as a template."""

from __future__ import annotations

import asyncio

from memory.store import NewEvent
from troupe.checks import MODEL_CHECKS, run_checks
from troupe.models import EventType, NodeStatus, Task, TaskStatus, Verdict
from troupe.planner import PlanningFailed
from troupe.publish import collect_artifacts, write_manifest
from troupe.reducer import brief
from troupe.routing import corrected_nodes, route_correction
from troupe.runner.base import DEFAULT_TESTS, RunnerBase, log
from troupe.verifier import Verification

__all__ = ["Review", "approval_request"]

LEARN_TIMEOUT_S = 120.0
SERVICE_CHECKS = MODEL_CHECKS | {"citations_supported"}
"""Checks that need the Verifier deployment (a model, or its embedding model); the others run here."""


class Review(RunnerBase):
    async def _verify(self) -> None:
        """Run the acceptance tests. Deterministic checks run here and their verdicts share one
        append with `verifying` and `publishing`; a model or embedding check goes to the
        Verifier deployment, after `verifying` is recorded (it may take a while)."""
        task = self.task
        assert task is not None
        workspace = self.workspace_for(task.tenant, task.id)
        tests = task.acceptance_tests or DEFAULT_TESTS
        events = [] if task.status == TaskStatus.verifying else [
            NewEvent(EventType.status, {"status": TaskStatus.verifying.value})]
        if self.verifier is not None and any(t.check_type in SERVICE_CHECKS for t in tests):
            await self._emit(*events)
            events = []
            if await self._uses_model() and any(t.check_type == "llm_judge" for t in tests):
                await self._check_budget(TaskStatus.verifying)
            try:
                result = await self.verifier.verify(task, str(workspace))
            except Exception as exc:
                return await self._model_unavailable(exc, TaskStatus.verifying)
        else:
            result = Verification(verdicts=await asyncio.to_thread(run_checks, tests, task, workspace))
        passed = all(v.passed for v in result.verdicts)
        events += [*[self._usage_event(c, "verify") for c in result.calls],
                   NewEvent(EventType.verdicts, {"passed": passed, "round": task.corrections,
                                                 "verdicts": [v.model_dump() for v in result.verdicts]})]
        if passed:
            return await self._emit(*events, NewEvent(EventType.status, {"status": TaskStatus.publishing.value}))
        failed = [v for v in result.verdicts if not v.passed]
        if all(v.awaiting == "approval" for v in failed):  # everything else passed: the user decides
            return await self._emit(*events, approval_request(task, result.verdicts))
        await self._emit(*events)
        failed = [v for v in failed if v.awaiting is None]  # approval is asked for once the rest passes
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
        tests = task.acceptance_tests or DEFAULT_TESTS
        routed = route_correction(task.plan, failed, tests) if self._guidance is None else None
        if routed:  # each failure goes back to the node that owns its file: no model needed to say where
            round_ = task.corrections + 1
            return await self._emit(
                NewEvent(EventType.plan_corrected, {
                    "round": round_, "failed": [v.test_id for v in failed], "source": "routed",
                    "routed": [{"node_id": n, **f} for n, fs in routed.items() for f in fs],
                    "nodes": [n.model_dump(mode="json") for n in corrected_nodes(task.plan, routed, round_)]}),
                NewEvent(EventType.status, {"status": TaskStatus.executing.value}))
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

    async def _interrupt(self) -> None:
        """Messages sent with on_running=interrupt, at a safe point (no call in flight): each
        becomes a pinned requirement, and the planner revises the plan for them: new nodes,
        or redefined ones that run again; finished work is kept. The task goes on in the same
        iteration. Without a plan yet, pinning them is enough: the planner will see them."""
        task = self.task
        assert task is not None
        messages = list(task.interrupts)
        taken = {"messages": messages, "status": task.status.value}
        if task.plan is None or self.planner is None or not await self._uses_model():
            why = "pinned before planning" if task.plan is None else \
                "pinned; no planner model, so the plan goes on unchanged"
            return await self._emit(NewEvent(EventType.interrupted, {**taken, "replanned": False, "reason": why}))
        await self._check_budget(task.status)
        outputs = {n.id: n.output for n in task.nodes.values() if n.status == NodeStatus.done}
        ctx = self._context(plan=task.plan, acceptance_tests=task.acceptance_tests or DEFAULT_TESTS,
                            outputs={k: brief(v, 3000) for k, v in outputs.items()},
                            pinned_requirements=list(dict.fromkeys([*task.pinned_requirements, *messages])),
                            interrupt="\n\n".join(messages))
        try:
            proposal = await self.planner.correct(ctx)  # type: ignore[union-attr]
        except PlanningFailed as exc:  # the plan goes on as it was; the message still binds every later call
            return await self._emit(*[self._usage_event(c, "interrupt") for c in exc.calls], NewEvent(
                EventType.interrupted, {**taken, "replanned": False, "reason": f"no revised plan: {exc.reason}"}))
        except Exception as exc:  # the interrupt stays pending: taken once the model answers
            return await self._model_unavailable(exc, task.status)
        resume = [] if task.status == TaskStatus.executing else [
            NewEvent(EventType.status, {"status": TaskStatus.executing.value})]
        await self._emit(
            *[self._usage_event(c, "interrupt") for c in proposal.calls],
            NewEvent(EventType.interrupted, {**taken, "replanned": True, "nodes": [n.id for n in proposal.plan.nodes]}),
            NewEvent(EventType.plan_corrected, {"round": task.corrections + 1, "failed": [], "interrupt": True,
                                                "nodes": [n.model_dump(mode="json") for n in proposal.plan.nodes]}),
            *resume)

    async def _publish(self) -> None:
        task = self.task
        assert task is not None
        workspace = self.workspace_for(task.tenant, task.id)
        artifacts = await asyncio.to_thread(collect_artifacts, task.id, workspace)
        manifest = await asyncio.to_thread(write_manifest, task.id, workspace, artifacts)
        known = {(a.name, a.sha256) for a in task.artifacts}
        new = [a for a in [*artifacts, manifest] if (a.name, a.sha256) not in known]
        await self._emit(*[NewEvent(EventType.artifact, {"artifact": a.model_dump()}) for a in new],
                         NewEvent(EventType.status, {"status": TaskStatus.done.value}))
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


def approval_request(task: Task, verdicts: list[Verdict]) -> NewEvent:
    """Pause for the user's approval, showing what they approve: every check's verdict (test
    results, review scores) and what the task has cost so far."""
    u = task.usage
    cost = {"cost_usd": round(u.cost_usd, 6), "llm_calls": u.llm_calls, "tokens_in": u.tokens_in,
            "tokens_out": u.tokens_out}
    checks = "\n".join(f"- {v.test_id}: {'passed' if v.passed else 'pending'}: {v.reason}"
                       for v in verdicts if v.awaiting is None)
    reason = (f"ready for your approval (after {task.corrections} correction(s)):\n{checks}\n"
              f"cost so far: ${u.cost_usd:.4f} in {u.llm_calls} model calls ({u.tokens_in} tokens in, "
              f"{u.tokens_out} out).\nReply 'approve' to publish, or say what to change to reject it.")
    return NewEvent(EventType.status, {
        "status": TaskStatus.waiting_for_input.value, "waiting_on": "approval", "resume": TaskStatus.verifying.value,
        "reason": reason, "approval": {"round": task.corrections, "cost": cost,
                                       "verdicts": [v.model_dump() for v in verdicts if v.awaiting is None]}})

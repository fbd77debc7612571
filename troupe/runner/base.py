"""The runner's core: the one owner of a task's state while it is driven, and the helpers
every phase uses (appending and folding events, pausing for the user, budgets, keys)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from memory.live import Watch
from memory.store import SNAPSHOT_EVERY, EventStore, NewEvent
from memory.working_set import WorkingSet
from tools.registry import ToolRegistry
from troupe import metrics
from troupe.llm import LLMClient, LLMRequestError, LLMUnavailable, LLMUsage
from troupe.models import AcceptanceTest, EventType, PlanNode, Task, TaskStatus
from troupe.planner import PlanningContext, PlanProposal
from troupe.reducer import apply
from troupe.tool_calls import ToolCall, ToolOutcome
from troupe.tracing import task_trace_id
from troupe.verifier import Verification

__all__ = ["CallTool", "DEFAULT_TESTS", "PlannerPort", "RunnerBase", "Stop", "VerifierPort"]

log = logging.getLogger("troupe.runner")

CallTool = Callable[[ToolCall], Awaitable[ToolOutcome]]

CATCH_UP_FALLBACK_S = 30.0
"""How often a running task's log is read for others' events while the live bus is up anyway."""
DEFAULT_TESTS = [AcceptanceTest(id="all_nodes_done", description="every node finished", check_type="all_nodes_done")]


class Stop(Exception):
    """Ends the drive early: cancellation requested, or a pause for the user."""


class PlannerPort(Protocol):
    """The Planner deployment as the runner sees it (a handle adapter, or a local object)."""

    async def plan(self, ctx: PlanningContext) -> PlanProposal: ...
    async def correct(self, ctx: PlanningContext) -> PlanProposal: ...
    async def learn(self, task: Task) -> str | None: ...


class VerifierPort(Protocol):
    async def verify(self, task: Task, workspace: str) -> Verification: ...


class RunnerBase:
    """State and helpers shared by the phases (dag, agents, review, driver)."""

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
        working_set: WorkingSet | None = None,
    ):
        self.planner = planner
        self.verifier = verifier
        self.llm = llm
        self.working_set = working_set or WorkingSet(None)
        """Agent nodes' context: hot memory, else (None, or Redis down) the log's fold."""
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
        self._unsent: list[NewEvent] = []
        self._snapshot_seq = 0
        self._caught_up_at = time.monotonic()
        """Events that change no state the runner reads (e.g. `task.dispatched`): they ride on
        the next append instead of costing a commit of their own."""
        self._stop = asyncio.Event()
        self._first_payload: dict[str, Any] = {}
        self._model_configured: bool | None = None
        self._windows: dict[str, int] = {}
        """Context window of each model group, asked once per drive (troupe/context.py)."""
        self._in_doubt: dict[str, list[dict[str, Any]]] = {}
        """Calls of this drive the ledger called in doubt, by node: asked about once nothing runs."""

    async def _emit(self, *new: NewEvent) -> None:
        """Append events under our lease, then fold them (and any foreign ones) into state.

        The append runs outside the lock, so parallel nodes' appends share one group commit.
        The lock makes this runner the one owner of `self.task`: every fold happens under
        it, in seq order; events below ours that are not folded yet (a sibling's append that
        committed with or before ours, or a foreign event) are read from the log first, and
        `apply` skips whatever it has seen."""
        new = (*self._unsent, *new)
        self._unsent = []
        if not new:
            return
        written = await self.store.append(self.task_id, new, epoch=self.epoch, trace_id=self.trace_id)
        async with self._lock:
            assert self.task is not None
            if written[0].seq > self.task.last_seq + 1:
                await self._fold_from_log(before=written[0].seq)
            for e in written:
                apply(self.task, e)
            if self.task.last_seq - self._snapshot_seq >= SNAPSHOT_EVERY:
                self.store.snapshot_soon(self.task)  # the next drive, and readers, start from here
                self._snapshot_seq = self.task.last_seq
        metrics.task_events(self.store, self.task, written)
        if self.task.cancel_requested:
            self._stop.set()

    async def _catch_up(self) -> None:
        """Fold in events others appended (cancel requests, messages) since we last looked."""
        self._caught_up_at = time.monotonic()
        async with self._lock:
            await self._fold_from_log()

    async def _maybe_catch_up(self, watch: Watch | None) -> None:
        """Catch up when the live bus announced events we lack, or, when it cannot be trusted
        (absent, down), every `poll_s`; else only every CATCH_UP_FALLBACK_S. A thousand running
        tasks then cost no reads while nothing happens to them."""
        assert self.task is not None
        bus = self.store.bus
        if (watch is None or bus is None or not bus.healthy or watch.head > self.task.last_seq
                or time.monotonic() - self._caught_up_at >= CATCH_UP_FALLBACK_S):
            await self._catch_up()

    def _watching(self) -> contextlib.AbstractContextManager[Watch | None]:
        return self.store.bus.watching(self.task_id) if self.store.bus is not None else contextlib.nullcontext()

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
            raise Stop

    async def _model_unavailable(self, exc: Exception, resume: TaskStatus) -> None:
        why = exc.message if isinstance(exc, LLMUnavailable | LLMRequestError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, LLMRequestError):
            await self._status(TaskStatus.failed, f"the model refused the request: {why}")
        elif isinstance(exc, LLMUnavailable) and not exc.retryable:
            await self._status(TaskStatus.failed, f"no model can be used: {why}")
        else:
            await self._wait("model", f"no model answered: {why}. Nothing is lost: the task goes on by itself once the "
                                       "model answers again, or reply 'retry' to try now.",
                             resume)
        raise Stop

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
        fields: dict[str, Any] = dict(
            task_id=task.id, tenant=task.tenant, goal=task.goal, requirements=task.requirements,
            pinned_requirements=task.pinned_requirements, history=task.history,
            artifacts=[a.name for a in task.artifacts], attachments=task.attachments,
            project=str(task.metadata["project"]) if task.metadata.get("project") else None)
        return PlanningContext(**{**fields, **extra})

    def _key(self, node_id: str) -> str:
        """Idempotency key: stable across re-runs of the same node definition."""
        task = self.task
        assert task is not None
        state = task.nodes[node_id]
        round_ = f".{state.round}" if state.round else ""
        return f"{self.task_id}:{task.iteration}{round_}:{node_id}"

    def _side_effects(self, node: PlanNode, tool: str | None = None) -> bool:
        """Whether a run in doubt needs the user: the node's override, else the tool's declaration."""
        if node.side_effects is not None:
            return node.side_effects
        name = tool or node.tool
        return name in self.tools and not self.tools.get(name).idempotent

    async def _finish_cancelled(self) -> None:
        await self._status(TaskStatus.cancelled, "cancelled at the user's request")

"""The task-state reducer: `state = reduce(events)`, the only way state is derived.

Resume after any crash is a replay of the log through this function, so it must be pure
and total: an event it does not know, or one arriving after the task ended, changes
nothing rather than raising.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from troupe.models import (
    AcceptanceTest,
    Approval,
    Artifact,
    Budget,
    Event,
    EventType,
    NodeState,
    NodeStatus,
    Plan,
    PlanNode,
    Priority,
    Task,
    TaskStatus,
    Verdict,
)

__all__ = ["SNAPSHOT_VERSION", "apply", "brief", "reduce", "snapshot_of", "task_from_snapshot"]

SNAPSHOT_VERSION = 1
"""Bump when `apply` changes what it derives: older snapshots are then ignored (a full replay)."""


def reduce(events: Iterable[Event], initial: Task | None = None) -> Task | None:
    """Fold events into a Task; `initial` (not modified) lets a replay continue a prefix."""
    task = initial.model_copy(deep=True) if initial is not None else None
    for event in events:
        task = apply(task, event)
    return task


def snapshot_of(task: Task) -> dict:
    """The state to store as a snapshot (JSON), valid for this reducer only."""
    return {"v": SNAPSHOT_VERSION, "task": task.model_dump(mode="json")}


def task_from_snapshot(body: dict | None) -> Task | None:
    """The state a snapshot holds, or None when there is none or another reducer wrote it."""
    if not body or body.get("v") != SNAPSHOT_VERSION:
        return None
    try:
        return Task.model_validate(body["task"])
    except ValueError:
        return None


def apply(task: Task | None, event: Event) -> Task | None:
    """Apply one event to `task` in place and return it (a new Task for `task.submitted`)."""
    if event.type == EventType.submitted:
        if task is not None:
            return task
        p = event.payload
        task = Task(
            id=event.task_id,
            tenant=p.get("tenant") or "default",
            goal=p.get("goal", ""),
            priority=Priority(p.get("priority", "normal")),
            requirements=list(p.get("requirements", [])),
            metadata=dict(p.get("metadata", {})),
            acceptance_tests=[AcceptanceTest.model_validate(t) for t in p.get("acceptance_tests", [])],
            budget=Budget.model_validate(p.get("budget") or {}),
            max_corrections=p.get("max_corrections", 3),
            attachments=list(p.get("attachments", [])),
            created_at=event.ts,
        )
    if task is None:
        return None
    if event.seq <= task.last_seq:
        return task  # already folded in: a second look at the log must not double a transcript or usage
    task.last_seq = event.seq
    task.updated_at = event.ts
    _HANDLERS.get(event.type, _ignore)(task, event)
    return task


def _ignore(task: Task, event: Event) -> None:
    return None


def _status(task: Task, event: Event) -> None:
    if task.status.terminal:
        return
    task.status = TaskStatus(event.payload["status"])
    task.reason = event.payload.get("reason")
    task.reply = None
    task.waiting_on = event.payload.get("waiting_on")
    resume = event.payload.get("resume")
    task.resume_status = TaskStatus(resume) if resume else None
    task.in_doubt = list(event.payload.get("calls", []))


def _cancel_requested(task: Task, event: Event) -> None:
    if not task.status.terminal:
        task.cancel_requested = True


def _message(task: Task, event: Event) -> None:
    text = event.payload.get("text", "")
    task.messages.append(text)
    on_running = event.payload.get("on_running")
    if task.status == TaskStatus.waiting_for_input:
        task.reply = text
        if task.waiting_on == "approval":  # kept past the resume: the human_approval check reads it
            task.approval = Approval(round=task.corrections, reply=text)
    elif on_running is None:
        return  # a follow-up to an ended task: its iteration.started comes in the same append
    elif task.status in (TaskStatus.done, TaskStatus.failed):
        # Sent while the task ran, recorded just after its iteration ended: the next one starts with it.
        task.queued_messages.append(text)
    elif not task.status.terminal:
        (task.interrupts if on_running == "interrupt" else task.queued_messages).append(text)


def _interrupted(task: Task, event: Event) -> None:
    """The runner took the pending interrupts: each is a pinned requirement from now on."""
    messages = event.payload.get("messages", [])
    task.pinned_requirements = list(dict.fromkeys([*task.pinned_requirements, *messages]))
    task.interrupts = task.interrupts[len(messages):]  # the runner takes the oldest first


def _plan_set(task: Task, event: Event) -> None:
    task.plan = Plan.model_validate(event.payload["plan"])
    if "acceptance_tests" in event.payload:
        task.acceptance_tests = [AcceptanceTest.model_validate(t) for t in event.payload["acceptance_tests"]]
    task.nodes = {n.id: NodeState(id=n.id) for n in task.plan.nodes}
    task.plan_source = event.payload.get("source", "submitted")


def _plan_corrected(task: Task, event: Event) -> None:
    """A corrective sub-plan: new nodes are added, nodes with an existing id are redefined
    and run again (a new round, so a new idempotency key)."""
    if task.plan is None:
        return
    task.corrections = event.payload.get("round", task.corrections + 1)
    nodes = {n.id: n for n in task.plan.nodes}
    redefined = set()
    for raw in event.payload.get("nodes", []):
        node = PlanNode.model_validate(raw)
        nodes[node.id] = node
        task.nodes[node.id] = NodeState(id=node.id, round=task.corrections)
        redefined.add(node.id)
    task.plan = Plan(nodes=list(nodes.values()))
    # What was computed from a redefined node's old output is stale: its transitive
    # dependents run again too (a new round, so a new idempotency key).
    for node_id in _dependents(task.plan, redefined) - redefined:
        task.nodes[node_id] = NodeState(id=node_id, round=task.corrections)
    task.verdicts = []


def _dependents(plan: Plan, roots: set[str]) -> set[str]:
    """Every node downstream of `roots`."""
    below: dict[str, list[str]] = {}
    for n in plan.nodes:
        for d in n.deps:
            below.setdefault(d, []).append(n.id)
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        for child in below.get(stack.pop(), []):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def _llm_called(task: Task, event: Event) -> None:
    p = event.payload
    task.usage.llm_calls += 1
    task.usage.tokens_in += int(p.get("tokens_in", 0))
    task.usage.tokens_out += int(p.get("tokens_out", 0))
    task.usage.cost_usd += float(p.get("cost_usd", 0.0))


def _requirements_pinned(task: Task, event: Event) -> None:
    for r in event.payload.get("requirements", []):
        if r not in task.pinned_requirements:
            task.pinned_requirements.append(r)


def _budget_raised(task: Task, event: Event) -> None:
    task.budget = task.budget.model_copy(update={k: v for k, v in event.payload.items()
                                                 if k in ("max_cost_usd", "max_llm_calls")})


def _agent_step(task: Task, event: Event) -> None:
    if node := _node(task, event):
        node.transcript.append(event.payload["message"])


def _context_compacted(task: Task, event: Event) -> None:
    if node := _node(task, event):
        node.compacted = event.payload["upto"]
        node.digest = event.payload["digest"]


def _iteration_started(task: Task, event: Event) -> None:
    """A follow-up on an ended task: keep what was done as context, plan again."""
    if not task.status.terminal or task.status == TaskStatus.cancelled:
        return
    task.history.append({
        "iteration": task.iteration,
        "requirement": task.requirements[-1] if task.iteration > 1 and task.requirements else task.goal,
        "status": task.status.value,
        "reason": task.reason,
        "plan": task.plan.model_dump(mode="json") if task.plan else None,
        "outputs": {n.id: brief(n.output) for n in task.nodes.values() if n.status == NodeStatus.done},
        "verdicts": [v.model_dump() for v in task.verdicts],
    })
    text = event.payload.get("text", "")
    task.iteration = event.payload.get("iteration", task.iteration + 1)
    task.requirements.append(text)
    task.status = TaskStatus.queued
    task.reason = task.reply = task.waiting_on = task.resume_status = task.approval = None
    task.plan = None
    task.plan_source = None
    task.nodes = {}
    task.verdicts = []
    task.corrections = 0
    task.cancel_requested = False
    task.queued_messages = []
    task.interrupts = []


def brief(value: object, limit: int = 2000) -> object:
    """A node output as carried into a model's context (later iterations, corrections), cut to size."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return value if len(text) <= limit else text[:limit] + " ..."


def _attachments_ingested(task: Task, event: Event) -> None:
    task.attachments_ingested = True


def _node(task: Task, event: Event) -> NodeState | None:
    return task.nodes.get(event.payload.get("node_id", ""))


def _node_started(task: Task, event: Event) -> None:
    if node := _node(task, event):
        node.status = NodeStatus.running
        node.attempts = event.payload.get("attempt", node.attempts + 1)


def _tool_called(task: Task, event: Event) -> None:
    if node := _node(task, event):
        node.tool_calls += 1
        if "call_id" in event.payload:  # an agent's call: the node itself goes on
            node.unknown_calls.append(event.payload["call_id"])
        else:
            node.outcome_unknown = True


def _tool_result(task: Task, event: Event) -> None:
    if node := _node(task, event):
        if "call_id" in event.payload:
            call_id = event.payload["call_id"]
            node.unknown_calls = [c for c in node.unknown_calls if c != call_id]
            node.confirmed_calls.pop(call_id, None)
            node.transcript.append({"role": "tool", "tool_call_id": call_id,
                                    "content": event.payload.get("content", "")})
            return
        node.outcome_unknown = False
        node.confirmed_runs = None
        if "output" in event.payload:
            node.output = event.payload["output"]
            node.error = None
        else:
            node.error = event.payload.get("error")


def _node_retry(task: Task, event: Event) -> None:
    if node := _node(task, event):
        if "call_id" in event.payload:  # an agent's call in doubt the user said to run again
            node.confirmed_calls[event.payload["call_id"]] = event.payload.get("confirmed_runs")
            return
        node.status = NodeStatus.retrying
        node.error = event.payload.get("error")
        node.outcome_unknown = False
        node.confirmed_runs = event.payload.get("confirmed_runs")


def _node_done(task: Task, event: Event) -> None:
    if node := _node(task, event):
        node.status = NodeStatus.done
        node.outcome_unknown = False
        if "output" in event.payload:
            node.output = event.payload["output"]


def _node_failed(task: Task, event: Event) -> None:
    if node := _node(task, event):
        node.status = NodeStatus.failed
        node.error = event.payload.get("error")
        node.outcome_unknown = False


def _verdicts(task: Task, event: Event) -> None:
    task.verdicts = [Verdict.model_validate(v) for v in event.payload.get("verdicts", [])]


def _artifact(task: Task, event: Event) -> None:
    artifact = Artifact.model_validate(event.payload["artifact"])
    task.artifacts = [a for a in task.artifacts if a.name != artifact.name] + [artifact]


_HANDLERS = {
    EventType.status: _status,
    EventType.cancel_requested: _cancel_requested,
    EventType.message: _message,
    EventType.plan_set: _plan_set,
    EventType.node_started: _node_started,
    EventType.tool_called: _tool_called,
    EventType.tool_result: _tool_result,
    EventType.node_retry: _node_retry,
    EventType.node_done: _node_done,
    EventType.node_failed: _node_failed,
    EventType.verdicts: _verdicts,
    EventType.artifact: _artifact,
    EventType.plan_corrected: _plan_corrected,
    EventType.llm_called: _llm_called,
    EventType.requirements_pinned: _requirements_pinned,
    EventType.budget_raised: _budget_raised,
    EventType.agent_step: _agent_step,
    EventType.iteration_started: _iteration_started,
    EventType.interrupted: _interrupted,
    EventType.context_compacted: _context_compacted,
    EventType.attachments_ingested: _attachments_ingested,
}

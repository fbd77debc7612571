"""The task-state reducer: `state = reduce(events)`, the only way state is derived.

Resume after any crash is a replay of the log through this function, so it must be pure
and total: an event it does not know, or one arriving after the task ended, changes
nothing rather than raising.
"""

from __future__ import annotations

from collections.abc import Iterable

from troupe.models import (
    AcceptanceTest,
    Artifact,
    Event,
    EventType,
    NodeState,
    NodeStatus,
    Plan,
    Priority,
    Task,
    TaskStatus,
    Verdict,
)

__all__ = ["apply", "reduce"]


def reduce(events: Iterable[Event], initial: Task | None = None) -> Task | None:
    """Fold events into a Task; `initial` (not modified) lets a replay continue a prefix."""
    task = initial.model_copy(deep=True) if initial is not None else None
    for event in events:
        task = apply(task, event)
    return task


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
            created_at=event.ts,
        )
    if task is None:
        return None
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


def _cancel_requested(task: Task, event: Event) -> None:
    if not task.status.terminal:
        task.cancel_requested = True


def _message(task: Task, event: Event) -> None:
    task.messages.append(event.payload.get("text", ""))
    if task.status == TaskStatus.waiting_for_input:
        task.reply = event.payload.get("text", "")


def _plan_set(task: Task, event: Event) -> None:
    task.plan = Plan.model_validate(event.payload["plan"])
    if "acceptance_tests" in event.payload:
        task.acceptance_tests = [AcceptanceTest.model_validate(t) for t in event.payload["acceptance_tests"]]
    task.nodes = {n.id: NodeState(id=n.id) for n in task.plan.nodes}


def _node(task: Task, event: Event) -> NodeState | None:
    return task.nodes.get(event.payload.get("node_id", ""))


def _node_started(task: Task, event: Event) -> None:
    if node := _node(task, event):
        node.status = NodeStatus.running
        node.attempts = event.payload.get("attempt", node.attempts + 1)


def _tool_called(task: Task, event: Event) -> None:
    if node := _node(task, event):
        node.tool_calls += 1
        node.outcome_unknown = True


def _tool_result(task: Task, event: Event) -> None:
    if node := _node(task, event):
        node.outcome_unknown = False
        if "output" in event.payload:
            node.output = event.payload["output"]
            node.error = None
        else:
            node.error = event.payload.get("error")


def _node_retry(task: Task, event: Event) -> None:
    if node := _node(task, event):
        node.status = NodeStatus.retrying
        node.error = event.payload.get("error")
        node.outcome_unknown = False


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
}

"""What the user does to a task between drives (a reply, a follow-up, a budget raise), each
as one append that also moves the task between waiting and the dispatch queue in the same
transaction, so that no path leaves a task `dispatched` with no driver or waiting forever
on a reply already in its log. Routes call these and map the typed errors to problems.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from memory.store import EventStore, NewEvent
from troupe.models import Budget, EventType, Task, TaskStatus
from troupe.reducer import reduce

__all__ = ["BudgetNotRaised", "BudgetStillExceeded", "MessagePosted", "OnRunning", "TaskCancelled", "TaskEnded",
           "TaskRunning", "TransitionError", "next_iteration", "post_message", "raise_budget"]

OnRunning = Literal["enqueue", "interrupt", "reject"]


class TransitionError(Exception):
    """A request the task's state does not allow; `status` is the HTTP status that says so."""

    status = 409
    title = "Conflict"


class TaskCancelled(TransitionError):
    title = "Task was cancelled"

    def __init__(self, task_id: str):
        self.task_id = task_id
        super().__init__(f"task {task_id!r} was cancelled; submit a new task instead")


class TaskEnded(TransitionError):
    title = "Task already ended"

    def __init__(self, task_id: str, status: TaskStatus):
        self.task_id, self.task_status = task_id, status
        super().__init__(f"task {task_id!r} is {status.value}")


class TaskRunning(TransitionError):
    title = "Task is running"

    def __init__(self, task_id: str, status: TaskStatus):
        self.task_id, self.task_status = task_id, status
        super().__init__(f"task {task_id!r} is {status.value} and the message said on_running=reject; send it with "
                         "on_running=enqueue (applied when this iteration ends) or interrupt (the plan is revised now)")


class BudgetNotRaised(TransitionError):
    """A limit given below the current one."""

    status = 422
    title = "Budget can only be raised"

    def __init__(self, fields: list[str], current: Budget):
        self.fields, self.current = fields, current
        super().__init__(f"{', '.join(fields)} would be lower than now ({current.model_dump()})")


class BudgetStillExceeded(TransitionError):
    """The task waits on its budget and the new limits would still stop its next model call."""

    title = "The raise does not clear the limit that was reached"

    def __init__(self, limit: str, used: float, new_limit: float):
        self.limit, self.used, self.new_limit = limit, used, new_limit
        super().__init__(f"{limit} would be {new_limit:g} but the task has already used {used:g}; "
                         f"raise {limit} above {used:g} for the task to go on")


@dataclass(frozen=True)
class MessagePosted:
    seq: int
    follow_up: bool
    status: TaskStatus
    iteration: int
    applied: str = "follow_up"
    """What the message does: follow_up (starts an iteration), reply (to a waiting task),
    enqueued (starts the next iteration once this one ends), interrupt (revises the running plan)."""


async def _task(store: EventStore, task_id: str) -> Task:
    task = await store.load_task(task_id)
    assert task is not None, f"task {task_id} has no log"
    return task


async def post_message(store: EventStore, task_id: str, text: str, idempotency_key: str | None = None,
                       on_running: OnRunning = "enqueue") -> MessagePosted:
    """A follow-up (an ended task starts a new iteration), the reply to a waiting task (which
    goes back to the dispatch queue in the same transaction as the message), or a message to
    a running task, which `on_running` says what to do with: enqueue it for the next
    iteration, interrupt the plan with it, or reject it. A message sent again with the same
    `idempotency_key` (a client retrying a lost response) is the first one, not a second."""
    events = await store.read(task_id)
    task = reduce(events)
    assert task is not None, f"task {task_id} has no log"
    if idempotency_key is not None:
        first = next((e for e in events if e.type == EventType.message
                      and e.payload.get("idempotency_key") == idempotency_key), None)
        if first is not None:
            follow_up = any(e.type == EventType.iteration_started and e.seq == first.seq + 1 for e in events)
            return MessagePosted(seq=first.seq, follow_up=follow_up, status=task.status, iteration=task.iteration)
    if task.status == TaskStatus.cancelled:
        raise TaskCancelled(task_id)
    running = not task.status.terminal and task.status != TaskStatus.waiting_for_input
    if running and on_running == "reject":
        raise TaskRunning(task_id, task.status)
    payload: dict[str, Any] = {"text": text}
    if idempotency_key is not None:
        payload["idempotency_key"] = idempotency_key
    if running:
        payload["on_running"] = on_running
    new = [NewEvent(EventType.message, payload)]
    follow_up = task.status in (TaskStatus.done, TaskStatus.failed)
    if follow_up:
        new.append(NewEvent(EventType.iteration_started, {"iteration": task.iteration + 1, "text": text}))
    written = await store.append(task_id, new, wake=True)
    if running:
        await _start_if_ended(store, task_id)
        return MessagePosted(seq=written[0].seq, follow_up=False, status=task.status, iteration=task.iteration,
                             applied="interrupt" if on_running == "interrupt" else "enqueued")
    return MessagePosted(seq=written[0].seq, follow_up=follow_up,
                         status=TaskStatus.queued if follow_up else task.status,
                         iteration=task.iteration + 1 if follow_up else task.iteration,
                         applied="follow_up" if follow_up else "reply")


async def _start_if_ended(store: EventStore, task_id: str) -> None:
    """A message to a running task that its runner may not have seen: the iteration ended
    between our read and our append. The runner looks for queued messages after it ends an
    iteration and we look after we append, so one of us sees both; should both, the second
    iteration.started is a no-op (it only reopens an ended task)."""
    task = await _task(store, task_id)
    if task.status in (TaskStatus.done, TaskStatus.failed) and task.queued_messages:
        await store.append(task_id, [next_iteration(task)])


def next_iteration(task: Task) -> NewEvent:
    """The iteration that the messages queued while the last one ran start."""
    return NewEvent(EventType.iteration_started, {"iteration": task.iteration + 1,
                                                  "text": "\n\n".join(task.queued_messages),
                                                  "queued": len(task.queued_messages)})


def _still_exceeded(task: Task, raised: dict[str, Any]) -> BudgetStillExceeded | None:
    budget = task.budget.model_copy(update=raised)
    usage = task.usage
    if usage.llm_calls >= budget.max_llm_calls:
        return BudgetStillExceeded("max_llm_calls", usage.llm_calls, budget.max_llm_calls)
    if usage.cost_usd >= budget.max_cost_usd:
        return BudgetStillExceeded("max_cost_usd", round(usage.cost_usd, 6), budget.max_cost_usd)
    return None


async def raise_budget(store: EventStore, task_id: str, raised: dict[str, Any], *, by: str = "api") -> Budget:
    """Raise the task's model budget; a task paused on it goes back to the dispatch queue in
    the same transaction. A raise that would not let it make its next call is refused."""
    task = await _task(store, task_id)
    lower = [k for k, v in raised.items() if v < getattr(task.budget, k)]
    if lower:
        raise BudgetNotRaised(lower, task.budget)
    if task.status.terminal:
        raise TaskEnded(task_id, task.status)
    waiting = task.status == TaskStatus.waiting_for_input and task.waiting_on == "budget"
    if waiting and (still := _still_exceeded(task, raised)):
        raise still
    await store.append(task_id, [NewEvent(EventType.budget_raised, {**raised, "by": by})], wake=waiting)
    return task.budget.model_copy(update=raised)

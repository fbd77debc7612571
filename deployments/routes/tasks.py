"""`/v1/tasks`: submit, list, read, follow (SSE), message, raise the budget, cancel, artifacts.

Every route is scoped to the caller's tenant: a task of another tenant is a 404, exactly
like a task that does not exist, so ids cannot be probed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field, ValidationError
from sse_starlette.sse import EventSourceResponse

from deployments.auth import Member, Principal, Viewer
from deployments.backend import Backend, BackendDep
from deployments.problems import Problem
from deployments.uploads import read_form, stage_attachments, validate_part
from memory.store import NewEvent, TaskNotFound, TaskRow, decode_cursor
from troupe.models import AcceptanceTest, Budget, Event, EventType, Plan, Priority, Task, TaskStatus
from troupe.plans import PlanError, validate_plan
from troupe import metrics, transitions
from troupe.tracing import task_trace_id
from troupe.transitions import BudgetNotRaised, BudgetStillExceeded, OnRunning, TransitionError, post_message

__all__ = ["BudgetRaise", "MessageCreate", "TaskCreate", "check_plan", "router", "submit_multipart", "submit_task",
           "task_template"]

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])

_SUBMISSIONS = uuid.UUID("6f1d3c1e-5b0a-4c55-9a57-1f0c8a5d2e11")  # namespace of ids derived from Idempotency-Key


class TaskCreate(BaseModel):
    goal: str = Field(min_length=1, max_length=20_000)
    plan: Plan | None = None
    acceptance_tests: list[AcceptanceTest] = Field(default_factory=list, max_length=100)
    priority: Priority = Priority.normal
    requirements: list[str] = Field(default_factory=list, max_length=100)
    metadata: dict[str, Any] = Field(default_factory=dict)
    budget: Budget | None = Field(None, description="Model spend limits; defaults from the Gateway's config.")
    max_corrections: int = Field(3, ge=0, le=20, description="Corrective sub-plans before asking the user.")
    attachments: list[str] = Field(default_factory=list, max_length=100, description=(
        "Files or folders on the server (inside its ingest roots) to attach; or post multipart: a `task` part "
        "(this JSON) and file parts. Copied to the task's `attachments/` and ingested before planning."))


class BudgetRaise(BaseModel):
    max_cost_usd: float | None = Field(None, gt=0, le=10_000)
    max_llm_calls: int | None = Field(None, gt=0, le=100_000)


class MessageCreate(BaseModel):
    text: str = Field(min_length=1, max_length=20_000)
    on_running: OnRunning = Field(
        default="enqueue", description="What a message to a running task does: `enqueue` starts the next iteration "
        "with it once this one ends; `interrupt` pins it as a requirement and revises the plan at the next safe point "
        "(finished work is kept); `reject` refuses it with 409. Ended and waiting tasks ignore it.")


_MULTIPART_TASK_DOC = {"requestBody": {"content": {"multipart/form-data": {"schema": {
    "type": "object",
    "properties": {"task": {"type": "string", "description": "The submission as JSON (the JSON body's schema)."},
                   "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                             "description": "Attachments: copied to the task's attachments/ folder."}},
    "required": ["task"],
}}}}}

# OpenAPI links: a client (or a generated test) reaches every id-based operation from the
# task_id that POST /v1/tasks returns.
_TASK_LINKS = {op: {"operationId": op, "parameters": {"task_id": "$response.body#/task_id"}}
               for op in ("get_task", "task_events", "post_message", "raise_budget", "cancel_task", "list_artifacts")}


def _links(task_id: str) -> dict[str, str]:
    base = f"/v1/tasks/{task_id}"
    return {"self": base, "events": f"{base}/events", "artifacts": f"{base}/artifacts", "messages": f"{base}/messages"}


def _summary(row: TaskRow) -> dict[str, Any]:
    return {"task_id": row.task_id, "tenant": row.tenant, "goal": row.goal, "status": row.status.value,
            "priority": row.priority.value, "created_at": row.created_at.isoformat(),
            "updated_at": row.updated_at.isoformat(), "links": _links(row.task_id)}


async def _load(backend: Backend, task_id: str, tenant: str) -> tuple[TaskRow, Task]:
    row = await backend.store.get(task_id, tenant=tenant)
    task = await backend.store.load_task(task_id) if row is not None else None
    if row is None or task is None:
        raise Problem(404, "Task not found", f"no task {task_id!r} for tenant {tenant!r}")
    return row, task


def _idempotency_header(what: str) -> Any:
    return Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200,
                                        description=f"Send the same key again (e.g. after a lost response) to get {what}.")]


IdempotencyKey = _idempotency_header("the task it created, not a new one")
MessageKey = _idempotency_header("the message it posted, not a second one (which, once the task has ended, "
                                 "would start a follow-up)")


@router.post("", status_code=202, summary="Submit a goal (and optionally its plan)", operation_id="submit_task",
             openapi_extra=_MULTIPART_TASK_DOC, responses={202: {"links": _TASK_LINKS}})
async def submit(body: TaskCreate, caller: Member, backend: BackendDep,
                 idempotency_key: IdempotencyKey = None) -> JSONResponse:
    return await submit_task(backend, body, caller, [], idempotency_key)


async def submit_multipart(request: Request, caller: Member, backend: BackendDep,
                           idempotency_key: IdempotencyKey = None) -> JSONResponse:
    """POST /v1/tasks as multipart: a `task` part and file parts (registered by build_api)."""
    data, uploads = await read_form(request, json_part="task", max_json_bytes=backend.config.max_body_bytes,
                                    required=True)
    return await submit_task(backend, validate_part(TaskCreate, data, "task"), caller, uploads, idempotency_key)


def _accepted(task_id: str) -> JSONResponse:
    return JSONResponse({"task_id": task_id, "status": TaskStatus.queued.value, "links": _links(task_id)},
                        status_code=202, headers={"Location": f"/v1/tasks/{task_id}"})


def check_plan(backend: Backend, plan: Plan, tenant: str, field: str = "plan") -> None:
    """A submitted plan's tools exist (for this tenant) and its arguments fit them; else a 422."""
    try:
        validate_plan(plan, backend.tools.available(tenant))
    except PlanError as exc:
        raise Problem(422, "Invalid plan", str(exc),
                      errors=[{"field": field, "message": p} for p in exc.problems]) from None


def task_template(backend: Backend, task: dict[str, Any], tenant: str) -> TaskCreate:
    """A stored task template (a schedule's, a trigger's) checked now as POST /v1/tasks would check it."""
    try:
        body = TaskCreate.model_validate(task)
    except ValidationError as exc:
        raise Problem(422, "Invalid task", "the task is not a valid POST /v1/tasks body",
                      errors=[{"field": "task." + ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                              for e in exc.errors()]) from None
    if body.plan is not None:
        check_plan(backend, body.plan, tenant, "task.plan")
    return body


async def submit_task(backend: Backend, body: TaskCreate, caller: Principal, uploads: list[UploadFile],
                      idempotency_key: str | None = None) -> JSONResponse:
    """The one submission path (REST, multipart, MCP, console, schedules, triggers): plan
    validation, rate limit, queue caps, attachments, then the task row and a kick."""
    tenant, store = caller.tenant, backend.store
    # With an Idempotency-Key the task's id is derived from it, so a repeated submission finds
    # the task the first one made (and the tasks table's primary key settles a race).
    task_id = str(uuid.uuid5(_SUBMISSIONS, f"{tenant}\n{idempotency_key}")) if idempotency_key else str(uuid.uuid4())
    if idempotency_key and await store.get(task_id, tenant=tenant) is not None:
        return _accepted(task_id)
    if body.plan is not None:
        check_plan(backend, body.plan, tenant)
    limits = backend.limits_for(tenant)
    denied = await backend.limiter.take(tenant, "submissions", limits.submissions_per_s, limits.submissions_burst)
    if denied is not None:
        raise Problem(429, "Rate limited", f"tenant {tenant!r} is over its submission limit {denied.limit}; "
                                           f"retry in {denied.retry_after_s} s", retry_after_s=denied.retry_after_s)
    mine, everyone = await store.pending_counts(tenant)
    if mine >= limits.max_queued_tasks:
        raise Problem(429, "Too many queued tasks", f"tenant {tenant!r} has max_queued_tasks="
                                                    f"{limits.max_queued_tasks} tasks waiting; retry later",
                      retry_after_s=backend.config.retry_after_s)
    if everyone >= backend.config.max_queued_tasks:
        raise Problem(429, "Too many queued tasks", f"the queue is full (max_queued_tasks="
                                                    f"{backend.config.max_queued_tasks}); retry later",
                      retry_after_s=backend.config.retry_after_s)
    payload = body.model_dump(mode="json", exclude_none=True)
    payload["tenant"] = tenant
    payload["submitted_by"] = caller.key_id
    payload["budget"] = (body.budget or backend.config.default_budget).model_dump()
    # Attachments are in the workspace before the task exists: a task never lists a missing file.
    workspace = backend.settings.workspace(tenant, task_id)
    payload["attachments"] = await stage_attachments(workspace, body.attachments, uploads,
                                                     settings=backend.settings,
                                                     max_bytes=backend.config.max_upload_bytes)
    try:
        await store.create_task(task_id, tenant=tenant, goal=body.goal, priority=body.priority, payload=payload,
                                trace_id=task_trace_id(task_id))
    except BaseException:
        if idempotency_key and await store.get(task_id, tenant=tenant) is not None:
            return _accepted(task_id)  # a concurrent repeat won; the workspace is its
        shutil.rmtree(workspace, ignore_errors=True)
        raise
    metrics.task_submitted(tenant, body.priority)
    await backend.kick()
    return _accepted(task_id)


@router.get("", summary="List tasks, newest first", operation_id="list_tasks")
async def list_tasks(caller: Viewer, backend: BackendDep, status: TaskStatus | None = None,
                     limit: Annotated[int, Query(ge=1, le=500)] = 50, cursor: str | None = None) -> dict[str, Any]:
    if cursor:
        try:
            decode_cursor(cursor)
        except ValueError as exc:
            raise Problem(400, "Bad cursor", str(exc)) from None
    rows, next_cursor = await backend.store.list_tasks(caller.tenant, status=status, limit=limit, cursor=cursor)
    return {"items": [_summary(r) for r in rows], "next_cursor": next_cursor}


@router.get("/{task_id}", summary="A task's state, as the reducer derives it from its log", operation_id="get_task")
async def get_task(task_id: str, caller: Viewer, backend: BackendDep) -> dict[str, Any]:
    row, task = await _load(backend, task_id, caller.tenant)
    body = task.model_dump(mode="json")
    body["queue_position"] = await backend.store.queue_position(row)
    body["links"] = _links(task_id)
    return body


@router.get("/{task_id}/events", summary="Events as SSE (live until the task ends), or JSON",
            operation_id="task_events")
async def events(request: Request, task_id: str, caller: Viewer, backend: BackendDep,
                 last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
                 after: Annotated[int | None, Query(ge=0)] = None, stream: bool = True) -> Any:
    await _load(backend, task_id, caller.tenant)
    start = after if after is not None else 0
    if last_event_id is not None:
        if not last_event_id.isdigit():
            raise Problem(400, "Bad Last-Event-ID", "Last-Event-ID must be the seq of an event (an integer)")
        start = int(last_event_id)
    if not stream:
        return [e.model_dump(mode="json") for e in await backend.store.read(task_id, after_seq=start)]
    return EventSourceResponse(_sse(request, backend, task_id, start), ping=15)


@router.post("/{task_id}/messages", status_code=202, operation_id="post_message",
             summary="A follow-up (an ended task starts a new iteration), a reply (a waiting task resumes), or a "
                     "message to a running task (on_running: enqueue, interrupt or reject)")
async def message(task_id: str, body: MessageCreate, caller: Member, backend: BackendDep,
                  idempotency_key: MessageKey = None) -> dict[str, Any]:
    await _load(backend, task_id, caller.tenant)
    try:
        posted = await post_message(backend.store, task_id, body.text, idempotency_key, body.on_running)
    except TransitionError as exc:
        raise Problem(exc.status, exc.title, str(exc)) from None
    await backend.kick()
    return {"task_id": task_id, "seq": posted.seq, "status": posted.status.value, "iteration": posted.iteration,
            "applied": posted.applied}


@router.post("/{task_id}/budget", status_code=202, summary="Raise a task's model budget", operation_id="raise_budget")
async def raise_budget(task_id: str, body: BudgetRaise, caller: Member, backend: BackendDep) -> dict[str, Any]:
    await _load(backend, task_id, caller.tenant)
    raised = body.model_dump(exclude_none=True)
    if not raised:
        raise Problem(422, "Nothing to raise", "give max_cost_usd and/or max_llm_calls",
                      errors=[{"field": "max_cost_usd", "message": "missing"}])
    try:
        budget = await transitions.raise_budget(backend.store, task_id, raised, by=caller.key_id)
    except BudgetNotRaised as exc:
        raise Problem(exc.status, exc.title, str(exc),
                      errors=[{"field": k, "message": "below the current limit"} for k in exc.fields]) from None
    except BudgetStillExceeded as exc:
        raise Problem(exc.status, exc.title, str(exc),
                      errors=[{"field": exc.limit, "message": f"must be above {exc.used:g}"}]) from None
    except TransitionError as exc:
        raise Problem(exc.status, exc.title, str(exc)) from None
    await backend.kick()
    return {"task_id": task_id, "budget": budget.model_dump()}


@router.delete("/{task_id}", status_code=202, summary="Cancel a task", operation_id="cancel_task")
async def cancel(task_id: str, caller: Member, backend: BackendDep) -> dict[str, Any]:
    _, task = await _load(backend, task_id, caller.tenant)
    if task.status.terminal:
        raise Problem(409, "Task already ended", f"task {task_id!r} is {task.status.value}; it cannot be cancelled")
    try:
        await backend.store.append(task_id, [NewEvent(EventType.cancel_requested, {"by": caller.key_id})])
    except TaskNotFound:
        raise Problem(404, "Task not found", f"no task {task_id!r}") from None
    await backend.cancel(task_id)
    return {"task_id": task_id, "status": "cancelling"}


@router.get("/{task_id}/artifacts", summary="Published artifacts", operation_id="list_artifacts")
async def artifacts(task_id: str, caller: Viewer, backend: BackendDep) -> list[dict[str, Any]]:
    _, task = await _load(backend, task_id, caller.tenant)
    return [a.model_dump() for a in task.artifacts]


@router.get("/{task_id}/artifacts/{name:path}", summary="One artifact's bytes", operation_id="get_artifact")
async def artifact(task_id: str, name: str, caller: Viewer, backend: BackendDep) -> FileResponse:
    _, task = await _load(backend, task_id, caller.tenant)
    # Only names the task published are served, so a traversal like ../../x is a 404.
    match = next((a for a in task.artifacts if a.name == name), None)
    workspace = backend.settings.workspace(task.tenant, task_id).resolve()
    path = (workspace / name).resolve()
    if match is None or not path.is_relative_to(workspace) or not path.is_file():
        raise Problem(404, "Artifact not found", f"task {task_id!r} has no published artifact {name!r}")
    return FileResponse(path, media_type=match.media_type, headers={"ETag": f'"{match.sha256}"'})


async def _sse(request: Request, backend: Backend, task_id: str, after: int):
    """Yield events from `after` on; stop once the task has ended and all is sent. New events
    are pushed by the live bus; without one (or while it is down) the log is polled."""
    store = backend.store
    with contextlib.ExitStack() as stack:
        stack.enter_context(metrics.sse_client())
        watch = stack.enter_context(store.bus.watching(task_id)) if store.bus is not None else None
        woke = watch.woke if watch is not None else None
        while True:
            if woke is not None:
                woke.clear()  # before the read: a notice that comes during it is not lost
            batch: list[Event] = await store.read(task_id, after_seq=after, limit=500)
            for e in batch:
                after = e.seq
                yield {"id": str(e.seq), "event": e.type.value, "data": json.dumps(e.model_dump(mode="json"))}
            if batch:
                continue
            row = await store.get(task_id)
            if row is None or row.status.terminal and row.last_seq <= after:
                return
            if await request.is_disconnected():
                return
            if woke is None or store.bus is None or not store.bus.healthy:
                await asyncio.sleep(backend.config.sse_poll_s)
            else:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(woke.wait(), backend.config.sse_idle_poll_s)

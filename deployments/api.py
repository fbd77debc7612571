"""The HTTP API under /v1, built per Gateway replica around that replica's services."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, Header, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field
from sse_starlette.sse import EventSourceResponse

from deployments.collections_api import add_collection_routes
from deployments.openai_api import add_openai_routes
from deployments.problems import BodyLimit, Problem, install_problem_handlers
from deployments.uploads import add_multipart_route, read_form, stage_attachments, validate_part
from memory.store import (
    EventStore,
    NewEvent,
    TaskNotFound,
    TaskRow,
    decode_cursor,
)
from tools.registry import ToolRegistry
from troupe.models import (
    AcceptanceTest,
    Budget,
    Event,
    EventType,
    Plan,
    Priority,
    Task,
    TaskStatus,
)
from troupe.plans import PlanError, validate_plan
from troupe.reducer import reduce
from troupe.settings import Settings
from troupe.tracing import task_trace_id
from troupe.transitions import BudgetNotRaised, BudgetStillExceeded, TransitionError, post_message
from troupe.transitions import raise_budget as raise_budget_

__all__ = ["Backend", "GatewayConfig", "build_api"]

TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
# Module level: FastAPI resolves string annotations against module globals.
Tenant = Annotated[str, Header(alias="X-Troupe-Tenant", pattern=TENANT_PATTERN,
                               description="The tenant every call is scoped to.")]


class GatewayConfig(BaseModel):
    """`user_config` of the Gateway deployment in serve_config.yaml."""

    max_body_bytes: int = Field(1_048_576, gt=0)
    max_upload_bytes: int = Field(268_435_456, gt=0, description="Limit of multipart bodies (files, archives).")
    max_queued_tasks: int = Field(10_000, gt=0, description="Above this many queued tasks, submissions get 429.")
    sse_poll_s: float = Field(0.2, gt=0, description="How often an event stream looks for new events.")
    retry_after_s: int = Field(5, ge=1)
    default_budget: Budget = Field(default_factory=Budget, description="Model spend limits of a task that sets none.")


class Backend(Protocol):
    settings: Settings
    config: GatewayConfig
    store: EventStore
    tools: ToolRegistry
    llm: Any  # the LLMRouter's DeploymentHandle; None: no model API

    async def kick(self) -> None: ...
    async def cancel(self, task_id: str) -> None: ...
    async def health(self) -> dict[str, Any]: ...
    async def templates(self, tenant: str) -> list[dict[str, Any]]: ...


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


_MULTIPART_TASK_DOC = {"requestBody": {"content": {"multipart/form-data": {"schema": {
    "type": "object",
    "properties": {"task": {"type": "string", "description": "The submission as JSON (the JSON body's schema)."},
                   "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                             "description": "Attachments: copied to the task's attachments/ folder."}},
    "required": ["task"],
}}}}}


def _links(task_id: str) -> dict[str, str]:
    base = f"/v1/tasks/{task_id}"
    return {"self": base, "events": f"{base}/events", "artifacts": f"{base}/artifacts", "messages": f"{base}/messages"}


def _summary(row: TaskRow) -> dict[str, Any]:
    return {"task_id": row.task_id, "tenant": row.tenant, "goal": row.goal, "status": row.status.value,
            "priority": row.priority.value, "created_at": row.created_at.isoformat(),
            "updated_at": row.updated_at.isoformat(), "links": _links(row.task_id)}


def build_api(backend: Backend) -> FastAPI:
    app = FastAPI(title="Troupe", version="0.1.0",
                  description="Autonomous agents on Ray Serve: submit a goal, watch it run, fetch verified artifacts.")
    install_problem_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=lambda: backend.config.max_body_bytes,
                       max_upload_bytes=lambda: backend.config.max_upload_bytes)
    store = backend.store

    async def load(task_id: str, tenant: str) -> tuple[TaskRow, Task]:
        row = await store.get(task_id, tenant=tenant)
        if row is None:
            raise Problem(404, "Task not found", f"no task {task_id!r} for tenant {tenant!r}")
        task = reduce(await store.read(task_id))
        assert task is not None
        return row, task

    @app.post("/v1/tasks", status_code=202, summary="Submit a goal (and optionally its plan)",
              openapi_extra=_MULTIPART_TASK_DOC)
    async def submit(body: TaskCreate, tenant: Tenant = "default") -> JSONResponse:
        return await create(body, tenant, [])

    async def submit_multipart(request: Request, tenant: Tenant = "default") -> JSONResponse:
        data, uploads = await read_form(request, json_part="task", max_json_bytes=backend.config.max_body_bytes,
                                        required=True)
        return await create(validate_part(TaskCreate, data, "task"), tenant, uploads)

    add_multipart_route(app, "/v1/tasks", submit_multipart, status_code=202)

    async def create(body: TaskCreate, tenant: str, uploads: list[UploadFile]) -> JSONResponse:
        if body.plan is not None:
            try:
                validate_plan(body.plan, {n: backend.tools.get(n) for n in backend.tools.names()})
            except PlanError as exc:
                raise Problem(422, "Invalid plan", str(exc),
                              errors=[{"field": "plan", "message": p} for p in exc.problems]) from None
        if await store.count_pending() >= backend.config.max_queued_tasks:
            raise Problem(429, "Too many queued tasks", "the queue is full; retry later",
                          retry_after_s=backend.config.retry_after_s)
        task_id = str(uuid.uuid4())
        payload = body.model_dump(mode="json", exclude_none=True)
        payload["tenant"] = tenant
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
            shutil.rmtree(workspace, ignore_errors=True)
            raise
        await backend.kick()
        return JSONResponse({"task_id": task_id, "status": TaskStatus.queued.value, "links": _links(task_id)},
                            status_code=202, headers={"Location": f"/v1/tasks/{task_id}"})

    @app.get("/v1/tasks", summary="List tasks, newest first")
    async def list_tasks(tenant: Tenant = "default", status: TaskStatus | None = None,
                         limit: Annotated[int, Query(ge=1, le=500)] = 50, cursor: str | None = None) -> dict[str, Any]:
        if cursor:
            try:
                decode_cursor(cursor)
            except ValueError as exc:
                raise Problem(400, "Bad cursor", str(exc)) from None
        rows, next_cursor = await store.list_tasks(tenant, status=status, limit=limit, cursor=cursor)
        return {"items": [_summary(r) for r in rows], "next_cursor": next_cursor}

    @app.get("/v1/tasks/{task_id}", summary="A task's state, as the reducer derives it from its log")
    async def get_task(task_id: str, tenant: Tenant = "default") -> dict[str, Any]:
        row, task = await load(task_id, tenant)
        body = task.model_dump(mode="json")
        body["queue_position"] = await store.queue_position(row)
        body["links"] = _links(task_id)
        return body

    @app.get("/v1/tasks/{task_id}/events", summary="Events as SSE (live until the task ends), or JSON")
    async def events(request: Request, task_id: str, tenant: Tenant = "default",
                     last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
                     after: Annotated[int | None, Query(ge=0)] = None, stream: bool = True) -> Any:
        await load(task_id, tenant)
        start = after if after is not None else 0
        if last_event_id is not None:
            if not last_event_id.isdigit():
                raise Problem(400, "Bad Last-Event-ID", "Last-Event-ID must be the seq of an event (an integer)")
            start = int(last_event_id)
        if not stream:
            return [e.model_dump(mode="json") for e in await store.read(task_id, after_seq=start)]
        return EventSourceResponse(_sse(request, backend, task_id, start), ping=15)

    @app.post("/v1/tasks/{task_id}/messages", status_code=202,
              summary="A follow-up (an ended task starts a new iteration) or a reply (a waiting task resumes)")
    async def message(task_id: str, body: MessageCreate, tenant: Tenant = "default") -> dict[str, Any]:
        await load(task_id, tenant)
        try:
            posted = await post_message(store, task_id, body.text)
        except TransitionError as exc:
            raise Problem(exc.status, exc.title, str(exc)) from None
        await backend.kick()
        return {"task_id": task_id, "seq": posted.seq, "status": posted.status.value, "iteration": posted.iteration}

    @app.post("/v1/tasks/{task_id}/budget", status_code=202, summary="Raise a task's model budget")
    async def raise_budget(task_id: str, body: BudgetRaise, tenant: Tenant = "default") -> dict[str, Any]:
        await load(task_id, tenant)
        raised = body.model_dump(exclude_none=True)
        if not raised:
            raise Problem(422, "Nothing to raise", "give max_cost_usd and/or max_llm_calls",
                          errors=[{"field": "max_cost_usd", "message": "missing"}])
        try:
            budget = await raise_budget_(store, task_id, raised)
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

    @app.get("/v1/templates", summary="Plan templates: built in, and learned from verified tasks")
    async def templates(tenant: Tenant = "default") -> list[dict[str, Any]]:
        return await backend.templates(tenant)

    @app.delete("/v1/tasks/{task_id}", status_code=202, summary="Cancel a task")
    async def cancel(task_id: str, tenant: Tenant = "default") -> dict[str, Any]:
        _, task = await load(task_id, tenant)
        if task.status.terminal:
            raise Problem(409, "Task already ended", f"task {task_id!r} is {task.status.value}; it cannot be cancelled")
        try:
            await store.append(task_id, [NewEvent(EventType.cancel_requested, {})])
        except TaskNotFound:
            raise Problem(404, "Task not found", f"no task {task_id!r}") from None
        await backend.cancel(task_id)
        return {"task_id": task_id, "status": "cancelling"}

    @app.get("/v1/tasks/{task_id}/artifacts", summary="Published artifacts")
    async def artifacts(task_id: str, tenant: Tenant = "default") -> list[dict[str, Any]]:
        _, task = await load(task_id, tenant)
        return [a.model_dump() for a in task.artifacts]

    @app.get("/v1/tasks/{task_id}/artifacts/{name:path}", summary="One artifact's bytes")
    async def artifact(task_id: str, name: str, tenant: Tenant = "default") -> FileResponse:
        _, task = await load(task_id, tenant)
        # Only names the task published are served, so a traversal like ../../x is a 404.
        match = next((a for a in task.artifacts if a.name == name), None)
        workspace = backend.settings.workspace(task.tenant, task_id).resolve()
        path = (workspace / name).resolve()
        if match is None or not path.is_relative_to(workspace) or not path.is_file():
            raise Problem(404, "Artifact not found", f"task {task_id!r} has no published artifact {name!r}")
        return FileResponse(path, media_type=match.media_type, headers={"ETag": f'"{match.sha256}"'})

    @app.get("/v1/tools", summary="The tools plans may use, with their argument schemas")
    async def tools() -> list[dict[str, Any]]:
        return backend.tools.specs()

    @app.get("/healthz", summary="Store, Ray and every deployment")
    async def healthz() -> JSONResponse:
        report = await backend.health()
        return JSONResponse(report, status_code=200 if report["ok"] else 503)

    add_collection_routes(app, backend)
    add_openai_routes(app, backend)  # /v1/chat/completions, /v1/models over backend.llm
    return app


async def _sse(request: Request, backend: Backend, task_id: str, after: int):
    """Yield events from `after` on; stop once the task has ended and all is sent."""
    store = backend.store
    while True:
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
        await asyncio.sleep(backend.config.sse_poll_s)


"""Troupe as tools for other agents: an MCP server at `/mcp` (streamable HTTP, the official
`mcp` SDK), behind the same API keys, roles and tenants as the REST API.

The tools call the same code as the REST routes (deployments/routes/), so a task submitted
over MCP is validated, rate limited, audited and scoped exactly like one posted to /v1/tasks.
It is stateless (no MCP session to pin to a replica): any Gateway replica answers any call.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ToolAnnotations
from pydantic import Field
from starlette.datastructures import Headers, UploadFile
from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.auth import Principal
from deployments.backend import Backend
from deployments.problems import Problem, problem_response
from deployments.routes import collections as collection_routes
from deployments.routes import tasks as task_routes
from deployments.collections_service import COLLECTION_PATTERN, SearchRequest
from memory.access import Role
from troupe.models import Priority

__all__ = ["TroupeMCP"]

_TERMINAL = {"done", "failed", "cancelled", "waiting_for_input"}
_READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, idempotentHint=True)
_ACTS = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False)


class _ToolError(ToolError):
    """What the calling agent should read: a problem's detail, or why the call was refused."""


def _caller(ctx: Context) -> Principal:
    return ctx.request_context.request.scope["state"]["principal"]


def _need(who: Principal, role: Role) -> None:
    if not who.role.allows(role):
        raise _ToolError(f"this needs the {role.value} role; the key has {who.role.value}")


async def _call(coro: Any) -> Any:
    """Run a route function; its problem becomes a tool error the agent can read."""
    try:
        return await coro
    except Problem as exc:
        raise _ToolError(f"{exc.status} {exc.title}: {exc.detail}") from None


def _body(response: Any) -> Any:
    return json.loads(response.body) if hasattr(response, "body") else response


class TroupeMCP:
    """The MCP server of one Gateway replica."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.server = MCPServer(name="troupe", instructions=(
            "Troupe runs goals to verified results: submit_task, then wait_for_task, then list_artifacts and "
            "read_artifact. A task waiting for input takes a reply."))
        self._register()
        # Clients authenticate with a bearer key on every request, never an ambient cookie, so
        # DNS rebinding gains an attacker nothing; Host checks would only break proxies.
        self.asgi = _Authenticated(self.server.streamable_http_app(
            streamable_http_path="/mcp", stateless_http=True,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False)), backend)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self.server.session_manager.run():
            yield

    def _register(self) -> None:
        backend, tool = self.backend, self.server.tool

        @tool(annotations=_ACTS)
        async def submit_task(ctx: Context, goal: str, plan: dict[str, Any] | None = None,
                              acceptance_tests: list[dict[str, Any]] | None = None,
                              priority: Priority = Priority.normal) -> dict[str, Any]:
            """Submit a goal (and optionally its plan) to Troupe; it runs in the background.

            Args:
                goal: what you want done, in plain words.
                plan: optional {"nodes": [...]} as in POST /v1/tasks; without it Troupe plans.
                acceptance_tests: optional checks the result must pass.
                priority: high, normal or low.
            """
            who = _caller(ctx)
            _need(who, Role.member)
            try:
                body = task_routes.TaskCreate.model_validate({"goal": goal, "plan": plan, "priority": priority,
                                                              "acceptance_tests": acceptance_tests or []})
            except ValueError as exc:
                raise _ToolError(f"invalid submission: {exc}") from None
            return _body(await _call(task_routes.submit_task(backend, body, who, [])))

        @tool(annotations=_READ_ONLY)
        async def get_task(ctx: Context, task_id: str) -> dict[str, Any]:
            """A task's status, plan, node states, verdicts and artifacts.

            Args:
                task_id: the id submit_task returned.
            """
            who = _caller(ctx)
            return await _call(task_routes.get_task(task_id, who, backend))

        @tool(annotations=_READ_ONLY)
        async def wait_for_task(ctx: Context, task_id: str,
                                timeout_s: Annotated[float, Field(gt=0, le=3600)] = 600) -> dict[str, Any]:
            """Wait until the task ends or needs input, reporting progress (nodes done of all).

            Args:
                task_id: the id submit_task returned.
                timeout_s: how long to wait before returning the task as it is.
            """
            who = _caller(ctx)
            loop = asyncio.get_running_loop()
            deadline, reported = loop.time() + timeout_s, None
            while True:
                task = await _call(task_routes.get_task(task_id, who, backend))
                nodes = task.get("nodes") or {}
                done = sum(1 for n in nodes.values() if n.get("status") == "done")
                if (done, task["status"]) != reported:
                    reported = (done, task["status"])
                    await ctx.report_progress(done, max(len(nodes), 1), f"{task['status']}: {done}/{len(nodes)} nodes")
                if task["status"] in _TERMINAL or loop.time() >= deadline:
                    return task
                await asyncio.sleep(backend.config.sse_poll_s)

        @tool(annotations=_READ_ONLY)
        async def list_artifacts(ctx: Context, task_id: str) -> list[dict[str, Any]]:
            """The files a task published: name, media type, size, sha256.

            Args:
                task_id: the task.
            """
            return await _call(task_routes.artifacts(task_id, _caller(ctx), backend))

        @tool(annotations=_READ_ONLY)
        async def read_artifact(ctx: Context, task_id: str, name: str) -> dict[str, Any]:
            """One published artifact's content: text as is, other files base64-encoded.

            Args:
                task_id: the task.
                name: the artifact's name, as list_artifacts gives it.
            """
            response = await _call(task_routes.artifact(task_id, name, _caller(ctx), backend))
            data = await asyncio.to_thread(open(response.path, "rb").read)
            try:
                return {"name": name, "media_type": response.media_type, "text": data.decode("utf-8")}
            except UnicodeDecodeError:
                return {"name": name, "media_type": response.media_type,
                        "base64": base64.b64encode(data).decode()}

        @tool(annotations=_ACTS)
        async def reply(ctx: Context, task_id: str, text: str) -> dict[str, Any]:
            """Answer a task that waits for input (retry, skip, or guidance), or send a follow-up.

            Args:
                task_id: the task.
                text: the reply.
            """
            who = _caller(ctx)
            _need(who, Role.member)
            body = task_routes.MessageCreate(text=text)
            return await _call(task_routes.message(task_id, body, who, backend))

        @tool(annotations=_READ_ONLY)
        async def search_collection(ctx: Context, collection: str, query: str,
                                    limit: Annotated[int, Field(ge=1, le=50)] = 5) -> dict[str, Any]:
            """Search a document collection: passages best first, with their sources.

            Args:
                collection: the collection's name.
                query: what to look for.
                limit: how many passages.
            """
            who = _caller(ctx)
            _need(who, Role.member)
            if not re.fullmatch(COLLECTION_PATTERN, collection):
                raise _ToolError(f"{collection!r} is not a collection name: letters, digits, '_', '.' and '-'")
            return await _call(collection_routes.search(collection, SearchRequest(query=query, limit=limit), who,
                                                        backend))

        @tool(annotations=_ACTS)
        async def ingest(ctx: Context, collection: str, files: dict[str, str]) -> dict[str, Any]:
            """Upload files into a collection (ingested in the background; returns the job).

            Args:
                collection: the collection's name.
                files: file name -> content, base64-encoded.
            """
            who = _caller(ctx)
            _need(who, Role.member)
            try:
                uploads = [UploadFile(io.BytesIO(base64.b64decode(content, validate=True)), filename=name,
                                      headers=Headers({"content-type": "application/octet-stream"}))
                           for name, content in files.items()]
            except ValueError as exc:
                raise _ToolError(f"files: each value must be base64 ({exc})") from None
            if not uploads:
                raise _ToolError("files: give at least one file")
            return _body(await _call(collection_routes.ingest_files(backend, who, collection, uploads)))


class _Authenticated:
    """The MCP endpoint behind the API's credentials: a bearer key (never a cookie), the
    caller's role and tenant header rules, and the tenant's request rate."""

    def __init__(self, app: ASGIApp, backend: Backend):
        self.app, self.backend = app, backend

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        scheme, _, secret = headers.get("authorization", "").partition(" ")
        try:
            if scheme.lower() != "bearer" or not secret.strip():
                raise Problem(401, "Unauthorized", "send `Authorization: Bearer <API key>`",
                              headers={"WWW-Authenticate": 'Bearer realm="troupe"'})
            key_id, home, role = await self.backend.auth.identify(secret.strip())
            tenant = headers.get("x-troupe-tenant") or home
            if tenant != home and not role.allows(Role.admin):
                raise Problem(403, "Forbidden", f"this key belongs to tenant {home!r}; only an admin key may act "
                                                f"for tenant {tenant!r}")
            who = Principal(key_id=key_id, role=role, home_tenant=home, tenant=tenant)
            scope.setdefault("state", {})["principal"] = who
            limits = self.backend.limits_for(tenant)
            denied = await self.backend.limiter.take(tenant, "requests", limits.requests_per_s, limits.requests_burst)
            if denied is not None:
                raise Problem(429, "Rate limited", f"tenant {tenant!r} is over its request limit {denied.limit}",
                              retry_after_s=denied.retry_after_s)
        except Problem as exc:
            response = problem_response(scope["path"], exc.status, exc.title, exc.detail,
                                        retry_after_s=exc.retry_after_s, headers=exc.headers)
            return await response(scope, receive, send)
        await self.app(scope, receive, send)

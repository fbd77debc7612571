"""The HTTP API, built per Gateway replica around that replica's services: one APIRouter per
resource (deployments/routes/), authentication as a dependency of every route
(deployments/auth.py), errors as problem+json, and an audit row for every change or refusal."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import Route

from deployments import console
from deployments.audit import AuditMiddleware
from deployments.backend import Backend, GatewayConfig
from deployments.mcp_server import TroupeMCP
from deployments.problems import BodyLimit, install_problem_handlers
from deployments.routes import audit, collections, keys, memory, models, schedules, system, tasks, usage, webhooks
from deployments.uploads import add_multipart_route

__all__ = ["Backend", "GatewayConfig", "build_api"]


def build_api(backend: Backend) -> FastAPI:
    mcp = TroupeMCP(backend)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        async with mcp.running():
            yield

    app = FastAPI(title="Troupe", version="0.1.0", lifespan=lifespan,
                  description="Autonomous agents on Ray Serve: submit a goal, watch it run, fetch verified "
                              "artifacts. Every route but /healthz needs `Authorization: Bearer <API key>`.")
    app.state.backend = backend
    install_problem_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=lambda: backend.config.max_body_bytes,
                       max_upload_bytes=lambda: backend.config.max_upload_bytes)
    app.add_middleware(AuditMiddleware, access=lambda: getattr(backend, "access", None))
    # Multipart variants first: they match only multipart bodies, and must be tried before the
    # JSON routes at the same paths.
    add_multipart_route(app, "/v1/tasks", tasks.submit_multipart, status_code=202)
    add_multipart_route(app, "/v1/collections/{name}/ingest", collections.ingest_upload, status_code=202)
    for module in (tasks, collections, schedules, webhooks, memory, models, keys, audit, usage, system):
        app.include_router(module.router)
    app.include_router(webhooks.triggers)
    app.include_router(webhooks.hooks)
    app.include_router(console.router)  # the web console at / (deployments/console/)
    app.router.routes.append(Route("/mcp", mcp.asgi, methods=["GET", "POST", "DELETE"]))  # MCP, streamable HTTP
    return app

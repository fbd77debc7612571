"""Health, tools and templates."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from deployments.auth import Viewer, optional_admin
from deployments.backend import BackendDep

__all__ = ["router"]

router = APIRouter(tags=["system"])


@router.get("/healthz", summary="{ok} for anyone; with an admin key, every component's health",
            operation_id="healthz")
async def healthz(request: Request, backend: BackendDep) -> JSONResponse:
    report = await backend.health()
    body = report if await optional_admin(request) else {"ok": report["ok"]}
    return JSONResponse(body, status_code=200 if report["ok"] else 503)


@router.get("/v1/tools", summary="The tools plans may use, with their argument schemas", operation_id="list_tools")
async def tools(caller: Viewer, backend: BackendDep) -> list[dict[str, Any]]:
    return backend.tools.specs(caller.tenant)


@router.get("/v1/templates", summary="Plan templates: built in, and learned from this tenant's verified tasks",
            operation_id="list_templates")
async def templates(caller: Viewer, backend: BackendDep) -> list[dict[str, Any]]:
    return await backend.templates(caller.tenant)

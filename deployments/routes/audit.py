"""`GET /v1/audit` (admin): who did what, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from deployments.auth import Admin
from deployments.backend import BackendDep
from deployments.problems import Problem
from memory.access import decode_audit_cursor

__all__ = ["router"]

router = APIRouter(tags=["audit"])


@router.get("/v1/audit", summary="The audit log: key, tenant, role, action, target, outcome, time, client",
            operation_id="audit_log")
async def audit(caller: Admin, backend: BackendDep, tenant: str | None = None,
                action: Annotated[str | None, Query(max_length=200, description="A part of the action, "
                                                                                "e.g. `DELETE /v1/tasks`.")] = None,
                key_id: str | None = None, outcome: Annotated[int | None, Query(ge=100, le=599)] = None,
                since: datetime | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                cursor: str | None = None) -> dict[str, Any]:
    if cursor:
        try:
            decode_audit_cursor(cursor)
        except ValueError as exc:
            raise Problem(400, "Bad cursor", str(exc)) from None
    items, next_cursor = await backend.access.audit_entries(tenant=tenant, action=action, key_id=key_id,
                                                            outcome=outcome, since=since, limit=limit, cursor=cursor)
    return {"items": items, "next_cursor": next_cursor}

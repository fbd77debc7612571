"""`GET /v1/usage`: model calls, tokens and spend by tenant, model group or day. Admins see
every tenant (or one, with `tenant`); everyone else, viewers included (it is a read, like every
other GET), sees their own tenant only."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from fastapi import APIRouter, Query

from deployments.auth import Viewer
from deployments.backend import BackendDep
from deployments.problems import Problem
from memory.access import Role
from memory.usage import GroupBy, usage

__all__ = ["router"]

router = APIRouter(tags=["usage"])

MAX_WINDOW = timedelta(days=366)


@router.get("/v1/usage", summary="Model usage and spend", operation_id="get_usage")
async def get_usage(caller: Viewer, backend: BackendDep,
                    group_by: GroupBy = Query("tenant", description="tenant, model (the model group) or day (UTC)."),
                    since: datetime | None = Query(None, description="Start (ISO 8601); default 30 days ago."),
                    until: datetime | None = Query(None, description="End, exclusive (ISO 8601); default now."),
                    tenant: str | None = Query(None, description="Admins: one tenant only.")) -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    until = _utc(until) if until else now
    since = _utc(since) if since else until - timedelta(days=30)
    if since >= until or until - since > MAX_WINDOW:
        raise Problem(422, "Bad window", f"since ({since.isoformat()}) must be before until ({until.isoformat()}) "
                                         f"and at most {MAX_WINDOW.days} days before it")
    if not caller.can(Role.admin):
        if tenant is not None and tenant != caller.tenant:
            raise Problem(403, "Forbidden", f"a {caller.role.value} key sees its own tenant's usage only "
                                            f"({caller.tenant!r}); ask an admin for {tenant!r}")
        tenant = caller.tenant
    rows = await usage(backend.store.reader, group_by, since=since, until=until, tenant=tenant)
    total = {k: sum(r[k] for r in rows) for k in ("calls", "tokens_in", "tokens_out")}
    total["cost_usd"] = round(sum(r["cost_usd"] for r in rows), 6)
    return {"group_by": group_by, "since": since.isoformat(), "until": until.isoformat(),
            "tenant": tenant, "rows": rows, "total": total}


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)

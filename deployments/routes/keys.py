"""`/v1/keys` (admin): create, list and revoke API keys. A key's secret is in the creation
response and nowhere else, ever."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator

from deployments.auth import TENANT_PATTERN, Admin
from deployments.backend import BackendDep
from deployments.problems import Problem
from memory.access import Role

__all__ = ["KeyCreate", "parse_duration", "router"]

router = APIRouter(prefix="/v1/keys", tags=["keys"])

_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `2w`, `45s` -> a timedelta; ValueError saying the format otherwise."""
    m = _DURATION.match(text.strip().lower())
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration: write a positive number and a unit, e.g. 30d, 12h, 90m")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


class KeyCreate(BaseModel):
    tenant: str = Field(pattern=TENANT_PATTERN, description="The tenant the key acts for.")
    role: Role = Role.member
    name: str = Field("", max_length=200, description="What the key is for, shown in lists.")
    expires_in: str | None = Field(None, description="e.g. 30d, 12h; default: never.", examples=["30d"])

    @field_validator("expires_in")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v


@router.post("", status_code=201, summary="Create an API key (its secret is shown once)", operation_id="create_key",
             responses={201: {"links": {"revoke_key": {"operationId": "revoke_key",
                                                       "parameters": {"key_id": "$response.body#/key_id"}}}}})
async def create_key(body: KeyCreate, caller: Admin, backend: BackendDep) -> JSONResponse:
    expires = parse_duration(body.expires_in) if body.expires_in else None
    created = await backend.access.create_key(tenant=body.tenant, role=body.role, name=body.name,
                                              created_by=caller.key_id, expires_in=expires)
    assert created is not None
    key, secret = created
    return JSONResponse({**key.view(), "secret": secret}, status_code=201,
                        headers={"Location": f"/v1/keys/{key.key_id}", "Cache-Control": "no-store"})


@router.get("", summary="API keys (never their secrets)", operation_id="list_keys")
async def list_keys(caller: Admin, backend: BackendDep, tenant: str | None = None) -> list[dict[str, Any]]:
    return [k.view() for k in await backend.access.list_keys(tenant)]


@router.delete("/{key_id}", summary="Revoke an API key (within a second on every replica)",
               operation_id="revoke_key")
async def revoke_key(key_id: str, caller: Admin, backend: BackendDep) -> dict[str, Any]:
    key = await backend.access.revoke(key_id)
    if key is None:
        raise Problem(404, "Key not found", f"no API key {key_id!r}; list them with GET /v1/keys")
    return key.view()

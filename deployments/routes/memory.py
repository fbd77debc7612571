"""`/v1/memory`: what Troupe keeps about a tenant across tasks (memory/memories.py): the
preferences and facts found in goals and follow-ups, each with the task it came from, and
those added here. Later tasks are planned with them; a deleted one is never recalled again."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from deployments.auth import TENANT_PATTERN, Member, Viewer
from deployments.backend import BackendDep
from deployments.problems import Problem
from troupe.preferences import names_a_secret

__all__ = ["router"]

router = APIRouter(prefix="/v1/memory", tags=["memory"])


class MemoryCreate(BaseModel):
    text: str = Field(min_length=3, max_length=300, description="A preference or a fact, in one sentence.")
    kind: Literal["preference", "fact"] = "preference"
    project: str | None = Field(default=None, pattern=TENANT_PATTERN,
                                description="Recalled only for tasks whose metadata.project is this.")


@router.get("", summary="What Troupe remembers for this tenant", operation_id="list_memory")
async def list_memory(caller: Viewer, backend: BackendDep,
                      project: str | None = Query(None, description="Only tenant-wide memories and this "
                                                                     "project's.")) -> list[dict[str, Any]]:
    rows = await backend.memories.list(caller.tenant, project=project, every_project=project is None)
    return [r.public() for r in rows]


@router.post("", status_code=201, summary="Remember something for later tasks", operation_id="add_memory")
async def add_memory(body: MemoryCreate, caller: Member, backend: BackendDep) -> dict[str, Any]:
    if names_a_secret(body.text):
        raise Problem(422, "No credentials in memory", "a memory reaches every later plan of the tenant; it must not "
                      "name a password, key or token, nor carry a token-like string",
                      errors=[{"field": "text", "message": "names a credential"}])
    # No embedding here: the Planner embeds a fact that lacks one when it recalls it.
    row = await backend.memories.remember(caller.tenant, body.kind, body.text.strip(), source="api",
                                          task_id=None, project=body.project)
    if row is None:
        raise Problem(409, "Already remembered", "this tenant's memory holds these words already; GET /v1/memory")
    return row.public()


@router.delete("/{memory_id}", status_code=204, summary="Forget one memory", operation_id="forget_memory")
async def forget(memory_id: str, caller: Member, backend: BackendDep) -> None:
    if not await backend.memories.forget(caller.tenant, memory_id):
        raise Problem(404, "Memory not found", f"no memory {memory_id!r} for tenant {caller.tenant!r}")


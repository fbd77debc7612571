"""`/v1/schedules`: tasks submitted at each slot of a cron or every_s rule (troupe/schedules.py),
fired by the Scheduler actor (actors/scheduler.py). Scoped to the caller's tenant like tasks."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import ValidationError

from deployments.auth import Member, Viewer
from deployments.backend import Backend, BackendDep
from deployments.problems import Problem
from deployments.routes.tasks import task_template
from memory.schedules import DuplicateSchedule, ScheduleRow
from troupe.schedules import ScheduleSpec, ScheduleUpdate

__all__ = ["router"]

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])


def _check_task(backend: Backend, spec: ScheduleSpec, tenant: str) -> None:
    """The task template is checked now, not at its first slot."""
    task_template(backend, spec.task, tenant)


async def _get(backend: Backend, schedule_id: str, tenant: str) -> ScheduleRow:
    row = await backend.schedules.get(schedule_id, tenant=tenant)
    if row is None:
        raise Problem(404, "Schedule not found", f"no schedule {schedule_id!r} for tenant {tenant!r}")
    return row


@router.post("", status_code=201, summary="Create a schedule", operation_id="create_schedule")
async def create(body: ScheduleSpec, caller: Member, backend: BackendDep) -> dict[str, Any]:
    _check_task(backend, body, caller.tenant)
    try:
        row = await backend.schedules.create(caller.tenant, body, created_by=caller.key_id)
    except DuplicateSchedule as exc:
        raise Problem(409, "Schedule exists", str(exc)) from None
    return row.public()


@router.get("", summary="The tenant's schedules", operation_id="list_schedules")
async def list_schedules(caller: Viewer, backend: BackendDep) -> list[dict[str, Any]]:
    return [r.public() for r in await backend.schedules.list(caller.tenant)]


@router.get("/{schedule_id}", summary="A schedule and its recent slots (fired, skipped) with their tasks",
            operation_id="get_schedule")
async def get(schedule_id: str, caller: Viewer, backend: BackendDep) -> dict[str, Any]:
    row = await _get(backend, schedule_id, caller.tenant)
    return {**row.public(), "runs": [r.public() for r in await backend.schedules.runs(schedule_id)]}


@router.patch("/{schedule_id}", summary="Change a schedule's rule, task, overlap or catch_up",
              operation_id="update_schedule")
async def patch(schedule_id: str, body: ScheduleUpdate, caller: Member, backend: BackendDep) -> dict[str, Any]:
    row = await _get(backend, schedule_id, caller.tenant)
    changes = body.model_dump(exclude_unset=True)
    merged = {**row.spec.model_dump(), **changes}
    if "cron" in changes and changes["cron"] is not None:
        merged["every_s"] = None
    if "every_s" in changes and changes["every_s"] is not None:
        merged["cron"] = None
    try:
        spec = ScheduleSpec.model_validate(merged)
    except ValidationError as exc:
        raise Problem(422, "Invalid schedule", str(exc).splitlines()[0],
                      errors=[{"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
                              for e in exc.errors()]) from None
    _check_task(backend, spec, caller.tenant)
    return (await backend.schedules.update(schedule_id, caller.tenant, spec=spec)).public()


@router.post("/{schedule_id}/pause", summary="Stop firing until resumed", operation_id="pause_schedule")
async def pause(schedule_id: str, caller: Member, backend: BackendDep) -> dict[str, Any]:
    await _get(backend, schedule_id, caller.tenant)
    return (await backend.schedules.update(schedule_id, caller.tenant, paused=True)).public()


@router.post("/{schedule_id}/resume", summary="Fire again from the next slot (slots while paused are skipped)",
             operation_id="resume_schedule")
async def resume(schedule_id: str, caller: Member, backend: BackendDep) -> dict[str, Any]:
    await _get(backend, schedule_id, caller.tenant)
    return (await backend.schedules.update(schedule_id, caller.tenant, paused=False)).public()


@router.delete("/{schedule_id}", summary="Delete a schedule (its fired tasks stay)", operation_id="delete_schedule")
async def delete(schedule_id: str, caller: Member, backend: BackendDep) -> dict[str, Any]:
    if not await backend.schedules.delete(schedule_id, caller.tenant):
        raise Problem(404, "Schedule not found", f"no schedule {schedule_id!r} for tenant {caller.tenant!r}")
    return {"schedule_id": schedule_id, "deleted": True}

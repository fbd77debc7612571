"""Scheduler: a detached actor of its own that fires due schedule slots.

Each slot is claimed in the store before it is submitted (memory/schedules.py), and submitted
with an idempotency key derived from the slot, through the Gateway's own submission path
(validation, rate limits, queue caps). A scheduler that dies between the claim and the
submission leaves a `claimed` row, which the next one submits again: the key makes that the
same task, so each slot fires exactly once. The actor holds no state a restart loses.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import ray
from pydantic import BaseModel, Field

from actors.detached import get_or_create_detached
from memory.schedules import ScheduleRow, ScheduleStore
from memory.store import EventStore
from troupe.models import utcnow
from troupe.schedules import Overlap, due_slots
from troupe.secrets import fingerprint
from troupe.settings import Settings

__all__ = ["SchedulerConfig", "get_or_create_scheduler", "slot_key"]

log = logging.getLogger("troupe.scheduler")


class SchedulerConfig(BaseModel):
    tick_s: float = Field(0.5, gt=0, description="How often due schedules are looked for.")


def slot_key(schedule_id: str, slot_at: datetime) -> str:
    """The Idempotency-Key a slot's task is submitted with."""
    return f"schedule:{schedule_id}:{slot_at.isoformat()}"


class Scheduler:
    async def __init__(self, settings: Settings, config: SchedulerConfig):
        self.settings = settings
        self.config = config
        self.store = EventStore(settings.db_url)
        await self.store.migrate()
        self.schedules = ScheduleStore(self.store)
        self._gateway: Any = None
        self.loop = asyncio.get_running_loop().create_task(self._run())

    async def ping(self) -> dict[str, Any]:
        return {"store": fingerprint(self.settings.db_url), "app_name": self.settings.app_name}

    def _gateway_handle(self) -> Any:
        if self._gateway is None:
            from ray import serve

            self._gateway = serve.get_deployment_handle("Gateway", app_name=self.settings.app_name)
        return self._gateway

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("schedule pass failed; retrying")
            await asyncio.sleep(self.config.tick_s)

    async def tick(self) -> None:
        now = utcnow()
        for row in await self.schedules.due(now):
            await self._decide(row, now)
        for run in await self.schedules.claimed():
            row = await self.schedules.get(run.schedule_id)
            if row is not None:
                await self._submit(row, run.slot_at)

    async def _running(self, row: ScheduleRow) -> bool:
        if row.last_task_id is None:
            return False
        task = await self.store.get(row.last_task_id)
        return task is not None and not task.status.terminal

    async def _decide(self, row: ScheduleRow, now: datetime) -> None:
        fire, next_at = due_slots(row.spec, row.next_at, now, row.anchor)
        if row.spec.overlap == Overlap.queue and await self._running(row):
            return  # the slot waits (next_at stays) until the previous run ends
        if not await self.schedules.advance(row, next_at):
            return  # another scheduler decided these slots
        for slot in fire:
            if row.spec.overlap == Overlap.skip and await self._running(row):
                await self.schedules.claim(row.schedule_id, slot, state="skipped",
                                           detail=f"task {row.last_task_id} was still running")
                continue
            if await self.schedules.claim(row.schedule_id, slot):
                await self._submit(row, slot)
                row = await self.schedules.get(row.schedule_id) or row

    async def _submit(self, row: ScheduleRow, slot: datetime) -> None:
        task = {**row.spec.task, "metadata": {**row.spec.task.get("metadata", {}), "schedule_id": row.schedule_id,
                                             "schedule_name": row.spec.name, "schedule_slot": slot.isoformat()}}
        try:
            result = await self._gateway_handle().submit_internal.remote(
                row.tenant, task, row.created_by or f"schedule:{row.schedule_id}", slot_key(row.schedule_id, slot))
        except Exception as exc:  # the app is redeploying: the claimed slot is submitted at a later pass
            self._gateway = None
            log.warning("schedule %s slot %s: could not submit (%s); trying again", row.schedule_id, slot,
                        type(exc).__name__)
            return
        if "task_id" in result:
            await self.schedules.fired(row.schedule_id, slot, result["task_id"])
        else:  # refused: a full queue or a rate limit passes (the slot stays claimed); an invalid task does not
            await self.schedules.note(row.schedule_id, slot, result.get("error", "refused"),
                                      state=None if result.get("retry") else "refused")


def scheduler_name(settings: Settings) -> str:
    return f"{settings.app_name}-scheduler"


async def get_or_create_scheduler(settings: Settings, config: SchedulerConfig) -> Any:
    return await get_or_create_detached(SchedulerActor, scheduler_name(settings), settings, config)


SchedulerActor = ray.remote(Scheduler)

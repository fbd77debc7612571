"""Durable schedules and their slots. A slot is claimed by inserting its row (primary key
schedule_id + slot_at), so however many schedulers run, and however often they restart, each
slot is decided once."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from memory.schema import schedule_runs, schedules
from memory.store import EventStore, _utc
from troupe.models import utcnow
from troupe.schedules import ScheduleSpec, next_slot

__all__ = ["ScheduleRow", "ScheduleStore", "SlotRun"]


@dataclass(frozen=True)
class ScheduleRow:
    schedule_id: str
    tenant: str
    spec: ScheduleSpec
    paused: bool
    anchor: datetime
    next_at: datetime
    last_task_id: str | None
    created_by: str | None
    created_at: datetime

    def public(self) -> dict[str, Any]:
        return {"schedule_id": self.schedule_id, "tenant": self.tenant, **self.spec.model_dump(mode="json"),
                "paused": self.paused, "next_at": None if self.paused else self.next_at.isoformat(),
                "last_task_id": self.last_task_id, "created_at": self.created_at.isoformat(),
                "links": {"self": f"/v1/schedules/{self.schedule_id}"}}


@dataclass(frozen=True)
class SlotRun:
    schedule_id: str
    slot_at: datetime
    state: str
    task_id: str | None
    detail: str | None

    def public(self) -> dict[str, Any]:
        return {"slot_at": self.slot_at.isoformat(), "state": self.state, "task_id": self.task_id,
                "detail": self.detail}


def _row(r: Any) -> ScheduleRow:
    return ScheduleRow(r.schedule_id, r.tenant, ScheduleSpec.model_validate(r.spec), bool(r.paused), _utc(r.anchor),
                       _utc(r.next_at), r.last_task_id, r.created_by, _utc(r.created_at))


def _run(r: Any) -> SlotRun:
    return SlotRun(r.schedule_id, _utc(r.slot_at), r.state, r.task_id, r.detail)


class DuplicateSchedule(ValueError):
    def __init__(self, tenant: str, name: str):
        super().__init__(f"tenant {tenant!r} already has a schedule named {name!r}; pick another name or PATCH it")


class ScheduleStore:
    def __init__(self, store: EventStore):
        self.store = store

    async def create(self, tenant: str, spec: ScheduleSpec, *, created_by: str | None = None) -> ScheduleRow:
        now = utcnow().replace(microsecond=0)
        values = {"schedule_id": f"sch_{uuid.uuid4().hex[:16]}", "tenant": tenant, "name": spec.name,
                  "spec": spec.model_dump(mode="json"), "paused": False, "anchor": now,
                  "next_at": next_slot(spec, now, now), "last_task_id": None, "created_by": created_by,
                  "created_at": now, "updated_at": now}
        from sqlalchemy.exc import IntegrityError

        try:
            async with self.store.writer.begin() as conn:
                await conn.execute(schedules.insert().values(**values))
        except IntegrityError:
            raise DuplicateSchedule(tenant, spec.name) from None
        return _row(type("R", (), values))

    async def get(self, schedule_id: str, *, tenant: str | None = None) -> ScheduleRow | None:
        q = select(schedules).where(schedules.c.schedule_id == schedule_id)
        if tenant is not None:
            q = q.where(schedules.c.tenant == tenant)
        async with self.store.reader.connect() as conn:
            r = (await conn.execute(q)).first()
        return _row(r) if r is not None else None

    async def list(self, tenant: str) -> list[ScheduleRow]:
        async with self.store.reader.connect() as conn:
            rows = (await conn.execute(select(schedules).where(schedules.c.tenant == tenant)
                                       .order_by(schedules.c.created_at, schedules.c.schedule_id))).all()
        return [_row(r) for r in rows]

    async def update(self, schedule_id: str, tenant: str, *, spec: ScheduleSpec | None = None,
                     paused: bool | None = None) -> ScheduleRow | None:
        row = await self.get(schedule_id, tenant=tenant)
        if row is None:
            return None
        now = utcnow()
        values: dict[str, Any] = {"updated_at": now}
        if spec is not None:
            values["spec"] = spec.model_dump(mode="json")
        if paused is not None:
            values["paused"] = paused
        if spec is not None or paused is False:  # the rule changed, or a resume: slots start from now
            values["next_at"] = next_slot(spec or row.spec, now, row.anchor)
        async with self.store.writer.begin() as conn:
            await conn.execute(update(schedules).where(schedules.c.schedule_id == schedule_id).values(**values))
        return await self.get(schedule_id, tenant=tenant)

    async def delete(self, schedule_id: str, tenant: str) -> bool:
        async with self.store.writer.begin() as conn:
            gone = (await conn.execute(delete(schedules).where(schedules.c.schedule_id == schedule_id,
                                                               schedules.c.tenant == tenant))).rowcount
            if gone:
                await conn.execute(delete(schedule_runs).where(schedule_runs.c.schedule_id == schedule_id))
        return bool(gone)

    async def due(self, now: datetime) -> list[ScheduleRow]:
        async with self.store.reader.connect() as conn:
            rows = (await conn.execute(select(schedules).where(schedules.c.paused.is_(False),
                                                               schedules.c.next_at <= now))).all()
        return [_row(r) for r in rows]

    async def advance(self, row: ScheduleRow, next_at: datetime) -> bool:
        """Move next_at on, only if nobody else did since `row` was read."""
        async with self.store.writer.begin() as conn:
            done = await conn.execute(update(schedules).where(
                schedules.c.schedule_id == row.schedule_id, schedules.c.next_at == row.next_at).values(
                next_at=next_at, updated_at=utcnow()))
        return bool(done.rowcount)

    async def claim(self, schedule_id: str, slot_at: datetime, state: str = "claimed",
                    detail: str | None = None) -> bool:
        """Insert the slot's row; False if it was decided already (by us before a restart, or by another)."""
        now = utcnow()
        async with self.store.writer.begin() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            stmt = dialect.insert(schedule_runs).values(
                schedule_id=schedule_id, slot_at=slot_at, state=state, task_id=None, detail=detail,
                created_at=now, updated_at=now).on_conflict_do_nothing(index_elements=["schedule_id", "slot_at"])
            return bool((await conn.execute(stmt)).rowcount)

    async def fired(self, schedule_id: str, slot_at: datetime, task_id: str) -> None:
        async with self.store.writer.begin() as conn:
            await conn.execute(update(schedule_runs).where(
                schedule_runs.c.schedule_id == schedule_id, schedule_runs.c.slot_at == slot_at).values(
                state="fired", task_id=task_id, detail=None, updated_at=utcnow()))
            await conn.execute(update(schedules).where(schedules.c.schedule_id == schedule_id).values(
                last_task_id=task_id))

    async def note(self, schedule_id: str, slot_at: datetime, detail: str, *, state: str | None = None) -> None:
        """Why a claimed slot is not fired yet; with `state` (`refused`), it never will be."""
        async with self.store.writer.begin() as conn:
            await conn.execute(update(schedule_runs).where(
                schedule_runs.c.schedule_id == schedule_id, schedule_runs.c.slot_at == slot_at).values(
                detail=detail[:1000], updated_at=utcnow(), **({"state": state} if state else {})))

    async def claimed(self) -> list[SlotRun]:
        """Slots claimed but not yet submitted (their scheduler died, or the submission was refused)."""
        async with self.store.reader.connect() as conn:
            rows = (await conn.execute(select(schedule_runs).where(schedule_runs.c.state == "claimed")
                                       .order_by(schedule_runs.c.slot_at))).all()
        return [_run(r) for r in rows]

    async def runs(self, schedule_id: str, *, limit: int = 100) -> list[SlotRun]:
        async with self.store.reader.connect() as conn:
            rows = (await conn.execute(select(schedule_runs).where(schedule_runs.c.schedule_id == schedule_id)
                                       .order_by(schedule_runs.c.slot_at.desc()).limit(limit))).all()
        return [_run(r) for r in rows]

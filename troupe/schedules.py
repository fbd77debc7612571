"""Schedules: when a task template fires (cron or every N seconds, in a timezone), what happens
when a run is still going (`overlap`), and which slots missed while Troupe was down still
fire (`catch_up`)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["CatchUp", "Overlap", "ScheduleSpec", "ScheduleUpdate", "due_slots", "next_slot"]

MAX_CATCH_UP = 100
"""Most missed slots `catch_up: all` fires at once."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class Overlap(str, Enum):
    skip = "skip"
    """A slot whose previous run is still going is skipped (recorded as skipped)."""
    queue = "queue"
    """The slot waits until the previous run ends, then fires."""
    allow = "allow"
    """Runs may overlap."""


class CatchUp(str, Enum):
    none = "none"
    """Slots missed while Troupe was down are skipped."""
    latest = "latest"
    """Of the missed slots, only the latest fires."""
    all = "all"
    """Every missed slot fires (at most MAX_CATCH_UP)."""


class ScheduleSpec(BaseModel):
    """What `POST /v1/schedules` takes."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Unique per tenant.")
    cron: str | None = Field(None, description="A 5-field cron expression, e.g. '0 9 * * mon-fri'.")
    every_s: float | None = Field(None, ge=1, le=366 * 86400, description="Or: fire every so many seconds.")
    timezone: str = Field("UTC", description="IANA timezone the cron expression is read in.")
    task: dict[str, Any] = Field(description="The task each slot submits: the body of POST /v1/tasks.")
    overlap: Overlap = Overlap.skip
    catch_up: CatchUp = CatchUp.latest
    grace_s: float = Field(60.0, gt=0, description="A slot fired within this long of its time is on time "
                                                   "(not a missed one for catch_up).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"name {v!r} must match {_NAME.pattern}")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {v!r}; use an IANA name such as 'Europe/Paris'") from None
        return v

    @model_validator(mode="after")
    def _one_rule(self) -> ScheduleSpec:
        if (self.cron is None) == (self.every_s is None):
            raise ValueError(f"give exactly one of cron or every_s; got cron={self.cron!r}, every_s={self.every_s!r}")
        if self.cron is not None:
            from croniter import croniter

            if not croniter.is_valid(self.cron):
                raise ValueError(f"cron {self.cron!r} is not a valid cron expression (5 fields: min hour day "
                                 "month weekday)")
        return self


class ScheduleUpdate(BaseModel):
    """What `PATCH /v1/schedules/{id}` takes: the fields to change."""

    model_config = ConfigDict(extra="forbid")

    cron: str | None = None
    every_s: float | None = Field(None, ge=1, le=366 * 86400)
    timezone: str | None = None
    task: dict[str, Any] | None = None
    overlap: Overlap | None = None
    catch_up: CatchUp | None = None
    grace_s: float | None = Field(None, gt=0)


def next_slot(spec: ScheduleSpec, after: datetime, anchor: datetime) -> datetime:
    """The first slot strictly after `after` (UTC). `every_s` slots are anchor + k * every_s."""
    if spec.every_s is not None:
        k = int((after - anchor).total_seconds() // spec.every_s) + 1
        slot = anchor + timedelta(seconds=k * spec.every_s)
        while slot <= after:  # float rounding
            slot += timedelta(seconds=spec.every_s)
        return slot.replace(microsecond=(slot.microsecond // 1000) * 1000)
    from croniter import croniter

    tz = ZoneInfo(spec.timezone)
    return croniter(spec.cron, after.astimezone(tz)).get_next(datetime).astimezone(timezone.utc)


def due_slots(spec: ScheduleSpec, next_at: datetime, now: datetime, anchor: datetime) -> tuple[list[datetime], datetime]:
    """The slots to fire now (from `next_at` up to `now`, after catch_up) and the next slot after now."""
    slots: list[datetime] = []
    slot = next_at
    while slot <= now and len(slots) < 10_000:
        slots.append(slot)
        slot = next_slot(spec, slot, anchor)
    if slot <= now:  # more than we walk: start again from now
        slot = next_slot(spec, now, anchor)
    on_time = [s for s in slots if (now - s).total_seconds() <= spec.grace_s]
    missed = [s for s in slots if s not in on_time]
    if spec.catch_up == CatchUp.none:
        fire = on_time
    elif spec.catch_up == CatchUp.latest:
        fire = on_time or missed[-1:]
    else:
        fire = (missed + on_time)[-MAX_CATCH_UP:]
    return fire, slot

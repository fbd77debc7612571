"""Webhooks: subscriptions, the durable outbox of deliveries, and inbound triggers.

A delivery row is written in the same transaction as the status event that causes it
(`enqueue_deliveries`, called by EventStore's append), so no event a subscriber asked for is
lost to a crash between the two; the WebhookOutbox actor sends and retries them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, select, update

from memory.schema import tasks, triggers, webhook_deliveries, webhooks
from troupe.models import EventType, TaskStatus, utcnow
from troupe.signing import new_secret

__all__ = ["EVENTS", "WebhookStore", "enqueue_deliveries", "webhook_event"]

EVENTS = ("done", "failed", "waiting_for_input", "budget")
"""What a subscription may ask for: a task ended (done, failed), needs a person, or hit its budget."""


def webhook_event(payload: dict[str, Any]) -> str | None:
    """The webhook event a `task.status` payload is, if any."""
    status = payload.get("status")
    if status == TaskStatus.waiting_for_input.value:
        return "budget" if payload.get("waiting_on") == "budget" else "waiting_for_input"
    return status if status in ("done", "failed") else None


def enqueue_deliveries(conn: Connection, task_id: str, written: list[tuple[int, Any]]) -> None:
    """In the append's transaction: one pending delivery per subscription to each status event."""
    wanted = [(seq, e, ev) for seq, e in written if e.type == EventType.status
              and (ev := webhook_event(e.payload)) is not None]
    if not wanted:
        return
    tenant = select(tasks.c.tenant).where(tasks.c.task_id == task_id).scalar_subquery()
    subs = conn.execute(select(webhooks.c.webhook_id, webhooks.c.tenant, webhooks.c.events)
                        .where(webhooks.c.tenant == tenant)).all()
    now = utcnow()
    rows = [{"delivery_id": f"dlv_{uuid.uuid4().hex[:20]}", "webhook_id": s.webhook_id, "tenant": s.tenant,
             "event": ev, "task_id": task_id, "seq": seq, "state": "pending", "attempts": 0, "next_at": now,
             "payload": {"event": ev, "task_id": task_id, "tenant": s.tenant, "seq": seq,
                         "status": e.payload.get("status"), "reason": e.payload.get("reason"),
                         "at": now.isoformat()},
             "last_status": None, "last_error": None, "created_at": now, "updated_at": now}
            for seq, e, ev in wanted for s in subs if ev in (s.events or [])]
    if rows:
        conn.execute(webhook_deliveries.insert(), rows)


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    webhook_id: str
    url: str
    secret: str
    event: str
    payload: dict[str, Any]
    attempts: int


class WebhookStore:
    def __init__(self, store: Any):
        self.store = store  # memory.store.EventStore

    # -- subscriptions ------------------------------------------------------------------

    async def create(self, tenant: str, url: str, events: list[str], *, created_by: str | None = None
                     ) -> dict[str, Any]:
        row = {"webhook_id": f"wh_{uuid.uuid4().hex[:16]}", "tenant": tenant, "url": url, "events": events,
               "secret": new_secret(), "created_by": created_by, "created_at": utcnow()}
        async with self.store.writer.begin() as conn:
            await conn.execute(webhooks.insert().values(**row))
        return row

    async def list(self, tenant: str) -> list[dict[str, Any]]:
        async with self.store.reader.connect() as conn:
            rows = (await conn.execute(select(webhooks).where(webhooks.c.tenant == tenant)
                                       .order_by(webhooks.c.created_at))).all()
        return [_public(r._mapping) for r in rows]

    async def get(self, webhook_id: str, tenant: str) -> dict[str, Any] | None:
        async with self.store.reader.connect() as conn:
            r = (await conn.execute(select(webhooks).where(webhooks.c.webhook_id == webhook_id,
                                                           webhooks.c.tenant == tenant))).first()
        return _public(r._mapping) if r is not None else None

    async def delete(self, webhook_id: str, tenant: str) -> bool:
        async with self.store.writer.begin() as conn:
            gone = (await conn.execute(delete(webhooks).where(webhooks.c.webhook_id == webhook_id,
                                                              webhooks.c.tenant == tenant))).rowcount
        return bool(gone)

    async def deliveries(self, webhook_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        async with self.store.reader.connect() as conn:
            rows = (await conn.execute(select(webhook_deliveries).where(webhook_deliveries.c.webhook_id == webhook_id)
                                       .order_by(webhook_deliveries.c.created_at.desc()).limit(limit))).all()
        return [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r._mapping.items()} for r in rows]

    # -- the outbox ---------------------------------------------------------------------

    async def due(self, now: datetime, lease_s: float, *, limit: int = 100) -> list[Delivery]:
        """Pending deliveries whose time has come, leased for `lease_s` (a sender that dies
        mid-way leaves them to be sent again after it)."""
        q = (select(webhook_deliveries, webhooks.c.url, webhooks.c.secret)
             .join(webhooks, webhooks.c.webhook_id == webhook_deliveries.c.webhook_id)
             .where(webhook_deliveries.c.state == "pending", webhook_deliveries.c.next_at <= now)
             .order_by(webhook_deliveries.c.next_at).limit(limit))
        async with self.store.writer.begin() as conn:
            rows = (await conn.execute(q)).all()
            if rows:
                await conn.execute(update(webhook_deliveries).where(
                    webhook_deliveries.c.delivery_id.in_([r.delivery_id for r in rows])).values(
                    next_at=now + timedelta(seconds=lease_s)))
        return [Delivery(r.delivery_id, r.webhook_id, r.url, r.secret, r.event, r.payload, r.attempts) for r in rows]

    async def finish(self, d: Delivery, *, ok: bool, status: int | None, error: str | None,
                     retry_in_s: float | None) -> None:
        """Record an attempt: delivered, retried after `retry_in_s`, or (None) given up."""
        now = utcnow()
        state = "delivered" if ok else ("pending" if retry_in_s is not None else "failed")
        async with self.store.writer.begin() as conn:
            await conn.execute(update(webhook_deliveries).where(webhook_deliveries.c.delivery_id == d.delivery_id)
                               .values(state=state, attempts=d.attempts + 1, last_status=status,
                                       last_error=(error or None) and error[:1000], updated_at=now,
                                       next_at=now + timedelta(seconds=retry_in_s or 0)))

    # -- triggers -----------------------------------------------------------------------

    async def create_trigger(self, tenant: str, name: str, task: dict[str, Any], *,
                             created_by: str | None = None) -> dict[str, Any]:
        row = {"trigger_id": f"trg_{uuid.uuid4().hex[:16]}", "tenant": tenant, "name": name, "task": task,
               "secret": new_secret(), "created_by": created_by, "created_at": utcnow()}
        async with self.store.writer.begin() as conn:
            await conn.execute(triggers.insert().values(**row))
        return row

    async def trigger(self, trigger_id: str, tenant: str | None = None) -> dict[str, Any] | None:
        q = select(triggers).where(triggers.c.trigger_id == trigger_id)
        if tenant is not None:
            q = q.where(triggers.c.tenant == tenant)
        async with self.store.reader.connect() as conn:
            r = (await conn.execute(q)).first()
        return dict(r._mapping) if r is not None else None

    async def triggers(self, tenant: str) -> list[dict[str, Any]]:
        async with self.store.reader.connect() as conn:
            rows = (await conn.execute(select(triggers).where(triggers.c.tenant == tenant)
                                       .order_by(triggers.c.created_at))).all()
        return [_public(r._mapping) for r in rows]

    async def delete_trigger(self, trigger_id: str, tenant: str) -> bool:
        async with self.store.writer.begin() as conn:
            gone = (await conn.execute(delete(triggers).where(triggers.c.trigger_id == trigger_id,
                                                              triggers.c.tenant == tenant))).rowcount
        return bool(gone)


def _public(row: Any) -> dict[str, Any]:
    """A row without its secret, timestamps as ISO strings."""
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items() if k != "secret"}

"""WebhookOutbox: a detached actor that sends the outbox's deliveries (memory/webhooks.py) as
signed POSTs (troupe/signing.py), under the egress policy, retrying with backoff until the
receiver answers 2xx or max_attempts is spent. Its state is the outbox table: a restart loses
nothing; a delivery in flight when it died is sent again after its lease (receivers dedupe by
the `Troupe-Delivery` header)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import ray
from pydantic import BaseModel, Field

from actors.detached import get_or_create_detached
from memory.store import EventStore
from memory.webhooks import Delivery, WebhookStore
from tools.egress import EgressDenied, check_url
from troupe.models import utcnow
from troupe.secrets import fingerprint
from troupe.settings import Settings
from troupe.signing import HEADER, sign

__all__ = ["WebhookOutboxConfig", "get_or_create_outbox"]

log = logging.getLogger("troupe.webhooks")


class WebhookOutboxConfig(BaseModel):
    poll_s: float = Field(0.5, gt=0, description="How often the outbox is looked at.")
    timeout_s: float = Field(10.0, gt=0, description="Longest wait for a receiver's answer.")
    backoff_s: float = Field(2.0, gt=0, description="Wait before the first retry; doubled after each failure.")
    max_backoff_s: float = Field(600.0, gt=0)
    max_attempts: int = Field(12, ge=1, description="Attempts before a delivery is marked failed.")


class WebhookOutbox:
    async def __init__(self, settings: Settings, config: WebhookOutboxConfig):
        self.settings = settings
        self.config = config
        self.store = EventStore(settings.db_url)
        await self.store.migrate()
        self.webhooks = WebhookStore(self.store)
        self.http = httpx.AsyncClient(timeout=config.timeout_s, follow_redirects=False)
        self.loop = asyncio.get_running_loop().create_task(self._run())

    async def ping(self) -> dict[str, Any]:
        return {"store": fingerprint(self.settings.db_url)}

    async def _run(self) -> None:
        while True:
            try:
                due = await self.webhooks.due(utcnow(), lease_s=self.config.timeout_s * 3)
                await asyncio.gather(*(self.send(d) for d in due))
            except Exception:
                log.exception("outbox pass failed; retrying")
            await asyncio.sleep(self.config.poll_s)

    async def send(self, d: Delivery) -> None:
        body = json.dumps(d.payload, separators=(",", ":")).encode()
        status, error = None, None
        try:
            await check_url(d.url)
            r = await self.http.post(d.url, content=body, headers={
                "Content-Type": "application/json", HEADER: sign(d.secret, body), "Troupe-Event": d.event,
                "Troupe-Delivery": d.delivery_id, "User-Agent": "troupe-webhooks"})
            status = r.status_code
            if 200 <= status < 300:
                await self.webhooks.finish(d, ok=True, status=status, error=None, retry_in_s=None)
                return
            error = f"the receiver answered {status}"
        except EgressDenied as exc:  # the policy will not change by retrying
            await self.webhooks.finish(d, ok=False, status=None, error=str(exc), retry_in_s=None)
            return
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        attempts = d.attempts + 1
        retry = None if attempts >= self.config.max_attempts else min(
            self.config.max_backoff_s, self.config.backoff_s * 2 ** (attempts - 1))
        await self.webhooks.finish(d, ok=False, status=status, error=error, retry_in_s=retry)


def outbox_name(settings: Settings) -> str:
    return f"{settings.app_name}-webhooks"


async def get_or_create_outbox(settings: Settings, config: WebhookOutboxConfig) -> Any:
    return await get_or_create_detached(WebhookOutboxActor, outbox_name(settings), settings, config)


WebhookOutboxActor = ray.remote(WebhookOutbox)

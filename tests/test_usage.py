"""Model usage sums (memory/usage.py) on SQLite and PostgreSQL: task calls from `llm.called`
events by the task's tenant, API calls from `model_usage`, grouped by tenant, model or day."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from memory.access import AccessStore
from memory.store import EventStore, NewEvent
from memory.usage import usage
from troupe.models import EventType, Priority


def _call(group: str, tokens_in: int, tokens_out: int, cost: float) -> NewEvent:
    return NewEvent(EventType.llm_called, {"purpose": "plan", "group": group, "model": f"openai/{group}",
                                           "tokens_in": tokens_in, "tokens_out": tokens_out, "cost_usd": cost})


@pytest.mark.asyncio
async def test_usage_by_tenant_model_and_day(any_store_url):
    store, access = EventStore(any_store_url), AccessStore(any_store_url)
    await store.migrate()
    try:
        for task_id, tenant in (("t-a", "acme"), ("t-b", "bolt")):
            await store.create_task(task_id, tenant=tenant, goal="g", priority=Priority.normal, payload={})
        await store.append("t-a", [_call("reason", 100, 10, 0.5), _call("fast", 20, 2, 0.25),
                                   NewEvent(EventType.status, {"status": "executing"})])
        await store.append("t-b", [_call("fast", 1, 1, 0.125)])
        await access.record_model_usage(tenant="acme", key_id="key_1", model="fast", tokens_in=5, tokens_out=5,
                                        cost_usd=1.0, streamed=False)
        now = datetime.now(timezone.utc)
        window = {"since": now - timedelta(hours=1), "until": now + timedelta(minutes=1)}

        by_tenant = await usage(store.reader, "tenant", **window)
        assert by_tenant == [
            {"key": "acme", "calls": 3, "tokens_in": 125, "tokens_out": 17, "cost_usd": 1.75},
            {"key": "bolt", "calls": 1, "tokens_in": 1, "tokens_out": 1, "cost_usd": 0.125}]
        by_model = await usage(store.reader, "model", tenant="acme", **window)
        assert [(r["key"], r["calls"], r["cost_usd"]) for r in by_model] == [("fast", 2, 1.25), ("reason", 1, 0.5)]
        [today] = await usage(store.reader, "day", **window)
        assert today["key"] == now.date().isoformat() and today["calls"] == 4
        # Nothing outside the window.
        assert await usage(store.reader, "tenant", since=now + timedelta(minutes=1),
                           until=now + timedelta(hours=1)) == []
    finally:
        await store.close()
        await access.close()

"""Hot memory (memory/hot.py) on the machine's real Redis, each test under a key prefix of its
own: per-tenant eviction of the least recent unpinned entries, TTL refreshed on read, and a
Redis that is down read as misses, never as errors."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from memory.hot import HotEntry, HotStore
from tests.support.hot import REDIS_URL, hot_store
from tests.support.hot import hot_prefix  # noqa: F401  (a fixture)


@pytest.fixture
def prefix(hot_prefix):  # noqa: F811
    return hot_prefix


def hot(prefix: str, **kw) -> HotStore:
    return hot_store(prefix, **kw)


async def test_eviction_keeps_pinned_drops_least_recent_unpinned_and_spares_other_tenants(prefix):
    store = hot(prefix, tenant_budgets={"acme": 3000})
    size = lambda tenant, name, value: len(store.key(tenant, "t1", name)) + len(value)  # noqa: E731
    pins = [HotEntry("t1", f"pin{i}", "P" * 400, pinned=True) for i in range(2)]
    await store.put("acme", pins)
    await store.put("globex", [HotEntry("t9", f"g{i}", "G" * 500) for i in range(5)])
    live: list[str] = []  # acme's unpinned names, least recent first, as an LRU would keep them
    for i in range(12):
        await asyncio.sleep(0.003)  # recency is Redis's clock in ms: keep the order unambiguous
        evicted = await store.put("acme", [HotEntry("t1", f"u{i}", "U" * 300)])
        live.append(f"u{i}")
        budget_left = 3000 - sum(size("acme", p.name, p.value) for p in pins)
        expected = []
        while sum(size("acme", n, "U" * 300) for n in live) > budget_left:
            expected.append(live.pop(0))
        assert evicted == [store.key("acme", "t1", n) for n in expected], i
        if i == 6:  # a read makes the oldest one the most recent: it outlives younger ones
            await asyncio.sleep(0.003)
            refreshed = live.pop(0)
            assert await store.get("acme", "t1", [refreshed]) == ["U" * 300]
            live.append(refreshed)

    names = [p.name for p in pins] + [f"u{i}" for i in range(12)]
    values = dict(zip(names, await store.get("acme", "t1", names), strict=True))
    assert all(values[p.name] == "P" * 400 for p in pins)
    assert {n for n in names if n.startswith("u") and values[n]} == set(live)
    # The one read at i=6 outlived younger entries that were not read.
    assert refreshed in live and any(f"u{i}" not in live for i in range(int(refreshed[1:]) + 1, 12))
    assert await store.used_bytes("acme") <= 3000
    # The other tenant has its own budget: nothing of it was touched.
    assert await store.get("globex", "t9", [f"g{i}" for i in range(5)]) == ["G" * 500] * 5
    # Pinned entries past the whole budget stay; every unpinned entry makes way for them.
    await store.put("acme", [HotEntry("t1", "big", "B" * 3000, pinned=True)])
    assert await store.get("acme", "t1", ["big", "pin0", *live]) == ["B" * 3000, "P" * 400] + [None] * len(live)
    await store.close()


async def test_a_read_refreshes_the_ttl_and_an_unread_entry_expires(prefix):
    store = hot(prefix, ttl_s=2, pinned_ttl_s=2)
    await store.put("acme", [HotEntry("t1", "read", "r"), HotEntry("t1", "unread", "u")])
    await asyncio.sleep(1.3)
    client = aioredis.Redis.from_url(REDIS_URL)
    assert await client.pttl(store.key("acme", "t1", "read")) < 800
    assert await store.get("acme", "t1", ["read"]) == ["r"]
    assert await client.pttl(store.key("acme", "t1", "read")) > 1800  # refreshed by the read
    await asyncio.sleep(1.0)
    assert await store.get("acme", "t1", ["read", "unread"]) == ["r", None]
    # The expired entry no longer counts against the budget.
    assert await store.used_bytes("acme") == len(store.key("acme", "t1", "read")) + 1
    await client.aclose()
    await store.close()


async def test_drop_task_forgets_pinned_entries_too(prefix):
    store = hot(prefix)
    await store.put("acme", [HotEntry("t1", "pins", "p", pinned=True), HotEntry("t1", "out", "o"),
                             HotEntry("t2", "pins", "q", pinned=True)])
    await store.drop_task("acme", "t1")
    assert await store.get("acme", "t1", ["pins", "out"]) == [None, None]
    assert await store.get("acme", "t2", ["pins"]) == ["q"]
    assert await store.used_bytes("acme") == len(store.key("acme", "t2", "pins")) + 1
    await store.close()


async def test_redis_down_is_a_miss_and_is_not_asked_again_at_once(prefix):
    from tests.conftest import free_port

    store = HotStore(f"redis://127.0.0.1:{free_port()}/0", prefix, budget_bytes=4096, ttl_s=1, pinned_ttl_s=1)
    assert await store.get("acme", "t1", ["a", "b"]) == [None, None]
    assert await store.put("acme", [HotEntry("t1", "a", "v")]) is None
    started = time.monotonic()
    assert await store.get("acme", "t1", ["a"]) == [None]  # within retry_s: not even tried
    assert time.monotonic() - started < 0.05
    await store.close()


def test_bad_settings_and_tenants_say_what_to_fix(prefix):
    with pytest.raises(ValueError, match=r"pinned_ttl_s \(1\) >= ttl_s"):
        hot(prefix, ttl_s=5, pinned_ttl_s=1)
    with pytest.raises(ValueError, match="no braces"):
        hot(prefix).key("a{b}", "t", "n")
    from troupe.settings import Settings

    with pytest.raises(ValueError, match=r"hot_pinned_ttl_s \(10\) must be greater than or equal to hot_ttl_s \(60\)"):
        Settings(hot_ttl_s=60, hot_pinned_ttl_s=10)
    with pytest.raises(ValueError, match="below the 4096-byte minimum"):
        Settings(hot_tenant_budget_bytes={"acme": 10})

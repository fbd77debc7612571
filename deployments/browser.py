"""BrowserPool: a Serve deployment with one Chromium per replica and a session per task.

Tools reach it through `BrowserPoolClient(handle)` as `ctx.extras["browser"]`. A session lives
in one replica, so every call names the task as its multiplexed model id: Serve routes an id
to the replica that already holds it (best effort; a session that lands elsewhere starts
fresh and says so with `new_session`). Every call also names the task's tenant: a session
belongs to its tenant, and `web_search` reads only that tenant's pages on the replica.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from deployments import INTERNAL_LOGGING
from tools.web.browser_pool import BrowserPool as Pool
from tools.web.config import BrowserPoolConfig
from tools.web.errors import BrowserLost
from tools.web.telemetry import traced_op
from troupe import metrics
from troupe.tracing import carrier, setup_tracing

__all__ = ["BrowserPool", "BrowserPoolClient"]

# Session ids a replica advertises for routing. Above max_sessions on purpose: Serve drops the
# least recently used id past this, and with it the session (see _Affinity.__del__).
_ROUTED_SESSIONS = 64
OPERATIONS = ("browse", "click", "fill", "submit", "screenshot", "extract", "crawl", "search_local", "release")


class _Affinity:
    """What Serve's multiplexer caches per session id. Serve calls __del__ (from a worker thread)
    when it evicts the id; the session goes with it."""

    def __init__(self, pool: Pool, session_id: str):
        self._pool, self._id = pool, session_id
        self._loop = asyncio.get_running_loop()
        self._done = False

    def __del__(self) -> None:
        if self._done:
            return
        self._done = True
        with contextlib.suppress(RuntimeError):  # the loop is gone at interpreter exit
            asyncio.run_coroutine_threadsafe(self._pool.release(self._id), self._loop)


@serve.deployment(
    name="BrowserPool",
    logging_config=INTERNAL_LOGGING,
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=32,
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8},
    health_check_period_s=10,
    health_check_timeout_s=60,  # room for one in-place relaunch
    graceful_shutdown_timeout_s=10,
)
class BrowserPool:
    def __init__(self) -> None:
        self.pool = Pool(BrowserPoolConfig())
        self._started: asyncio.Task | None = None
        self._launches_reported = 0
        setup_tracing("troupe-browser")

    def _report(self) -> None:
        """Sessions and launches for Prometheus: after each operation and each health check (every
        10 s), so the gauge stays exported while the replica lives."""
        launches = self.pool.launches
        metrics.browser_pool(self.pool.open_sessions, launches - self._launches_reported)
        self._launches_reported = launches

    async def _ready(self) -> Pool:
        if self._started is None:  # Serve's constructor can't await; the first caller launches
            self._started = asyncio.ensure_future(self.pool.start())
        try:
            await asyncio.shield(self._started)
        except Exception:
            self._started = None  # let the next call (or health check) try again
            raise
        return self.pool

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        await self.pool.reconfigure(BrowserPoolConfig.model_validate(user_config or {}))

    async def check_health(self) -> None:
        """A hung or crashed browser is relaunched in place; only when that fails does this
        raise, and Serve replaces the replica."""
        try:
            await (await self._ready()).check_health(relaunch=True)
        finally:
            self._report()

    @serve.multiplexed(max_num_models_per_replica=_ROUTED_SESSIONS)
    async def _affinity(self, session_id: str) -> _Affinity:
        return _Affinity(self.pool, session_id)

    async def _op(self, name: str, session_id: str, *args: Any, trace: dict[str, str] | None = None,
                  **kwargs: Any) -> Any:
        """Run a pool operation; `trace` is the calling tool span's carrier (BrowserPoolClient)."""

        async def run() -> Any:
            await self._affinity(session_id)
            return await getattr(await self._ready(), name)(session_id, *args, **kwargs)

        ok = False
        try:
            result = await traced_op(run, name, session_id, args, kwargs, trace=trace)
            ok = True
            return result
        finally:
            metrics.browser_op(name, ok)
            self._report()

    async def browse(self, session_id: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return await self._op("browse", session_id, *args, **kwargs)

    async def click(self, session_id: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return await self._op("click", session_id, *args, **kwargs)

    async def fill(self, session_id: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return await self._op("fill", session_id, *args, **kwargs)

    async def submit(self, session_id: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return await self._op("submit", session_id, *args, **kwargs)

    async def screenshot(self, session_id: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return await self._op("screenshot", session_id, *args, **kwargs)

    async def extract(self, session_id: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return await self._op("extract", session_id, *args, **kwargs)

    async def crawl(self, session_id: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return await self._op("crawl", session_id, *args, **kwargs)

    async def search_local(self, session_id: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return await self._op("search_local", session_id, *args, **kwargs)

    async def release(self, session_id: str) -> bool:
        """End a task's session (call when the task ends); idle ones also expire on their own."""
        return await (await self._ready()).release(session_id)

    async def stats(self) -> dict[str, Any]:
        return (await self._ready()).stats()

    async def __del__(self) -> None:
        await self.pool.close()


class BrowserPoolClient:
    """The pool as tools see it (`ctx.extras["browser"]`): the same methods as the plain
    `tools.web.BrowserPool`, each routed to the replica that holds the task's session."""

    def __init__(self, handle: DeploymentHandle):
        self._handle = handle

    def __getattr__(self, op: str) -> Any:
        if op not in OPERATIONS:
            raise AttributeError(f"BrowserPool has no operation {op!r}; it has {', '.join(OPERATIONS)}")

        async def call(session_id: str, *args: Any, **kwargs: Any) -> Any:
            handle = self._handle.options(multiplexed_model_id=session_id)
            if op != "release":  # the browser span continues the tool call's (troupe/tracing.py)
                kwargs["trace"] = carrier()
            try:
                return await getattr(handle, op).remote(session_id, *args, **kwargs)
            except RayActorError as exc:
                # The replica died under the call: a read is retried on a live one; whether a
                # click or a submit took effect is unknown, so those are not (tools/executor.py).
                raise BrowserLost(op, f"its replica died ({type(exc).__name__})") from None

        return call

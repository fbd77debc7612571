"""Supervisor: the detached actor that owns dispatch.

Its queue is durable (the `dispatch_state` column of the tasks table), so the actor holds
nothing that a restart loses. A restarted Supervisor leaves dispatched tasks to the drivers
that still run them (their Conductor requests outlive the Supervisor) and lets its watchdog
re-dispatch, under a new lease epoch that fences the old driver, only those whose driver's
heartbeat has gone silent. It keeps tasks `queued` (with a visible position) while the
Conductor is at capacity, rather than piling requests into Serve's queues; the running
counts behind its caps are read from the store, so they hold across restarts too.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import ray
from pydantic import BaseModel, Field
from ray.exceptions import ActorDiedError, RayTaskError

from actors.redis_server import event_bus
from memory.store import (
    DISPATCHED,
    DRIVER_HEARTBEAT_S,
    DRIVER_SILENT_BEATS,
    PENDING,
    WAITING,
    EventStore,
    NewEvent,
    StaleLease,
)
from troupe import metrics
from troupe.models import EventType, TaskStatus, utcnow
from troupe.secrets import fingerprint
from troupe.settings import Settings

__all__ = ["SupervisorConfig", "Supervisor", "get_or_create_supervisor", "supervisor_name"]

log = logging.getLogger("troupe.supervisor")


class SupervisorConfig(BaseModel):
    max_running_tasks: int = Field(1000, ge=1, description="Tasks driven at once across all Conductor replicas.")
    max_running_per_tenant: int = Field(200, ge=1, description="Cap per tenant, so one cannot starve the others.")
    poll_s: float = Field(1.0, gt=0, description="Queue scan period when nothing wakes the loop.")
    max_backoff_s: float = Field(10.0, gt=0, description="Longest wait between re-dispatch attempts.")
    max_conductor_errors: int = Field(3, ge=1, description="Conductor exceptions before a task is failed.")
    model_probe_s: float = Field(5.0, gt=0, description="While tasks wait on a model: how often the LLM router is "
                                                        "probed to learn whether they can go on (doubling while it "
                                                        "fails, up to max_model_probe_s).")
    max_model_probe_s: float = Field(300.0, gt=0, description="Longest wait between model probes, and between two "
                                                              "wake-ups of one task that keeps finding no model.")


def supervisor_name(settings: Settings) -> str:
    return f"{settings.app_name}-supervisor"


class Supervisor:
    async def __init__(self, settings: Settings, config: SupervisorConfig):
        self.settings = settings
        self.config = config
        self.store = EventStore(settings.db_url)
        self.store.bus = event_bus(settings)
        await self.store.migrate()
        self.inflight: dict[str, asyncio.Task] = {}
        self.responses: dict[str, Any] = {}
        self.wake = asyncio.Event()
        self._handle: Any = None
        self._router: Any = None
        self._next_probe = 0.0
        self._probe_every_s = config.model_probe_s
        self._woken: dict[str, tuple[int, float]] = {}
        """Tasks woken for a model: task -> (times, not again before), so one whose model keeps failing
        (another group answered the probe) is woken less and less often."""
        running = await self.store.dispatched_by_tenant()
        log.info("supervisor started; %d dispatched tasks left to their drivers (the watchdog takes over those "
                 "whose driver is silent)", sum(running.values()))
        self.loop = asyncio.get_running_loop().create_task(self._dispatch_loop())

    # -- called by the gateway --------------------------------------------------------

    async def ping(self) -> dict[str, Any]:
        return {"store": fingerprint(self.settings.db_url), "app_name": self.settings.app_name, "running": len(self.inflight)}

    async def kick(self) -> None:
        """Something was queued: look at the queue now rather than at the next poll."""
        self.wake.set()

    async def cancel(self, task_id: str) -> None:
        """The cancel request is already in the log; make it take effect promptly."""
        response = self.responses.get(task_id)
        if response is not None:
            response.cancel()  # the Conductor sees CancelledError and records the cancellation
            return
        epoch = await self.store.claim(task_id, from_states=(PENDING, WAITING))
        if epoch is None and task_id not in self.inflight and await self._driver_silent(task_id):
            # Dispatched, but no driver is alive to see the request: end it here.
            epoch = await self.store.claim(task_id, from_states=(DISPATCHED,))
        if epoch is not None:
            try:
                await self.store.append(task_id, [NewEvent(EventType.status, {
                    "status": TaskStatus.cancelled.value, "reason": "cancelled at the user's request"})], epoch=epoch)
                await metrics.task_ended(self.store, task_id, TaskStatus.cancelled.value)
            except StaleLease:
                pass
        # Otherwise a driver we do not track (started before our restart) holds it; it sees
        # the request in the log at its next step.

    async def stats(self) -> dict[str, Any]:
        return {"running": len(self.inflight), "by_tenant": await self.store.dispatched_by_tenant(),
                "pending": await self.store.count_pending()}

    # -- dispatch ---------------------------------------------------------------------

    def _conductor(self) -> Any:
        if self._handle is None:
            from ray import serve

            self._handle = serve.get_deployment_handle("Conductor", app_name=self.settings.app_name)
        return self._handle

    async def _dispatch_loop(self) -> None:
        passes = 0
        while True:
            try:
                await self._dispatch_ready()
                await metrics.sample_queue(self.store)
                passes += 1
                if passes % max(1, int(DRIVER_HEARTBEAT_S / self.config.poll_s)) == 0:
                    await self._watchdog()
                if time.monotonic() >= self._next_probe:
                    await self._wake_for_model()
            except Exception:
                log.exception("dispatch pass failed; retrying")
            try:
                await asyncio.wait_for(self.wake.wait(), self.config.poll_s)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()

    async def _dispatch_ready(self) -> None:
        # What runs is read from the store, not counted here: drivers dispatched before a
        # restart of this actor count against the caps too.
        running = await self.store.dispatched_by_tenant()
        room = self.config.max_running_tasks - sum(running.values())
        if room <= 0:
            return
        # Round robin over tenants with pending work: a tenant at its cap, or with a long
        # backlog, never hides another tenant's tasks.
        chosen = [r for r in await self.store.fair_pending(room, running=running,
                                                           cap=self.config.max_running_per_tenant)
                  if r.task_id not in self.inflight]
        # One transaction leases the whole pass, however many tasks it starts.
        epochs = await self.store.claim_many([r.task_id for r in chosen], from_states=(PENDING,))
        metrics.dispatched(chosen, epochs)
        for row in chosen:
            if row.task_id in epochs:
                self.inflight[row.task_id] = asyncio.create_task(self._drive(row.task_id, epochs[row.task_id]))

    async def _drive(self, task_id: str, epoch: int) -> None:
        errors, backoff = 0, 0.2
        try:
            while True:
                try:
                    response = self._conductor().run.remote(task_id, epoch)
                    self.responses[task_id] = response
                    status = await response
                    log.info("task %s stopped in %s", task_id, status)
                    return
                except asyncio.CancelledError:
                    raise
                except RayTaskError as exc:  # the Conductor itself raised: a bug, not a crash
                    errors += 1
                    log.error("task %s: conductor error %d/%d: %s", task_id, errors,
                              self.config.max_conductor_errors, exc)
                    if errors >= self.config.max_conductor_errors:
                        await self._fail(task_id, f"internal error while driving the task: {exc}"[:2000])
                        return
                except ActorDiedError as exc:  # the replica driving it is gone: re-dispatch
                    log.warning("task %s: its Conductor replica died (%s); re-dispatching", task_id,
                                type(exc).__name__)
                    self._handle = None
                except Exception as exc:  # slow, a handle hiccup, or the app redeploying
                    self._handle = None
                    log.warning("task %s: lost the Conductor call (%s); re-dispatching once its driver is silent",
                                task_id, type(exc).__name__)
                    if not await self._wait_until_driver_silent(task_id, epoch):
                        return  # its driver ended it, parked it, or a newer lease took it
                finally:
                    self.responses.pop(task_id, None)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(self.config.max_backoff_s, backoff * 2)
                # A new lease fences the old driver, in case it is still alive somewhere.
                new_epoch = await self.store.claim(task_id, from_states=(DISPATCHED,))
                if new_epoch is None:
                    return  # ended, or waiting for the user, in the meantime
                metrics.redispatched("conductor_error" if errors else "driver_lost")
                epoch = new_epoch
        finally:
            self.inflight.pop(task_id, None)
            self.wake.set()

    async def _driver_silent(self, task_id: str) -> bool:
        beat = await self.store.heartbeat(task_id)
        last = beat[1] if beat else None
        return last is None or (utcnow() - last).total_seconds() > DRIVER_HEARTBEAT_S * DRIVER_SILENT_BEATS

    async def _wait_until_driver_silent(self, task_id: str, epoch: int) -> bool:
        """A call we lost track of may still be driving the task: re-dispatching now would
        run two drivers. Wait until its heartbeat stops; False if the task no longer needs us."""
        while True:
            row = await self.store.get(task_id)
            if row is None or row.epoch != epoch or row.dispatch_state != DISPATCHED:
                return False
            if await self._driver_silent(task_id):
                return True
            await asyncio.sleep(DRIVER_HEARTBEAT_S)

    async def _watchdog(self) -> None:
        """Tasks dispatched with no live driver (none of ours, and a silent heartbeat) are
        dispatched again: whatever lost them, they do not stay stuck."""
        silent_s = DRIVER_HEARTBEAT_S * DRIVER_SILENT_BEATS
        for row in await self.store.orphans(silent_s):
            if row.task_id in self.inflight:
                continue
            epoch = await self.store.claim(row.task_id, from_states=(DISPATCHED,))
            if epoch is None:
                continue
            log.warning("task %s: dispatched with no live driver; dispatching it again", row.task_id)
            metrics.redispatched("watchdog")
            self.inflight[row.task_id] = asyncio.create_task(self._drive(row.task_id, epoch))

    async def _wake_for_model(self) -> None:
        """Tasks waiting on a model go back on the queue once the LLM router answers a probe."""
        now = time.monotonic()
        rows = await self.store.waiting("model")
        waiting = {r.task_id for r in rows}
        self._woken = {t: w for t, w in self._woken.items() if t in waiting}
        due = [r.task_id for r in rows if self._woken.get(r.task_id, (0, 0.0))[1] <= now]
        if not due:
            self._probe_every_s = self.config.model_probe_s
            self._next_probe = now + self._probe_every_s
            return
        answers = await self._router_client().probe()
        if any(why is None for why in answers.values()):
            for task_id in await self.store.wake(due, on="model"):
                times = self._woken.get(task_id, (0, 0.0))[0] + 1
                pause = min(self.config.max_model_probe_s, self.config.model_probe_s * 2 ** times)
                self._woken[task_id] = (times, now + pause)
            log.info("a model answers again: %d tasks waiting on it go on", len(due))
            self._probe_every_s = self.config.model_probe_s
            self.wake.set()
        else:
            log.info("%d tasks wait on a model; none answers yet: %s", len(due), answers)
            self._probe_every_s = min(self.config.max_model_probe_s, self._probe_every_s * 2)
        self._next_probe = now + self._probe_every_s

    def _router_client(self) -> Any:
        if self._router is None:
            from ray import serve

            from deployments.llm_router import RouterClient

            self._router = RouterClient(serve.get_deployment_handle("LLMRouter", app_name=self.settings.app_name))
        return self._router

    async def _fail(self, task_id: str, reason: str) -> None:
        epoch = await self.store.claim(task_id, from_states=(DISPATCHED,))
        if epoch is not None:
            await self.store.append(task_id, [NewEvent(EventType.status, {
                "status": TaskStatus.failed.value, "reason": reason})], epoch=epoch)
            await metrics.task_ended(self.store, task_id, TaskStatus.failed.value)


async def get_or_create_supervisor(settings: Settings, config: SupervisorConfig) -> Any:
    """The one Supervisor of this app, started if missing, replaced if set up for another store."""
    opts = dict(name=supervisor_name(settings), namespace=settings.namespace, lifetime="detached",
                get_if_exists=True, max_restarts=-1, max_concurrency=10_000, num_cpus=0)
    for _ in range(50):
        actor = SupervisorActor.options(**opts).remote(settings, config)
        info = await actor.ping.remote()
        if info["store"] == fingerprint(settings.db_url):
            return actor
        # A Supervisor left from a deployment on another store: replace it.
        ray.kill(actor, no_restart=True)
        await asyncio.sleep(0.2)
    raise RuntimeError(f"could not replace the Supervisor named {supervisor_name(settings)!r}")


SupervisorActor = ray.remote(Supervisor)

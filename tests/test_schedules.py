"""Schedules: slots and catch_up (pure), the Scheduler's decisions on each store (overlap, exactly
once per slot across two schedulers and a restart), and end to end on a real app whose
Supervisor is killed twice, whose Scheduler is killed, and which is redeployed once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from actors.scheduler import Scheduler, SchedulerConfig
from memory.schedules import ScheduleStore
from memory.store import EventStore
from troupe.models import EventType, Priority, TaskStatus
from memory.store import NewEvent
from troupe.schedules import ScheduleSpec, due_slots, next_slot
from troupe.settings import Settings

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
TASK = {"goal": "tick", "plan": {"nodes": [{"id": "a", "tool": "ledger_step", "args": {"value": "t"}}]}}


def spec(**kw: Any) -> ScheduleSpec:
    return ScheduleSpec.model_validate({"name": "s", "task": TASK, **kw})


def test_slots_and_catch_up():
    every = spec(every_s=10, grace_s=5)
    assert next_slot(every, T0, T0) == T0 + timedelta(seconds=10)
    assert next_slot(every, T0 + timedelta(seconds=10), T0) == T0 + timedelta(seconds=20)
    # Down for 35 s: slots 10, 20, 30 are missed, 40 is now (on time).
    now = T0 + timedelta(seconds=41)
    first = T0 + timedelta(seconds=10)
    fire, nxt = due_slots(spec(every_s=10, grace_s=5, catch_up="all"), first, now, T0)
    assert [int((s - T0).total_seconds()) for s in fire] == [10, 20, 30, 40] and nxt == T0 + timedelta(seconds=50)
    fire, _ = due_slots(spec(every_s=10, grace_s=5, catch_up="none"), first, now, T0)
    assert [int((s - T0).total_seconds()) for s in fire] == [40]
    fire, _ = due_slots(spec(every_s=10, grace_s=5, catch_up="latest"), first, T0 + timedelta(seconds=38), T0)
    assert [int((s - T0).total_seconds()) for s in fire] == [30]  # none on time: the latest missed one
    fire, _ = due_slots(spec(every_s=10, grace_s=5, catch_up="none"), first, T0 + timedelta(seconds=38), T0)
    assert fire == []
    # Cron in a timezone: 09:00 in Paris is 08:00 UTC in winter.
    cron = spec(cron="0 9 * * *", timezone="Europe/Paris")
    assert next_slot(cron, T0, T0) == datetime(2026, 1, 2, 8, 0, tzinfo=timezone.utc)
    for bad in ({"cron": "nope"}, {"every_s": 5, "cron": "* * * * *"}, {}, {"every_s": 5, "timezone": "Mars/Base"}):
        with pytest.raises(ValueError):
            spec(**bad)


class _FakeGateway:
    """Stands in for the Gateway's submit_internal: creates the task (id from the key) once."""

    def __init__(self, store: EventStore):
        self.store = store
        self.submitted: list[str] = []
        self.submit_internal = self

    def remote(self, tenant: str, task: dict, key_id: str, key: str):
        async def go():
            import uuid

            task_id = str(uuid.uuid5(uuid.NAMESPACE_URL, key))
            self.submitted.append(key)
            if await self.store.get(task_id) is None:
                try:
                    await self.store.create_task(task_id, tenant=tenant, goal=task["goal"],
                                                 priority=Priority.normal, payload={**task, "tenant": tenant})
                except Exception:  # a concurrent submission of the same key won, as in submit_task
                    assert await self.store.get(task_id) is not None
            return {"task_id": task_id}
        return go()


async def _scheduler(url: str, store: EventStore, home) -> Scheduler:
    sched = Scheduler.__new__(Scheduler)  # async __init__: Ray awaits it for an actor; here we do
    await Scheduler.__init__(sched, Settings(home=home, database_url=url), SchedulerConfig())
    sched.loop.cancel()  # the test drives tick() itself
    sched._gateway = _FakeGateway(store)
    return sched


async def _runs(schedules: ScheduleStore, schedule_id: str) -> list:
    return sorted(await schedules.runs(schedule_id), key=lambda r: r.slot_at)


async def test_exactly_once_per_slot_overlap_and_catch_up(any_store_url, tmp_path, monkeypatch):
    store = EventStore(any_store_url)
    await store.migrate()
    schedules = ScheduleStore(store)
    row = await schedules.create("acme", spec(every_s=2, overlap="allow", grace_s=1, catch_up="all"))
    a, b = await _scheduler(any_store_url, store, tmp_path), await _scheduler(any_store_url, store, tmp_path)
    now = row.next_at + timedelta(seconds=0.5)
    clock = {"now": now}
    monkeypatch.setattr("actors.scheduler.utcnow", lambda: clock["now"])
    await asyncio.gather(a.tick(), b.tick(), a.tick())
    runs = await _runs(schedules, row.schedule_id)
    assert [(r.slot_at, r.state) for r in runs] == [(row.next_at, "fired")]
    # A scheduler that died after its claim: the next pass submits the slot again, same key, same task.
    await schedules.claim(row.schedule_id, row.next_at + timedelta(seconds=2))
    clock["now"] = row.next_at + timedelta(seconds=2.2)
    await b.tick()
    runs = await _runs(schedules, row.schedule_id)
    assert [r.state for r in runs] == ["fired", "fired"] and len({r.task_id for r in runs}) == 2
    # Down 10 s with catch_up all: every missed slot fires, once.
    clock["now"] = row.next_at + timedelta(seconds=12.5)
    await asyncio.gather(a.tick(), b.tick())
    runs = await _runs(schedules, row.schedule_id)
    assert len(runs) == 7 and all(r.state == "fired" for r in runs)
    assert len({r.task_id for r in runs}) == 7

    # overlap: skip -- the previous run is still queued, so the next slot is skipped.
    skip = await schedules.create("acme", spec(name="skipper", every_s=2, overlap="skip", grace_s=1))
    clock["now"] = skip.next_at + timedelta(seconds=0.1)
    await a.tick()
    clock["now"] = skip.next_at + timedelta(seconds=2.1)
    await a.tick()
    runs = await _runs(schedules, skip.schedule_id)
    assert [r.state for r in runs] == ["fired", "skipped"]
    # Once it has ended, the next slot fires.
    await store.append(runs[0].task_id, [NewEvent(EventType.status, {"status": TaskStatus.done.value})])
    clock["now"] = skip.next_at + timedelta(seconds=4.1)
    await a.tick()
    assert [r.state for r in await _runs(schedules, skip.schedule_id)] == ["fired", "skipped", "fired"]

    # overlap: queue -- the slot waits for the previous run to end, then fires.
    queue = await schedules.create("acme", spec(name="queuer", every_s=2, overlap="queue", grace_s=1))
    clock["now"] = queue.next_at + timedelta(seconds=0.1)
    await a.tick()
    clock["now"] = queue.next_at + timedelta(seconds=2.1)
    await a.tick()
    runs = await _runs(schedules, queue.schedule_id)
    assert [r.state for r in runs] == ["fired"]
    await store.append(runs[0].task_id, [NewEvent(EventType.status, {"status": TaskStatus.done.value})])
    clock["now"] = queue.next_at + timedelta(seconds=2.6)
    await a.tick()
    runs = await _runs(schedules, queue.schedule_id)
    assert [r.state for r in runs] == ["fired", "fired"] and runs[1].slot_at == queue.next_at + timedelta(seconds=2)

    # catch_up none: a pause of 10 s fires nothing for the missed slots.
    none = await schedules.create("acme", spec(name="none", every_s=2, overlap="allow", grace_s=1, catch_up="none"))
    clock["now"] = none.next_at + timedelta(seconds=9.5)
    await a.tick()
    assert await schedules.runs(none.schedule_id) == []
    await store.close()


@pytest.fixture(scope="module")
def sched_app(serve_http, tmp_path_factory):
    from tests.conftest import _make_app

    app = _make_app(serve_http, tmp_path_factory, "troupe-sched", "/sched")
    yield app
    app.delete()


@pytest.mark.ray
def test_cli_creates_lists_pauses_and_deletes(sched_app, monkeypatch):
    from typer.testing import CliRunner

    from troupe.cli import app

    monkeypatch.setenv("TROUPE_HOME", str(sched_app.home))
    url = ["--url", sched_app.base_url]
    runner = CliRunner()
    made = runner.invoke(app, ["schedules", "create", "weekday", "--goal", "morning", "--cron", "0 9 * * mon-fri",
                               "--timezone", "Europe/Paris", *url])
    assert made.exit_code == 0, made.output
    sid = made.output.split()[0]
    listed = runner.invoke(app, ["schedules", "list", *url])
    assert listed.exit_code == 0 and "weekday" in listed.output
    assert "paused" in runner.invoke(app, ["schedules", "pause", sid, *url]).output
    assert runner.invoke(app, ["schedules", "delete", sid, *url]).exit_code == 0
    assert runner.invoke(app, ["schedules", "show", sid, *url]).exit_code == 2


@pytest.mark.ray
def test_every_2s_fires_once_per_slot_through_kills_and_a_redeploy(sched_app):
    from tests.test_crash import kill_named, named_actors, wait_for

    with sched_app.client() as c:
        r = c.post("/v1/schedules", json={"name": "tick", "every_s": 2, "overlap": "allow", "catch_up": "latest",
                                          "task": TASK})
        assert r.status_code == 201, r.text
        sid = r.json()["schedule_id"]
        assert c.post("/v1/schedules", json={"name": "tick", "every_s": 2, "task": TASK}).status_code == 409
        bad = c.post("/v1/schedules", json={"name": "x", "every_s": 2, "task": {"goal": "g", "plan": {"nodes": [
            {"id": "a", "tool": "teleport"}]}}})
        assert bad.status_code == 422
        time.sleep(3)
        kill_named("troupe-sched-supervisor")
        time.sleep(2.5)
        kill_named("troupe-sched-scheduler", restart=True)  # a crash: Ray restarts it (max_restarts=-1)
        # The Gateway makes a new Supervisor at its next call to it (the next slot's submission);
        # on a busy machine that takes longer than a slot.
        wait_for(lambda: named_actors("troupe-sched-supervisor"), timeout_s=60, what="a new Supervisor")
        time.sleep(1)
        kill_named("troupe-sched-supervisor")
        time.sleep(2)
    from ray import serve

    serve.delete(sched_app.name)
    sched_app.deploy()
    time.sleep(4)
    with sched_app.client() as c:
        assert c.post(f"/v1/schedules/{sid}/pause").json()["paused"] is True
        # A slot claimed just before the pause is still submitted (claimed slots always are): wait
        # for the pass in flight, which takes seconds on a busy machine.
        deadline = time.monotonic() + 30
        while True:
            runs = c.get(f"/v1/schedules/{sid}").json()["runs"]
            if all(r["state"] != "claimed" for r in runs) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        fired = [r for r in runs if r["state"] == "fired"]
        assert len(fired) >= 6, runs
        assert all(r["state"] in ("fired",) for r in runs), runs  # none left claimed
        slots = sorted(datetime.fromisoformat(r["slot_at"]) for r in fired)
        assert all((b - a).total_seconds() % 2 == 0 for a, b in zip(slots, slots[1:]))
        # Each slot made exactly one task, which links back to its schedule, and every one ran.
        tasks = [t for t in c.get("/v1/tasks", params={"limit": 500}).json()["items"]]
        linked = Counter()
        for t in tasks:
            full = c.get(f"/v1/tasks/{t['task_id']}").json()
            meta = full.get("metadata") or {}
            if meta.get("schedule_id") == sid:
                linked[meta["schedule_slot"]] += 1
        assert set(linked.values()) == {1} and len(linked) == len(fired)
        assert {r["task_id"] for r in fired} <= {t["task_id"] for t in tasks}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            statuses = {c.get(f"/v1/tasks/{r['task_id']}").json()["status"] for r in fired}
            if statuses == {"done"}:
                break
            time.sleep(0.5)
        assert statuses == {"done"}
        assert c.delete(f"/v1/schedules/{sid}").status_code == 200
        assert c.get(f"/v1/schedules/{sid}").status_code == 404

"""Crash tests on real Ray, on SQLite and on PostgreSQL: kill the Conductor replica, the
Supervisor, or the whole Serve app mid-task; every task still finishes, finished nodes
never run again, and nodes that were in flight run at most twice. The test tools count
their runs in a ledger file."""

import time
import uuid
from collections import Counter

import pytest
import ray
import sqlalchemy
from ray.util import list_named_actors

from tests.conftest import _make_app
from tests.test_e2e import wait_status
from tests.test_store import PG_ADMIN

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def crash_app_pg(serve_http, tmp_path_factory):
    """The crash app's twin on PostgreSQL (a database of its own, dropped afterwards)."""
    name = f"troupe_crash_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    app = _make_app(serve_http, tmp_path_factory, "troupe-crash-pg", "/crash-pg",
                    database_url=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}",
                    supervisor={"max_running_tasks": 3, "max_running_per_tenant": 3, "max_backoff_s": 2})
    yield app
    app.delete()
    with admin.connect() as c:
        c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def store_app(request):
    """The crash app on each store."""
    return request.getfixturevalue("crash_app" if request.param == "sqlite" else "crash_app_pg")


def step(id_, sleep_s, deps=()):
    return {"id": id_, "tool": "ledger_step", "args": {"value": id_, "sleep_s": sleep_s}, "deps": list(deps)}


DIAMOND = {"nodes": [step("a", 0.2), step("b", 2.0, ["a"]), step("c", 2.0, ["a"]), step("d", 2.0, ["a"]),
                     step("e", 0.2, ["b", "c", "d"]), step("f", 0.2, ["e"])]}


def ledger(app, task_id):
    path = app.home / "workspaces" / "default" / f"{task_id}.ledger"
    lines = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    return Counter(l[0] for l in lines if l[3] == "start"), Counter(l[0] for l in lines if l[3] == "done")


def node_states(client, task_id):
    return {k: v["status"] for k, v in client.get(f"/v1/tasks/{task_id}").json()["nodes"].items()}


def wait_for(predicate, timeout_s=60, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def named_actors(prefix):
    return [a for a in list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]


def kill_named(prefix, restart=False):
    """Kill every actor named prefix*: for good (the app must make a new one), or as a crash
    Ray restarts (restart=True, for actors made with max_restarts)."""
    actors = named_actors(prefix)
    assert actors, f"no actor named {prefix}*"
    for a in actors:
        ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]), no_restart=not restart)
    return len(actors)


def assert_ran_once_or_twice(app, task_id, done_before):
    starts, dones = ledger(app, task_id)
    for node in DIAMOND["nodes"]:
        assert dones[node["id"]] >= 1, f"{node['id']} never completed"
        if node["id"] in done_before:
            assert starts[node["id"]] == 1, f"{node['id']} had completed yet ran again"
        else:
            assert starts[node["id"]] <= 2, f"{node['id']} ran {starts[node['id']]} times"


def test_killing_the_conductor_replica_mid_task(store_app):
    with store_app.client() as c:
        task_id = c.post("/v1/tasks", json={"goal": "diamond", "plan": DIAMOND}).json()["task_id"]
        wait_for(lambda: node_states(c, task_id).get("b") == "running", what="b running")
        done_before = {k for k, v in node_states(c, task_id).items() if v == "done"}
        assert "a" in done_before
        kill_named(f"SERVE_REPLICA::{store_app.name}#Conductor")
        body = wait_status(c, task_id, timeout_s=180)
        assert body["status"] == "done", body.get("reason")
    assert_ran_once_or_twice(store_app, task_id, done_before)


def test_killing_the_supervisor_with_running_and_queued_tasks(store_app):
    plan = {"nodes": [step("x", 1.5), step("y", 0.1, ["x"])]}
    with store_app.client() as c:
        ids = [c.post("/v1/tasks", json={"goal": f"t{i}", "plan": plan}).json()["task_id"] for i in range(5)]
        # The app drives at most 3 tasks at once: the others wait, with a position.
        positions = wait_for(lambda: [p for p in (c.get(f"/v1/tasks/{t}").json()["queue_position"] for t in ids) if p],
                             what="a queued task")
        assert min(positions) == 1
        running = [t for t in ids if c.get(f"/v1/tasks/{t}").json()["status"] == "executing"]
        assert running
        supervisor = ray.get_actor(f"{store_app.name}-supervisor", namespace="troupe")
        ray.kill(supervisor, no_restart=False)  # the process dies; Ray restarts it
        for t in ids:
            body = wait_status(c, t, timeout_s=180)
            assert body["status"] == "done", body.get("reason")
            starts, dones = ledger(store_app, t)
            assert dones["y"] >= 1 and starts["y"] <= 2 and starts["x"] <= 2
        # The drivers outlive the Supervisor: the restarted one leaves their tasks to them
        # instead of leasing them again (which would run a second driver beside each).
        for t in running:
            log = c.get(f"/v1/tasks/{t}/events", params={"stream": "false"}).json()
            assert sum(1 for e in log if e["type"] == "task.dispatched") == 1, t
            assert ledger(store_app, t)[0]["x"] == 1


def test_shutting_the_app_down_mid_task_and_starting_it_again(store_app):
    from ray import serve

    with store_app.client() as c:
        task_id = c.post("/v1/tasks", json={"goal": "diamond", "plan": DIAMOND}).json()["task_id"]
        wait_for(lambda: node_states(c, task_id).get("b") == "running", what="b running")
        done_before = {k for k, v in node_states(c, task_id).items() if v == "done"}
    serve.delete(store_app.name)
    store_app.deploy()
    with store_app.client() as c:
        body = wait_status(c, task_id, timeout_s=180)
        assert body["status"] == "done", body.get("reason")
    assert_ran_once_or_twice(store_app, task_id, done_before)

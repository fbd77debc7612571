"""troupe/metrics.py and make run's metrics port, without Ray (the end to end test is
tests/test_metrics_e2e.py)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
import yaml

from dashboards.panels import M, all_queries
from deployments.run import DEFAULT_METRICS_PORT, metrics_port
from tests.conftest import REPO_ROOT
from troupe import metrics


def test_metrics_port_setting():
    assert metrics_port({}) == DEFAULT_METRICS_PORT == 8080
    assert metrics_port({"TROUPE_METRICS_PORT": "9464"}) == 9464
    with pytest.raises(SystemExit, match="TROUPE_METRICS_PORT='eighty' is not a port number"):
        metrics_port({"TROUPE_METRICS_PORT": "eighty"})
    with pytest.raises(SystemExit, match="outside 1024-65535"):
        metrics_port({"TROUPE_METRICS_PORT": "80"})


def test_labels_are_bounded():
    """Never a task id, goal, URL or free text as a label: each series must stay few."""
    allowed = {"tenant", "priority", "status", "state", "reason", "tool", "group", "deployment", "direction",
               "check", "result", "op"}
    for name, (kind, description, labels, *_) in metrics.SPECS.items():
        assert kind in ("counter", "gauge", "histogram") and description, name
        assert set(labels) <= allowed, (name, labels)


def test_every_query_names_a_defined_metric():
    exported = {M + n + suffix for n, (kind, *_) in metrics.SPECS.items()
                for suffix in {"counter": ["_total"], "gauge": [""],
                               "histogram": ["_bucket", "_count", "_sum"]}[kind]}
    alerts = yaml.safe_load((REPO_ROOT / "dashboards" / "alerts.yaml").read_text())["groups"][0]["rules"]
    exprs = [(board, title, expr) for board, title, expr in all_queries()] + [("alerts", r["alert"], r["expr"])
                                                                             for r in alerts]
    for board, title, expr in exprs:
        for name in re.findall(r"\b(ray_troupe_\w+)", expr):
            assert name in exported, f"{board} / {title}: {name} is not a Troupe metric"


def test_helpers_do_nothing_outside_ray():
    """In a fresh interpreter: this one may already hold the tests' shared Ray cluster."""
    script = textwrap.dedent("""
        import ray
        from troupe import metrics

        assert not ray.is_initialized()
        metrics.task_submitted("t", "normal")
        metrics.tool_call("python", True, 0.1)
        metrics.model_call("fast", "fast-0", False, 1.0, tokens_in=3)
        with metrics.sse_client():
            pass
        assert not ray.is_initialized(), "recording a metric started a Ray cluster"
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


async def test_a_tenant_whose_tasks_ended_between_samples_reads_zero(tmp_path, monkeypatch):
    """The queue gauge of a tenant whose tasks were dispatched and ended between two samples:
    exported as 0 at the next sample, not absent (a dashboard's running-tasks panel would be empty)."""
    from memory.store import DISPATCHED, PENDING, EventStore, NewEvent
    from tests.test_agents_runner import Harness
    from troupe.models import EventType

    recorded: list[tuple[str, float, dict]] = []
    monkeypatch.setattr(metrics, "_on", lambda: True)
    monkeypatch.setattr(metrics, "_record", lambda name, value, **tags: recorded.append((name, value, tags)))
    monkeypatch.setattr(metrics, "_seen_states", set())
    monkeypatch.setattr(metrics, "_last_sample", [0.0])
    store = EventStore(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
    await store.migrate()
    try:
        task_id = await Harness(store, tmp_path).submit(plan=[{"id": "a", "tool": "write_text",
                                                               "args": {"name": "a.md", "text": "a"}}])
        [row] = await store.fair_pending(10, running={}, cap=10)
        epochs = await store.claim_many([task_id], from_states=(PENDING,))
        metrics.dispatched([row], epochs)
        # The task ends before the Supervisor's next sample, which then counts nothing not ended.
        await store.append(task_id, [NewEvent(EventType.status, {"status": "cancelled", "reason": "test"})],
                           epoch=epochs[task_id])
        assert (await store.get(task_id)).dispatch_state not in (PENDING, DISPATCHED)
        await metrics.sample_queue(store)
    finally:
        await store.close()
    gauges = {(tags["tenant"], tags["state"]): value for name, value, tags in recorded if name == "tasks"}
    assert gauges == {("default", "queued"): 0, ("default", "running"): 0}, recorded

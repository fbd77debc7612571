"""Metrics end to end: a mixed workload on real Ray Serve, scraped by a real Prometheus
(Debian's package), then every dashboard query and alert rule evaluated through its HTTP API.

The workload runs on `llm_app` (the scripted model behind the real LiteLLM router) under a
tenant of its own, so counts by tenant are exact even when other tests share the cluster.
A standalone LLMRouter, priced and with a group whose deployments are all dead, gives model
spend and a group cooling down. Ray's metrics agent exports on an interval, so the test
polls (bounded) until the numbers it expects arrive; nothing asserts a time."""

from __future__ import annotations

import http.server
import json
import os
import re
import socketserver
import threading
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from dashboards.panels import all_queries
from tests.conftest import REPO_ROOT, free_port
from tests.support.scripted_llm import router_config
from tests.test_agents_e2e import agent_turn, call, schema, step
from tests.test_collections_api import wait_job
from tests.test_e2e import wait_status

# The first test pays for the cluster, the app and the workload: minutes on a busy 2-core machine.
pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

ALERTS = REPO_ROOT / "dashboards" / "alerts.yaml"
POLL_S = 180  # the bound on waiting for Ray's agent to export (every few seconds) and Prometheus to scrape


def _metrics_port() -> int:
    import ray

    node = ray._private.worker.global_worker.node
    return node.metrics_export_port


class Prometheus:
    """A real Prometheus scraping Ray's metrics endpoint every second, with the alert rules loaded."""

    def __init__(self, target: str, home: Path):
        binary = shutil.which("prometheus")
        assert binary, "Prometheus is missing: `make install` installs Debian's prometheus package"
        self.port = free_port()
        # A scrape may take no longer than its interval. After the whole suite, Ray's endpoint
        # carries hundreds of tenants' and actors' series: a 1 s scrape timed out every time on
        # a loaded CI machine, and every query came back empty; 3 s still timed out for 30 s once.
        config = {"global": {"scrape_interval": "6s", "scrape_timeout": "6s", "evaluation_interval": "1s"},
                  "rule_files": [str(ALERTS)],
                  "scrape_configs": [{"job_name": "troupe", "static_configs": [{"targets": [target]}]}]}
        (home / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (home / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={home / 'prometheus.yml'}", f"--storage.tsdb.path={home / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, (home / "prometheus.log").read_text()
            time.sleep(0.3)
        raise AssertionError("Prometheus did not become ready")

    def query(self, expr: str) -> list[dict]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}: {r.text}"
        return body["data"]["result"]

    def scrapes(self) -> str:
        """The target's health, for a failure's message: why a query found nothing."""
        targets = httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        return "; ".join(f"{t['scrapeUrl']} {t['health']} {t.get('lastError') or ''} "
                         f"last scrape {t.get('lastScrapeDuration', 0):.2f} s" for t in targets)

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, expr: str, ok) -> float | None:
        deadline = time.monotonic() + POLL_S
        while time.monotonic() < deadline:
            v = self.value(expr)
            if v is not None and ok(v):
                return v
            time.sleep(1)
        return self.value(expr)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


@pytest.fixture(scope="module")
def prometheus(ray_cluster, tmp_path_factory):
    prom = Prometheus(f"127.0.0.1:{_metrics_port()}", tmp_path_factory.mktemp("prometheus"))
    yield prom
    prom.close()


@pytest.fixture(scope="module")
def priced_router(serve_http, scripted_llm_server):
    """An LLMRouter of its own: `reason` priced (so spend is recorded), `vision` two dead deployments."""
    from ray import serve

    from deployments.llm_router import LLMRouter

    config = router_config(scripted_llm_server, groups=("reason",), num_retries=0, allowed_fails=0,
                           cooldown_time=600, fallbacks=[])
    config["model_list"][0]["litellm_params"].update(input_cost_per_token=1e-6, output_cost_per_token=2e-6)
    dead = {"model": "openai/dead", "api_base": f"http://127.0.0.1:{free_port()}/v1", "api_key": "x"}
    config["model_list"] += [{"model_name": "vision", "litellm_params": dead}] * 2
    handle = serve.run(LLMRouter.bind(config), name="metrics-router", route_prefix=None)
    yield handle
    serve.delete("metrics-router")


def _plan(*nodes, tests=()):
    return {"nodes": list(nodes), **({"acceptance_tests": list(tests)} if tests else {})}


@pytest.fixture(scope="module")
def page():
    """A loopback web page for the browse node."""
    html = b"<html><head><title>Metrics</title></head><body><p>Troupe counts what it does.</p></body></html>"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(html)))
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args) -> None:
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/page.html"
    server.shutdown()


NOTES = b"# Operations\n\nTroupe counts what it does: tasks, tools, models and ingestion.\n"


def _start_ingest(client) -> str:
    """A real ingest job beside the tasks: one Markdown file stored, one unsupported file failed."""
    r = client.post("/v1/collections/ops/ingest", files=[
        ("files", ("notes.md", NOTES, "text/markdown")),
        ("files", ("blob.bin", b"\x00\x01not a document", "application/octet-stream"))])
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


@pytest.fixture(scope="module")
def workload(llm_app, scripted_llm_server, priced_router, prometheus, page):
    """Six tasks of one tenant: done, failed after retries, failed on a timeout, an agent node,
    a correction, a budget pause then cancelled; a live event stream; a real ingest job beside
    them; model calls on the priced router. Returns the tenant, the tasks' final statuses and
    the ingest job."""
    from deployments.llm_router import LLMUnavailable
    from troupe.llm import ChatRequest

    tenant = f"ops-{uuid.uuid4().hex[:8]}"
    scripted = scripted_llm_server
    scripted.reset()
    scripted.add([call("ledger_step", value="x1")], when=agent_turn(), model="fast")
    scripted.add("collected x1", when=agent_turn(), model="fast")
    scripted.add({"diagnosis": "flaky fails", "nodes": [step("f", "fixed")]}, when=schema("CorrectionDraft"),
                 model="reason")
    scripted.add("Paris.", model="reason")  # the priced router's call
    no_retry = {"max_attempts": 1}
    tasks = {
        "done": {"goal": "two steps", "plan": _plan(step("a", "A"), step("b", "B", deps=["a"]),
                                                    {"id": "read", "tool": "browse", "args": {"url": page}}),
                 "acceptance_tests": [{"id": "all", "check_type": "all_nodes_done"}]},
        "retried": {"goal": "always fails", "max_corrections": 0, "plan": _plan(
            {"id": "f", "tool": "flaky", "args": {"fail_times": 99}, "retry": {"max_attempts": 2, "backoff_s": 0}})},
        "timeout": {"goal": "too slow", "max_corrections": 0, "plan": _plan(
            {"id": "slow", "tool": "ledger_step", "args": {"value": "s", "sleep_s": 30}, "timeout_s": 0.5,
             "retry": no_retry})},
        "agent": {"goal": "gather", "max_corrections": 0, "plan": _plan(
            {"id": "gather", "kind": "agent", "tools": ["ledger_step"], "instructions": "Collect one value."})},
        "corrected": {"goal": "fix it", "max_corrections": 1, "plan": _plan(
            {"id": "f", "tool": "flaky", "args": {"fail_times": 99}, "retry": no_retry})},
        "budget": {"goal": "no budget", "budget": {"max_cost_usd": 1, "max_llm_calls": 0}, "plan": _plan(
            {"id": "gather", "kind": "agent", "tools": ["ledger_step"], "instructions": "Collect one value."})},
    }
    statuses = {}
    with llm_app.client(llm_app.new_key(tenant), timeout=120) as c:
        job_id = _start_ingest(c)
        ids = {}
        for name, body in tasks.items():
            r = c.post("/v1/tasks", json=body)
            assert r.status_code == 202, (name, r.text)
            ids[name] = r.json()["task_id"]
        # A live stream, open while its task runs: the SSE gauge moves.
        with c.stream("GET", f"/v1/tasks/{ids['done']}/events") as stream:
            for _ in stream.iter_lines():
                pass
        for name, task_id in ids.items():
            end = ("waiting_for_input",) if name == "budget" else ("done", "failed", "cancelled")
            statuses[name] = wait_status(c, task_id, end, timeout_s=180)
        assert statuses["budget"]["waiting_on"] == "budget", statuses["budget"]
        assert c.delete(f"/v1/tasks/{ids['budget']}").status_code == 202
        statuses["budget"] = wait_status(c, ids["budget"], ("cancelled",))
        job = wait_job(c, job_id)
        assert job["status"] == "done" and job["report"]["by_status"] == {"stored": 1, "failed": 1}, job
    reply = priced_router.chat.remote(ChatRequest(group="reason", messages=[{"role": "user", "content": "Hi"}]))
    assert reply.result().usage.cost_usd > 0
    for _ in range(2):  # the first call fails on both dead deployments; both then cool down
        with pytest.raises(LLMUnavailable):
            priced_router.chat.remote(ChatRequest(group="vision", messages=[{"role": "user", "content": "Hi"}])).result()
    scripted.check()
    scripted.reset()
    return tenant, {name: body["status"] for name, body in statuses.items()}, job


def test_workload_metrics_arrive_with_sensible_values(workload, prometheus):
    tenant, statuses, job = workload
    assert statuses == {"done": "done", "retried": "failed", "timeout": "failed", "agent": "done",
                        "corrected": "done", "budget": "cancelled"}
    M, t = "ray_troupe_", f'tenant="{tenant}"'
    wait, value = prometheus.wait_value, prometheus.value
    # Every task that finished is counted once, by its status, whichever process ended it
    # (the runner for five, the Supervisor for the cancelled one).
    for status, n in {"done": 3, "failed": 2, "cancelled": 1}.items():
        got = wait(f'sum({M}tasks_finished_total{{{t},status="{status}"}})', lambda v, n=n: v >= n)
        assert got == n, (status, got, prometheus.scrapes())
    assert wait(f"sum({M}tasks_submitted_total{{{t}}})", lambda v: v >= 6) == 6
    assert wait(f"sum({M}task_queue_wait_seconds_count{{{t}}})", lambda v: v >= 6) >= 6
    assert wait(f"sum({M}task_duration_seconds_count{{{t}}})", lambda v: v >= 6) == 6
    assert wait(f"sum({M}budget_pauses_total{{{t}}})", lambda v: v >= 1) == 1
    assert wait(f"sum({M}corrections_total{{{t}}})", lambda v: v >= 1) == 1
    # Tool-level facts (tool labels are shared by every tenant: at least ours).
    assert wait(f'sum({M}tool_retries_total{{tool="flaky"}})', lambda v: v >= 1) >= 1
    assert wait(f'sum({M}tool_timeouts_total{{tool="ledger_step"}})', lambda v: v >= 1) >= 1
    assert wait(f'sum({M}tool_calls_total{{tool="flaky",status="error"}})', lambda v: v >= 3) >= 3
    assert wait(f'sum({M}nodes_finished_total{{tool="agent",status="done"}})', lambda v: v >= 1) >= 1
    assert wait(f'sum({M}verdicts_total{{check="all_nodes_done",result="pass"}})', lambda v: v >= 1) >= 1
    # Models: the agent's two turns on `fast`, the priced call's spend, `vision` all cooling down.
    assert wait(f'sum({M}model_calls_total{{group="fast",status="ok"}})', lambda v: v >= 2) >= 2
    assert wait(f'sum({M}model_tokens_total{{group="reason",direction="out"}})', lambda v: v >= 1) >= 1
    assert wait(f"sum({M}model_cost_usd_total)", lambda v: v > 0) > 0
    assert wait(f'sum({M}model_calls_total{{group="vision",status="error"}})', lambda v: v >= 2) >= 2
    assert wait(f'max({M}model_deployments_cooling_down{{group="vision"}})', lambda v: v == 2) == 2
    # The Supervisor's heartbeat is fresh, so its alert stays quiet.
    assert wait(f"time() - max({M}supervisor_heartbeat_timestamp_seconds)", lambda v: v < 60) < 60
    assert wait(f"sum({M}sse_streams_opened_total)", lambda v: v >= 1) >= 1
    assert wait(f"sum({M}sse_streams_closed_total)", lambda v: v >= 1) >= 1
    assert wait(f'sum({M}browser_ops_total{{op="browse",status="ok"}})', lambda v: v >= 1) >= 1
    # The browse node's replica: Chromium started (at least once), its sessions gauge exported.
    assert wait(f"sum({M}browser_launches_total)", lambda v: v >= 1) >= 1
    assert wait(f"count({M}browser_sessions)", lambda v: v >= 1) >= 1
    # The ingest job's own report, counted by the pipeline's process (a Ray Data driver).
    assert wait(f'sum({M}ingest_files_total{{{t},status="failed"}})', lambda v: v >= 1) == 1
    assert wait(f'sum({M}ingest_files_total{{{t},status="stored"}})', lambda v: v >= 1) == 1
    chunks = job["progress"]["chunks_stored"]
    assert chunks >= 1 and wait(f"sum({M}ingest_chunks_total{{{t}}})", lambda v: v >= chunks) == chunks


def test_every_dashboard_query_returns_data(workload, prometheus):
    """A panel that can never show data is a defect: each query parses and has a sample."""
    # One bound for all of them (rates need two scrapes after the counter moved), not one each:
    # with every panel empty, the test must fail in two minutes, not run out pytest's timeout.
    pending = list(all_queries())
    deadline = time.monotonic() + 120
    while True:
        pending = [(board, title, expr) for board, title, expr in pending if not prometheus.query(expr)]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not pending, "panels without data:\n" + "\n".join(f"{b} / {t}: {e}" for b, t, e in pending) \
        + "\nscrapes: " + prometheus.scrapes()


def test_alert_rules_check_and_evaluate(workload, prometheus):
    check = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == {"QueueWaitOverSLO", "TaskFailureRate", "RedispatchStorm",
                                            "ModelGroupCoolingDown", "CostBurnRate", "IngestFailures",
                                            "NoSupervisorHeartbeat"}
    for rule in rules:
        prometheus.query(rule["expr"])  # parses and evaluates
        if "or vector(0)" in rule["expr"]:
            continue  # guarded: its metric has no series until the event first happens (a re-dispatch)
        for metric in set(re.findall(r"\b(ray_troupe_\w+)", rule["expr"])):
            # A scrape that timed out on a busy machine leaves a gap: wait for the next ones.
            deadline = time.monotonic() + 90
            while not prometheus.query(metric) and time.monotonic() < deadline:
                time.sleep(1)
            assert prometheus.query(metric), f"{rule['alert']}: no samples of {metric}\nscrapes: " \
                + prometheus.scrapes()
    # The state of the workload: vision's deployments all cool down; the Supervisor is alive.
    by_name = {r["alert"]: r["expr"] for r in rules}
    assert [s["metric"]["group"] for s in prometheus.query(by_name["ModelGroupCoolingDown"])] == ["vision"]
    assert prometheus.query(by_name["NoSupervisorHeartbeat"]) == []
    # Prometheus loaded the file itself and evaluates every rule without error.
    deadline = time.monotonic() + 30
    while True:
        groups = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        loaded = [r for g in groups for r in g["rules"]]
        if len(loaded) == len(rules) and all(r.get("lastEvaluation", "").startswith("20") for r in loaded) \
                or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(loaded) == len(rules) and all(r["health"] == "ok" for r in loaded), json.dumps(loaded)[:2000]


def test_usage_api_is_tenant_scoped(workload, llm_app):
    """GET /v1/usage: the workload's model calls on its tenant (the agent's two turns on fast,
    the correction on reason); a member sees its own tenant only; an admin sees every tenant."""
    tenant, *_ = workload
    with llm_app.client(llm_app.new_key(tenant)) as member:
        mine = member.get("/v1/usage", params={"group_by": "model"}).json()
        assert mine["tenant"] == tenant
        assert {r["key"]: r["calls"] for r in mine["rows"]} == {"fast": 2, "reason": 1}
        assert mine["total"]["tokens_in"] > 0
        other = member.get("/v1/usage", params={"tenant": "default"})
        assert other.status_code == 403 and "own tenant" in other.json()["detail"]
        assert member.get("/v1/usage", params={"group_by": "week"}).status_code == 422
    with llm_app.client() as admin:
        everyone = admin.get("/v1/usage", params={"group_by": "tenant"}).json()
        assert everyone["tenant"] is None
        assert next(r for r in everyone["rows"] if r["key"] == tenant)["calls"] == 3
        [day] = admin.get("/v1/usage", params={"group_by": "day", "tenant": tenant}).json()["rows"]
        assert day["calls"] == 3
    with llm_app.client(llm_app.new_key(tenant, role="viewer")) as viewer:  # a read, as every GET
        assert viewer.get("/v1/usage").json()["tenant"] == tenant
        assert viewer.get("/v1/usage", params={"tenant": "default"}).status_code == 403


def test_a_panel_renders_from_prometheus_data(workload, prometheus):
    """dashboards/render.py draws a panel from Prometheus's range API (the README's picture);
    TROUPE_RENDER_DIR=dir keeps the SVGs."""
    from dashboards.panels import MODELS, OVERVIEW
    from dashboards.render import render_svg

    for board, panel in ((OVERVIEW, OVERVIEW.panels[0]), (MODELS, MODELS.panels[0])):
        svg = render_svg(prometheus.url, panel, minutes=5, step_s=2)
        assert svg.count("<polyline") >= 1 and panel.title in svg
        if out := os.environ.get("TROUPE_RENDER_DIR"):
            (Path(out) / f"{board.uid}-{panel.title.lower().replace(' ', '-')}.svg").write_text(svg)


def test_a_board_renders_whole_from_prometheus_data(workload, prometheus):
    """dashboards/screenshot.py draws a whole board (the README's docs/dashboard-overview.png):
    the Overview's panels on Grafana's grid, each with exactly the points Prometheus has for the
    window, the plain rates among them never empty after the workload."""
    from dashboards.panels import OVERVIEW
    from dashboards.render import series
    from dashboards.screenshot import board_spec, render_png

    end = time.time()
    spec = board_spec(prometheus.url, OVERVIEW, minutes=5, end=end, step_s=2)
    charts = [chart for row in spec["vconcat"] for chart in row["hconcat"]]
    assert [c["title"]["text"] for c in charts] == [p.title for p in OVERVIEW.panels]
    assert [len(row["hconcat"]) for row in spec["vconcat"]] == [3, 2, 2]  # widths 8+4+12, 12+12, 12+12
    drawn = {}
    for chart, panel in zip(charts, OVERVIEW.panels):
        # A time series carries its points; a stat, its sparkline's under the number; "No data", none.
        drawn[panel.title] = next((len(layer["data"]["values"]) for layer in chart.get("layer", [chart])
                                   if any("v" in r for r in layer["data"]["values"])), 0)
        # A ratio or a quantile of rates is NaN (nothing to draw; "No data" in Grafana too) while its
        # counters have not moved between two scrapes: the picture shows what Prometheus has, no more.
        has = sum(len(pts) for q in panel.queries for _, pts in series(prometheus.url, q.expr, "", end - 300, end, 2))
        assert drawn[panel.title] == has, (panel.title, drawn[panel.title], has)
    for title in ("Tasks finished per minute", "Submissions per minute", "Model spend per hour (USD)"):
        assert drawn[title] > 0, f"{title}: no data\nscrapes: {prometheus.scrapes()}"
    png = render_png(prometheus.url, OVERVIEW, minutes=5, scale=1)
    assert png.startswith(b"\x89PNG") and len(png) > 20_000

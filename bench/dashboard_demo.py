"""The README's dashboard picture, from real data: Troupe on a local Ray cluster under a mixed
workload for a few minutes, scraped by a real Prometheus (Debian's package), then one board
drawn by dashboards/screenshot.py.

    python bench/dashboard_demo.py --minutes 14 --out docs/dashboard-overview.png [--keep DIR]

The workload, from two tenants: plans of short and slower steps, agent nodes against the
scripted model (priced, so spend shows), a tool that fails once and is retried, a tool that
always fails; at a third of the way a burst of submissions fills the dispatch cap
(`max_running_tasks`), so queue wait rises and falls. `--keep DIR` keeps Prometheus's data
and the window in DIR/window.json, to draw other boards later:
`prometheus --storage.tsdb.path=DIR/data` then `python -m dashboards.screenshot ... --end`.
Prints one JSON line (tasks by status, the window, the PNG).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import ROOT, deploy

CAP = 6
"""The Supervisor's max_running_tasks: small, so that the burst queues."""


def respond(body: dict[str, Any]) -> Any:
    """The scripted model: an agent calls `noop` once, then answers."""
    if body.get("tools"):
        if body["messages"][-1]["role"] == "tool":
            return "gathered the values"
        return [{"name": "noop", "arguments": {"value": "v"}}]
    return "ok"


def _task(kind: str, rng: random.Random) -> dict[str, Any]:
    steps = [{"id": f"s{i}", "tool": "sleep", "args": {"seconds": round(rng.uniform(0.5, 4), 1)},
              "deps": [f"s{i - 1}"] if i else []} for i in range(rng.randint(1, 3))]
    plans = {
        "steps": steps,
        "agent": [{"id": "a", "tool": "noop", "args": {"value": "a"}},
                  {"id": "gather", "kind": "agent", "deps": ["a"], "tools": ["noop"],
                   "instructions": "Collect one value."}],
        "retried": [{"id": "f", "tool": "flaky", "args": {"fail_times": 1},
                     "retry": {"max_attempts": 3, "backoff_s": 0.5}}],
        "broken": [{"id": "f", "tool": "flaky", "args": {"fail_times": 99}, "retry": {"max_attempts": 2,
                                                                                     "backoff_s": 0.5}}],
    }
    return {"goal": f"demo {kind}", "plan": {"nodes": plans[kind]}, "max_corrections": 0}


@contextmanager
def prometheus(target: str, home: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if not binary:
        raise SystemExit("Prometheus is missing: `make install` installs Debian's prometheus package")
    port = _free_port()
    config = home / "prometheus.yml"
    config.write_text(json.dumps({"global": {"scrape_interval": "5s", "scrape_timeout": "5s"},
                                  "scrape_configs": [{"job_name": "troupe", "static_configs": [{"targets": [target]}]}]}))
    with (home / "prometheus.log").open("w") as log:
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={home / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(120):
                try:
                    if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            proc.wait(30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workload(base: str, admin: dict[str, str], minutes: float, rng: random.Random) -> dict[str, int]:
    """Submit for `minutes`, then wait for every task to end; final statuses by count."""
    with httpx.Client(base_url=base, headers=admin, timeout=60) as c:
        keys = {t: c.post("/v1/keys", json={"tenant": t, "role": "member"}).json()["secret"] for t in ("acme", "globex")}
        clients = {t: httpx.Client(base_url=base, headers={"Authorization": f"Bearer {k}"}, timeout=60)
                   for t, k in keys.items()}
        ids: list[tuple[str, str]] = []
        started = time.monotonic()
        end = started + minutes * 60
        while (now := time.monotonic()) < end:
            phase = (now - started) / (end - started)
            burst = 0.33 <= phase < 0.40  # a burst fills the dispatch cap: queue wait rises
            broken = 0.6 <= phase < 0.75  # a stretch where one dependency breaks: failures rise
            kinds, weights = ("steps", "agent", "retried", "broken"), (5, 3, 2, 4 if broken else 0.5)
            kind = rng.choices(kinds, weights)[0]
            tenant = rng.choices(("acme", "globex"), (3, 1) if not burst else (1, 4))[0]
            r = clients[tenant].post("/v1/tasks", json=_task(kind, rng))
            if r.status_code == 202:
                ids.append((tenant, r.json()["task_id"]))
            time.sleep(rng.uniform(0.2, 0.6) if burst else rng.uniform(2.0, 4.5))
        statuses: dict[str, int] = {}
        deadline = time.monotonic() + 300
        for tenant, task_id in ids:
            while (status := clients[tenant].get(f"/v1/tasks/{task_id}").json()["status"]) not in (
                    "done", "failed", "cancelled") and time.monotonic() < deadline:
                time.sleep(0.5)
            statuses[status] = statuses.get(status, 0) + 1
        for c2 in clients.values():
            c2.close()
        return statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=14, help="how long the workload submits")
    parser.add_argument("--board", default="Troupe / Overview")
    parser.add_argument("--out", default=str(ROOT / "docs" / "dashboard-overview.png"))
    parser.add_argument("--keep", default=None, help="keep Prometheus's data and the window here")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()

    import ray

    from dashboards.panels import BOARDS
    from dashboards.screenshot import render_png
    from tests.support.scripted_llm import ScriptedLLM, litellm_params

    board = next(b for b in BOARDS if b.title == args.board)
    home = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="troupe-dashboard-"))
    home.mkdir(parents=True, exist_ok=True)
    model = ScriptedLLM()
    model.add(respond, times=None, delay_s=0.3)
    priced = {"input_cost_per_token": 3e-6, "output_cost_per_token": 1.5e-5}  # a mid-size hosted model's prices
    llm = {"model_list": [{"model_name": g, "litellm_params": litellm_params(model, g, **priced)}
                          for g in ("fast", "reason")], "num_retries": 0, "fallbacks": [], "cooldown_time": 0}
    with deploy(app_name="demo", tool_modules=["bench.tools", "tests.support.tools"], llm=llm,
                supervisor={"max_running_tasks": CAP, "max_running_per_tenant": CAP}) as app:
        metrics_port = ray._private.worker.global_worker.node.metrics_export_port
        with prometheus(f"127.0.0.1:{metrics_port}", home) as prom:
            began = time.time()
            statuses = workload(app.base_url, app.headers, args.minutes, random.Random(args.seed))
            time.sleep(20)  # Ray's agent exports every few seconds; Prometheus scrapes every 5
            ended = time.time()
            minutes = (ended - began) / 60 + 1
            Path(args.out).write_bytes(render_png(prom, board, minutes=minutes, end=ended))
    model.close()
    (home / "window.json").write_text(json.dumps({"start": began - 60, "end": ended}))
    if not args.keep:
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps({"tasks": statuses, "window_min": round(minutes, 1), "png": args.out}))


if __name__ == "__main__":
    main()

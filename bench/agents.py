"""Agents benchmark: autonomous tasks against a model that answers every call after 200 ms.

Deploys Troupe on a local Ray cluster whose LLM router points at the scripted
OpenAI-compatible server (tests/support/scripted_llm.py) with a fixed latency, then submits
N concurrent goals with no plan. Each task is planned by the model (1 call), runs 4 nodes —
two parallel no-op tools, an agent node (one tool call, then its answer: 2 calls), a final
no-op — and is verified with an `llm_judge` test (1 call). Four model calls lie on every
task's critical path, so orchestration overhead = time to done - 4 x latency.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from troupe import serve_ingress  # noqa: E402

serve_ingress.apply()  # HAProxy in front of the Gateway, as under `make run`; before Ray starts

CRITICAL_PATH_CALLS = 4  # plan, agent turn with a call, agent answer, judge

PLAN = {
    "pinned_requirements": ["Finish every node"],
    "nodes": [
        {"id": "a", "tool": "noop", "args": {"value": "a"}},
        {"id": "b", "tool": "noop", "args": {"value": "b"}},
        {"id": "agent", "kind": "agent", "deps": ["a", "b"], "tools": ["noop"],
         "instructions": "Combine {{a.output}} and {{b.output}} with the noop tool, then answer."},
        {"id": "d", "tool": "noop", "args": {"value": "{{agent.output.answer}}"}, "deps": ["agent"]},
    ],
    "acceptance_tests": [
        {"id": "all_done", "check_type": "all_nodes_done"},
        {"id": "judged", "check_type": "llm_judge", "params": {"node": "d", "rubric": "It is the combined value."}},
    ],
}


def respond(body: dict) -> object:
    """The scripted model: a plan, an agent's call then its answer, a passing judgement."""
    schema = (body.get("response_format") or {}).get("json_schema", {}).get("name")
    if schema == "PlanDraft":
        return PLAN
    if schema == "Judgement":
        return {"passed": True, "reason": "the value is there"}
    if body.get("tools"):
        if body["messages"][-1]["role"] == "tool":
            return "ab"
        return [{"name": "noop", "arguments": {"value": "ab"}}]
    raise AssertionError(f"unexpected model request: {body['messages'][-1]}")


AUTH: dict[str, str] = {}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def run(base: str, db_url: str, n: int) -> dict:
    from memory.store import EventStore

    store = EventStore(db_url)
    t0 = time.monotonic()
    async with httpx.AsyncClient(base_url=base, timeout=120, headers=AUTH) as c:
        async def one(i: int) -> str:
            r = await c.post("/v1/tasks", json={"goal": f"combine a and b, round {i}"})
            r.raise_for_status()
            return r.json()["task_id"]
        ids = await asyncio.gather(*(one(i) for i in range(n)))
    pending = set(ids)
    while pending and time.monotonic() - t0 < 1200:
        rows, _ = await store.list_tasks("default", limit=n + 10)
        pending -= {r.task_id for r in rows if r.status.terminal}
        await asyncio.sleep(0.2)
    elapsed = time.monotonic() - t0
    to_done, statuses, calls = [], {}, []
    for tid in ids:
        events = await store.read(tid)
        final = [e for e in events if e.type == "task.status"][-1].payload["status"]
        statuses[final] = statuses.get(final, 0) + 1
        if final == "done":
            done_at = next(e.ts for e in events if e.type == "task.status" and e.payload["status"] == "done")
            to_done.append((done_at - events[0].ts).total_seconds())
        calls.append(sum(1 for e in events if e.type == "llm.called"))
    await store.close()
    return {"tasks": n, "final_statuses": statuses, "elapsed_s": round(elapsed, 2),
            "tasks_per_s": round(n / elapsed, 2), "llm_calls_per_task": statistics.median(calls),
            "time_to_done_s": {"p50": round(statistics.median(to_done), 3), "p95": round(percentile(to_done, 0.95), 3)},
            "_to_done": to_done}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--latency-s", type=float, default=0.2, help="the scripted model's latency per call")
    args = parser.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ["TROUPE_MODEL_ALLOWED_HOSTS"] = "127.0.0.1"

    import ray
    from ray import serve

    from deployments.app import app
    from tests.support.scripted_llm import ScriptedLLM, router_config

    model = ScriptedLLM()
    model.add(respond, times=None, delay_s=args.latency_s)
    home = Path(tempfile.mkdtemp(prefix="troupe-bench-agents-"))
    db_url = f"sqlite+aiosqlite:///{home / 'troupe.db'}"
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, namespace="troupe-bench",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0",
                                       "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                                       "TROUPE_MODEL_ALLOWED_HOSTS": "127.0.0.1"}})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app({"home": str(home), "database_url": db_url, "app_name": "bench-agents",
                   "tool_modules": ["bench.tools"],
                   "llm": router_config(model, num_retries=0, fallbacks=[], cooldown_time=0)}),
              name="bench-agents", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    AUTH["Authorization"] = f"Bearer {(home / 'admin.key').read_text().strip()}"  # written on first start
    asyncio.run(run(base, db_url, 3))  # warm up every replica, the router and the embedding model
    # one task at a time: the latency floor (median of 5, after the warm-up's lessons are learned)
    solo = sorted(asyncio.run(run(base, db_url, 1))["_to_done"][0] for _ in range(5))
    result = asyncio.run(run(base, db_url, args.tasks))
    floor = CRITICAL_PATH_CALLS * args.latency_s
    to_done = result.pop("_to_done")
    result["model_latency_s"] = args.latency_s
    result["critical_path_model_s"] = round(floor, 3)
    result["orchestration_overhead_s"] = {"p50": round(statistics.median(to_done) - floor, 3),
                                          "p95": round(percentile(to_done, 0.95) - floor, 3),
                                          "unloaded": round(solo[len(solo) // 2] - floor, 3)}
    result["cpus"] = os.cpu_count()
    print(json.dumps({"bench": "agents", **result}))
    serve.shutdown()
    ray.shutdown()
    model.close()


if __name__ == "__main__":
    main()

"""Runtime benchmark: per-node orchestration overhead and task throughput.

Deploys Troupe on a local Ray cluster with a no-op tool, submits 200 concurrent 5-node
tasks (a -> b, c, d -> e) over HTTP, and reads every event back from the store:
node overhead = node.done time minus the time the node became ready (its last dep's
node.done, or the task entering `executing` for a root node). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLAN = {"nodes": [
    {"id": "a", "tool": "noop", "args": {"value": "a"}},
    {"id": "b", "tool": "noop", "args": {"value": "{{a.output}}b"}, "deps": ["a"]},
    {"id": "c", "tool": "noop", "args": {"value": "{{a.output}}c"}, "deps": ["a"]},
    {"id": "d", "tool": "noop", "args": {"value": "{{a.output}}d"}, "deps": ["a"]},
    {"id": "e", "tool": "noop", "args": {"value": "{{b.output}}{{c.output}}{{d.output}}"}, "deps": ["b", "c", "d"]},
]}


AUTH: dict[str, str] = {}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def submit_all(base: str, n: int) -> list[str]:
    async with httpx.AsyncClient(base_url=base, timeout=120, headers=AUTH) as c:
        async def one(i: int) -> str:
            r = await c.post("/v1/tasks", json={"goal": f"bench {i}", "plan": PLAN})
            r.raise_for_status()
            return r.json()["task_id"]
        return await asyncio.gather(*(one(i) for i in range(n)))


async def wait_all(store, ids: list[str], timeout_s: float) -> None:
    """One listing query per poll, so that watching adds next to no load."""
    deadline = time.monotonic() + timeout_s
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        rows, _ = await store.list_tasks("default", limit=len(ids) + 10)
        pending -= {r.task_id for r in rows if r.status.terminal}
        await asyncio.sleep(0.2)
    if pending:
        raise TimeoutError(f"{len(pending)} tasks unfinished after {timeout_s}s")


def overheads(events) -> list[float]:
    done, executing = {}, None
    for e in events:
        if e.type == "task.status" and e.payload["status"] == "executing":
            executing = e.ts
        elif e.type == "node.done":
            done[e.payload["node_id"]] = e.ts
    out = []
    for node in PLAN["nodes"]:
        ready = max((done[d] for d in node.get("deps", [])), default=executing)
        out.append((done[node["id"]] - ready).total_seconds() * 1000)
    return out


async def solo(base: str, db_url: str, n: int) -> dict:
    """Tasks one at a time: the overhead of a node when nothing else competes."""
    per_node = []
    for _ in range(n):
        per_node += (await measure(base, db_url, 1))["_per_node"]
    return {"p50": round(statistics.median(per_node), 1), "p95": round(percentile(per_node, 0.95), 1)}


async def measure(base: str, db_url: str, n: int) -> dict:
    from memory.store import EventStore

    store = EventStore(db_url)
    t0 = time.monotonic()
    ids = await submit_all(base, n)
    submitted_s = time.monotonic() - t0
    await wait_all(store, ids, timeout_s=1200)
    elapsed = time.monotonic() - t0
    per_node, statuses = [], {}
    for tid in ids:
        events = await store.read(tid)
        statuses[events[-1].payload.get("status")] = statuses.get(events[-1].payload.get("status"), 0) + 1
        per_node += overheads(events)
    await store.close()
    return {"tasks": n, "nodes_per_task": len(PLAN["nodes"]), "final_statuses": statuses,
            "submit_s": round(submitted_s, 2), "elapsed_s": round(elapsed, 2),
            "tasks_per_s": round(n / elapsed, 2),
            "node_overhead_ms": {"p50": round(statistics.median(per_node), 1),
                                 "p95": round(percentile(per_node, 0.95), 1),
                                 "max": round(max(per_node), 1)}, "_per_node": per_node}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    args = parser.parse_args()

    import ray
    from ray import serve

    from deployments.app import app

    home = Path(tempfile.mkdtemp(prefix="troupe-bench-"))
    db_url = args.database_url or f"sqlite+aiosqlite:///{home / 'troupe.db'}"
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, namespace="troupe-bench",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}})
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app({"home": str(home), "database_url": db_url, "app_name": "bench",
                   "tool_modules": ["bench.tools"]}), name="bench", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    AUTH["Authorization"] = f"Bearer {(home / 'admin.key').read_text().strip()}"  # written on first start
    asyncio.run(measure(base, db_url, 5))  # warm up every replica and connection pool
    unloaded = asyncio.run(solo(base, db_url, 20))
    result = asyncio.run(measure(base, db_url, args.tasks))
    del result["_per_node"]
    # Under load a node waits behind every other task's work (Little's law), so the loaded
    # overhead mostly reflects throughput; the unloaded figure is the latency floor.
    result["node_overhead_ms_unloaded"] = unloaded
    result["store"] = "postgresql" if db_url.startswith("postgresql") else "sqlite"
    result["cpus"] = os.cpu_count()
    print(json.dumps({"bench": "runtime", **result}))
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()

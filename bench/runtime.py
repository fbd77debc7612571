"""Runtime benchmark: Troupe's durable runtime against an in-process peer, in one run.

    python bench/runtime.py [--store sqlite|postgres] [--tasks 200] [--submissions 1000]

The same 5-node DAG (a -> b, c, d -> e, no-op tools) runs first on LangGraph with its
durable checkpointer (bench/peer_langgraph.py, in this process), then on Troupe through
HTTP, the Supervisor, the Conductor and the ToolPool on a local Ray cluster, both on the
same kind of store. Prints one JSON line: each side's tasks/s and the ratio; Troupe's node
overhead unloaded (node ready -> node done, read from the log: a node is ready when its
last dep is done, or the task enters `executing`); the CPU each Troupe process spent per
node under load; and submissions accepted per second (202, durable) from many clients.
`--profile-dir` also records every Troupe process with py-spy during the loaded run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import POSTGRES, ProcessCPU, database, deploy, percentile, start_profiles, wait_all

PLAN = {"nodes": [
    {"id": "a", "tool": "noop", "args": {"value": "a"}},
    {"id": "b", "tool": "noop", "args": {"value": "{{a.output}}b"}, "deps": ["a"]},
    {"id": "c", "tool": "noop", "args": {"value": "{{a.output}}c"}, "deps": ["a"]},
    {"id": "d", "tool": "noop", "args": {"value": "{{a.output}}d"}, "deps": ["a"]},
    {"id": "e", "tool": "noop", "args": {"value": "{{b.output}}{{c.output}}{{d.output}}"}, "deps": ["b", "c", "d"]},
]}


def overheads(events) -> list[float]:
    done, executing = {}, None
    for e in events:
        if e.type == "task.status" and e.payload["status"] == "executing" and executing is None:
            executing = e.ts
        elif e.type == "node.done":
            done[e.payload["node_id"]] = e.ts
    out = []
    for node in PLAN["nodes"]:
        ready = max((done[d] for d in node.get("deps", [])), default=executing)
        out.append((done[node["id"]] - ready).total_seconds() * 1000)
    return out


async def submit(session, i: int) -> str:
    async with session.post("/v1/tasks", json={"goal": f"bench {i}", "plan": PLAN}) as r:
        if r.status != 202:
            raise RuntimeError(f"submission refused: {r.status} {await r.text()}")
        return (await r.json())["task_id"]


def client_session(app, clients: int):
    """The driver's HTTP client: aiohttp, because httpx spent 5.5 ms of this machine's CPU per
    request, a third of what the server spends, on the same two cores."""
    import aiohttp

    return aiohttp.ClientSession(app.base_url, headers=app.headers, connector=aiohttp.TCPConnector(limit=clients),
                                 timeout=aiohttp.ClientTimeout(total=120))


async def run_tasks(app, n: int, *, sequential: bool = False) -> dict:
    """`n` tasks at once (or one after another); throughput and node overhead from their logs."""
    from memory.store import EventStore

    store = EventStore(app.db_url)
    ids: list[str] = []
    t0 = time.monotonic()
    async with client_session(app, 200) as session:
        if sequential:
            for i in range(n):
                ids.append(await submit(session, i))
                await wait_all(store, ids[-1:], 120)
        else:
            ids = list(await asyncio.gather(*(submit(session, i) for i in range(n))))
            await wait_all(store, ids, 1200)
    elapsed = time.monotonic() - t0
    per_node, statuses = [], {}
    for tid in ids:
        events = await store.read(tid)
        status = events[-1].payload.get("status")
        statuses[status] = statuses.get(status, 0) + 1
        if status == "done":
            per_node += overheads(events)
    await store.close()
    return {"tasks": n, "final_statuses": statuses, "elapsed_s": round(elapsed, 2),
            "tasks_per_s": round(n / elapsed, 2), "node_overhead_ms": {
                "p50": round(statistics.median(per_node), 1), "p95": round(percentile(per_node, 0.95), 1)}}


async def learned(app, timeout_s: float = 300) -> None:
    """Until the warm-up's plan is a learned template: learning the first one loads the
    Planner's embedding model (seconds of CPU), which must not land in a measured run."""
    async with client_session(app, 1) as session:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            async with session.get("/v1/templates") as r:
                if any(t["kind"] == "learned" for t in await r.json()):
                    return
            await asyncio.sleep(0.5)
    raise TimeoutError("the warm-up's plan was not learned")


async def submissions(app, total: int, clients: int) -> dict:
    """`clients` concurrent clients submit `total` tasks; 202s per second (each durable before its 202)."""
    from memory.store import EventStore

    latencies: list[float] = []
    ids: list[str] = []
    queue = list(range(total))

    async def client(session) -> None:
        while queue:
            i = queue.pop()
            t = time.monotonic()
            ids.append(await submit(session, i))
            latencies.append(time.monotonic() - t)

    async with client_session(app, clients) as session:
        t0 = time.monotonic()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.monotonic() - t0
    store = EventStore(app.db_url)
    await wait_all(store, ids, 1800)  # let them finish before anything else is measured
    await store.close()
    return {"submissions": total, "clients": clients, "client": "aiohttp", "accepted_per_s": round(total / elapsed, 1),
            "latency_ms": {"p50": round(statistics.median(latencies) * 1000, 1),
                           "p95": round(percentile(latencies, 0.95) * 1000, 1)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--submissions", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--profile-dir", type=Path, default=None)
    args = parser.parse_args()

    from bench.peer_langgraph import run_langgraph

    with database(args.store, Path("/tmp")) as peer_url:
        peer = asyncio.run(run_langgraph(args.tasks, peer_url if args.store == "postgres" else None))

    with deploy(args.store, "bench") as app:
        asyncio.run(run_tasks(app, 5))  # warm up every replica and connection pool
        asyncio.run(learned(app))
        unloaded = asyncio.run(run_tasks(app, 20, sequential=True))
        cpu = ProcessCPU(app.app_name, with_postgres=args.store == "postgres")
        spies = start_profiles(cpu.pids(), args.profile_dir, 20) if args.profile_dir else []
        cpu.start()
        loaded = asyncio.run(run_tasks(app, args.tasks))
        spent = cpu.stop()
        for spy in spies:
            spy.wait()
        admitted = asyncio.run(submissions(app, args.submissions, args.clients))
    nodes = args.tasks * len(PLAN["nodes"])
    print(json.dumps({
        "bench": "runtime", "store": args.store, "cpus": os.cpu_count(),
        "peer": peer, "troupe": {**loaded, "node_overhead_ms_unloaded": unloaded["node_overhead_ms"],
                                 "cpu_ms_per_node": {k: round(v * 1000 / nodes, 2) for k, v in spent.items()},
                                 "cpu_ms_per_node_total": round(sum(v for k, v in spent.items() if k != POSTGRES)
                                                                * 1000 / nodes, 2)},
        "ratio_to_peer": round(loaded["tasks_per_s"] / peer["tasks_per_s"], 3),
        "submissions": admitted}))


if __name__ == "__main__":
    main()

"""Scale benchmark: many tasks in flight at once on one machine.

    python bench/scale.py [--tasks 1000] [--sleep-s 5] [--store sqlite|postgres]

Submits `--tasks` tasks at once, each a single node that waits `--sleep-s` (the `sleep`
tool), and reads from the logs: how many were running at the same moment (between their
node's start and end), the queue wait (submitted -> dispatched), and any failure (a Serve
queue overflow or 503 would show as a failed submission or task). Memory per in-flight task
is the growth of the resident memory of every Troupe process while they all wait, divided
by the tasks. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import aiohttp

if __package__ in (None, ""):  # run as a script: make the repository importable
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import ProcessCPU, deploy, percentile, wait_all


def rss_mb(cpu: ProcessCPU) -> float:
    total = 0
    for procs in cpu.procs.values():
        for p in procs:
            try:
                total += p.memory_info().rss
            except Exception:
                pass
    return total / 2**20


async def run(app, n: int, sleep_s: float) -> dict:
    from memory.store import EventStore

    store = EventStore(app.db_url)
    procs = ProcessCPU(app.app_name)
    before_mb = rss_mb(procs)
    plan = {"nodes": [{"id": "wait", "tool": "sleep", "args": {"seconds": sleep_s}, "timeout_s": 600}]}
    t0 = time.monotonic()
    # aiohttp, as bench/runtime.py's submitters: httpx's own CPU per request competes with the server here.
    async with aiohttp.ClientSession(app.base_url, headers=app.headers, connector=aiohttp.TCPConnector(limit=200),
                                     timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def one(i: int) -> str | None:
            async with session.post("/v1/tasks", json={"goal": f"wait {i}", "plan": plan}) as r:
                return (await r.json())["task_id"] if r.status == 202 else None
        ids = await asyncio.gather(*(one(i) for i in range(n)))
    submitted_s = time.monotonic() - t0
    accepted = [t for t in ids if t]
    await asyncio.sleep(max(0.0, sleep_s * 0.6 - submitted_s))  # all should be waiting now
    peak_mb = rss_mb(procs)
    await wait_all(store, accepted, 1800)
    starts, ends, waits, statuses = [], [], [], {}
    for tid in accepted:
        events = await store.read(tid)
        status = events[-1].payload.get("status")
        statuses[status] = statuses.get(status, 0) + 1
        dispatched = next(e.ts for e in events if e.type == "task.dispatched")
        waits.append((dispatched - events[0].ts).total_seconds())
        started = next((e.ts for e in events if e.type == "node.started"), None)
        done = next((e.ts for e in events if e.type == "node.done"), None)
        if started and done:
            starts.append(started.timestamp())
            ends.append(done.timestamp())
    await store.close()
    # The most tasks whose node was waiting at the same moment (a sweep over starts and ends).
    marks = sorted([(t, 1) for t in starts] + [(t, -1) for t in ends])
    running = peak = 0
    for _, step in marks:
        running += step
        peak = max(peak, running)
    return {"tasks": n, "accepted": len(accepted), "final_statuses": statuses, "submit_s": round(submitted_s, 2),
            "max_running_at_once": peak, "queue_wait_s": {"p50": round(statistics.median(waits), 3),
                                                          "p95": round(percentile(waits, 0.95), 3),
                                                          "max": round(max(waits), 3)},
            "rss_mb": {"before": round(before_mb), "all_waiting": round(peak_mb)},
            "kb_per_in_flight_task": round((peak_mb - before_mb) * 1024 / max(1, len(accepted)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--sleep-s", type=float, default=5.0)
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()
    with deploy(args.store, "bench-scale", supervisor={"max_running_tasks": max(1000, args.tasks),
                                                       "max_running_per_tenant": max(1000, args.tasks)}) as app:
        asyncio.run(run(app, 5, 0.1))  # warm up
        result = asyncio.run(run(app, args.tasks, args.sleep_s))
    print(json.dumps({"bench": "scale", "store": args.store, "sleep_s": args.sleep_s, **result}))


if __name__ == "__main__":
    main()

"""History benchmark: reads that do not grow with a task's log, and event streams that are
pushed rather than polled.

    python bench/history.py [--events 100000] [--sse-clients 500] [--store sqlite|postgres]

1. Two tasks, one with 10 events and one with `--events`: the latency of GET
   /v1/tasks/{id} for each (p50 of 30), and of loading each as a drive does
   (`EventStore.load_task`: its snapshot plus the events after it), beside a full replay
   of the long log (what both cost before snapshots).
2. `--sse-clients` SSE clients follow waiting tasks: the CPU every Troupe process spends in
   20 s while nothing happens (as a share of one core), beside the same 20 s with no client
   (Serve's replicas report metrics and health even when idle), then how long an appended
   event takes to reach a client (p50 of 20).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from pathlib import Path

import httpx

if __package__ in (None, ""):  # run as a script: make the repository importable
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.harness import ProcessCPU, deploy


async def waiting_task(store, events: int) -> str:
    """A task waiting for a reply (budget), with `events` events in its log."""
    from memory.store import NewEvent
    from troupe.models import EventType, Priority

    task_id = str(uuid.uuid4())
    await store.create_task(task_id, tenant="default", goal="long history", priority=Priority.normal,
                            payload={"goal": "long history", "tenant": "default"})
    filler = max(0, events - 2)
    for start in range(0, filler, 1000):  # model calls: the log grows, the state does not
        await store.append(task_id, [NewEvent(EventType.llm_called, {"tokens_in": 10, "tokens_out": 2})]
                           * min(1000, filler - start))
    await store.append(task_id, [NewEvent(EventType.status, {"status": "waiting_for_input", "waiting_on": "budget",
                                                             "reason": "bench", "resume": "executing"})])
    return task_id


async def timed(fn, n: int = 30) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1000, 2)


async def reads(app, n_events: int) -> dict:
    from memory.store import EventStore
    from troupe.reducer import reduce

    store = EventStore(app.db_url)
    short, long = await waiting_task(store, 10), await waiting_task(store, n_events)
    async with httpx.AsyncClient(base_url=app.base_url, headers=app.headers, timeout=120) as c:
        for tid in (short, long):  # the first read writes the long task's snapshot
            (await c.get(f"/v1/tasks/{tid}")).raise_for_status()
        await asyncio.sleep(1)
        get = {label: await timed(lambda tid=tid: c.get(f"/v1/tasks/{tid}"))
               for label, tid in (("10_events", short), (f"{n_events}_events", long))}
    load = {label: await timed(lambda tid=tid: store.load_task(tid))
            for label, tid in (("10_events", short), (f"{n_events}_events", long))}
    t = time.perf_counter()
    reduce(await store.read(long))
    replay_ms = round((time.perf_counter() - t) * 1000, 1)
    await store.close()
    return {"get_task_ms_p50": get, "drive_start_load_ms_p50": load,
            f"full_replay_of_{n_events}_events_ms": replay_ms}


async def sse(app, clients: int) -> dict:
    from memory.store import EventStore, NewEvent
    from troupe.models import EventType

    from actors.redis_server import event_bus
    from troupe.settings import Settings

    store = EventStore(app.db_url)
    # This process appends as a Conductor would: announcing its commits on the app's live bus.
    store.bus = event_bus(Settings(home=app.home, app_name=app.app_name, database_url=app.db_url))
    tasks = [await waiting_task(store, 3) for _ in range(10)]
    received: dict[int, float] = {}
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)

    async def follow(c: httpx.AsyncClient, tid: str, watch: bool) -> None:
        async with c.stream("GET", f"/v1/tasks/{tid}/events", params={"after": 3}) as r:
            async for line in r.aiter_lines():
                if watch and line.startswith("data:"):
                    received[json.loads(line[5:])["payload"]["i"]] = time.perf_counter()

    async def idle_cpu() -> dict[str, float]:
        cpu = ProcessCPU(app.app_name)
        cpu.start()
        await asyncio.sleep(20)
        spent = cpu.stop()
        spent.pop("bench-driver", None)
        return spent

    baseline = await idle_cpu()  # what the deployments cost idle, with no client at all
    async with httpx.AsyncClient(base_url=app.base_url, headers=app.headers, timeout=None, limits=limits) as c:
        followers = [asyncio.create_task(follow(c, tasks[i % len(tasks)], i == 0)) for i in range(clients)]
        await asyncio.sleep(10)  # all connected and idle
        spent = await idle_cpu()
        sent: dict[int, float] = {}
        for i in range(20):
            sent[i] = time.perf_counter()
            await store.append(tasks[0], [NewEvent(EventType.message, {"i": i})])
            await asyncio.sleep(0.1)
        await asyncio.sleep(2)
        for f in followers:
            f.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
    await store.bus.close()
    await store.close()
    lag = [received[i] - sent[i] for i in sent if i in received]
    return {"sse_clients": clients, "idle_cpu_share_of_a_core": round(sum(spent.values()) / 20, 4),
            "idle_cpu_share_of_a_core_without_clients": round(sum(baseline.values()) / 20, 4),
            "idle_cpu_share_of_a_core_for_the_clients": round((sum(spent.values()) - sum(baseline.values())) / 20, 4),
            "idle_cpu_s_by_process": spent, "events_received": f"{len(lag)}/{len(sent)}",
            "push_latency_ms_p50": round(statistics.median(lag) * 1000, 1) if lag else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--sse-clients", type=int, default=500)
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()
    with deploy(args.store, "bench-history") as app:
        result = {**asyncio.run(reads(app, args.events)), **asyncio.run(sse(app, args.sse_clients))}
    print(json.dumps({"bench": "history", "store": args.store, **result}))


if __name__ == "__main__":
    main()

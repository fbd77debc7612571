"""Redis is a bus and a cache, never the source of truth: 20 tasks driven while their live
bus's Redis is flushed, or its embedded redis-server killed (and started again, as the app
does at its next use), finish exactly as without the fault. A second store (the Gateway's
side, with its own bus) interrupts each task mid-run, so notices cross processes' buses.
Each task has an agent node that reads its context from the hot working set on the same
Redis (memory/working_set.py); the flush case flushes again while those agents run."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from actors.redis_server import EmbeddedRedis
from memory.live import EventBus
from memory.store import EventStore
from memory.working_set import WorkingSet
from tests.support.fake_llm import FakeLLM, text
from tests.support.hot import hot_store
from tests.test_agents_runner import Harness
from troupe.runner import TaskRunner
from troupe.transitions import post_message

TASKS = 20


def plan(i: int) -> list[dict]:
    step = lambda id_, value, deps=(): {"id": id_, "tool": "ledger_step", "deps": list(deps),  # noqa: E731
                                        "args": {"value": value, "sleep_s": 1.5}}
    return [step("a", f"a{i}"), step("b", f"b{i}", ["a"]), step("c", f"c{i}", ["a"]),
            {"id": "g", "kind": "agent", "deps": ["a"], "tools": ["ledger_step"], "instructions": f"Record g{i}."},
            {"id": "w", "tool": "write_text", "deps": ["b", "c", "g"],
             "args": {"name": "out.md", "text": "{{b.output}}+{{c.output}}"}}]


class Recorder(FakeLLM):
    """Any number of tasks' agents at once: records the value its instructions name twice (a
    call that takes 1.5 s, so turns come at 1.5, 3 and 4.5 s), then answers with the results."""

    async def chat(self, request):
        value = request.messages[1]["content"].split()[-1].rstrip(".")
        results = [m["content"] for m in request.messages if m["role"] == "tool"]
        self.replies.append(text(f"recorded {'+'.join(results)}") if len(results) == 2 else {"tool_calls": [
            {"id": f"call-{value}-{len(results)}", "name": "ledger_step",
             "arguments": f'{{"value": "{value}-{len(results)}", "sleep_s": 1.5}}'}]})
        return await super().chat(request)


async def run(tmp_path, fault: str | None) -> dict[int, tuple]:
    server = EmbeddedRedis(str(tmp_path / "home"))
    url = await server.url()
    db = f"sqlite+aiosqlite:///{tmp_path / 'troupe.db'}"
    channel = f"troupe:test:{uuid.uuid4().hex[:8]}"
    driver_side, gateway_side = EventStore(db), EventStore(db)
    await driver_side.migrate()
    driver_side.bus, gateway_side.bus = EventBus(server.url, channel), EventBus(server.url, channel)
    hot = WorkingSet(hot_store(f"{channel}:hot:", server.url), recent_outputs=2)
    h = Harness(driver_side, tmp_path, hot)
    ids = [await h.submit(f"task {i}", plan=plan(i)) for i in range(TASKS)]

    async def drive(task_id: str) -> str:
        epoch = await driver_side.claim(task_id, from_states=("pending",))
        return await TaskRunner(driver_side, h.call_tool, h.tools, h.workspace, task_id, epoch,
                                poll_s=0.2, llm=Recorder(), working_set=hot).drive()

    drives = [asyncio.create_task(drive(t)) for t in ids]
    started = asyncio.get_running_loop().time()
    await asyncio.sleep(0.3)
    if fault == "flush":
        client = aioredis.Redis.from_url(url)
        await client.flushall()
        await client.aclose()
    elif fault == "kill":
        server.proc.kill()
        server.proc.wait()
    for i, task_id in enumerate(ids):  # from the other side, while the bus may be down; the tasks run 4.5 s
        posted = await post_message(gateway_side, task_id, f"note {i}", on_running="interrupt")
        assert posted.applied == "interrupt", f"task {i} ended before its message came: a slow machine"
    if fault == "kill":
        await asyncio.sleep(1.0)
        await server.url()  # started again at its next use, on the same socket
    if fault == "flush":  # again while the agents are between their turns (a: 0-1.5 s, g's call: 1.5-3 s)
        await asyncio.sleep(max(0.0, started + 2.2 - asyncio.get_running_loop().time()))
        client = aioredis.Redis.from_url(url)
        hits = hot.stats.hits
        await client.flushall()
        await client.aclose()
    assert await asyncio.gather(*drives) == ["done"] * TASKS
    results = {}
    for i, task_id in enumerate(ids):
        task = await driver_side.load_task(task_id)
        events = await driver_side.read(task_id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        results[i] = ({n: s.output for n, s in task.nodes.items()}, task.pinned_requirements,
                      (h.workspace("default", task_id) / "out.md").read_text(), dict(h.runs(task_id)[0]))
    assert hot.stats.hits > 0  # the agents' context came from Redis whenever it had it
    if fault == "flush":
        assert hot.stats.hits > hits  # and again after the flush, once rebuilt from the log
    await hot.hot.close()
    for store in (driver_side, gateway_side):
        await store.bus.close()
        await store.close()
    server.proc.kill()
    return results


@pytest.mark.parametrize("fault", ["flush", "kill"])
async def test_tasks_finish_as_without_the_fault(tmp_path, fault):
    expected = await run(tmp_path / "calm", None)
    assert all(r[1] == [f"note {i}"] and r[2] == f"b{i}+c{i}" and r[0]["g"]["answer"] == f"recorded g{i}-0+g{i}-1"
               for i, r in expected.items())
    assert await run(tmp_path / fault, fault) == expected

"""An agent node reads its context from the hot working set (memory/working_set.py), with the
log as the fallback: what it sends the model comes from Redis when Redis has it, and is
the same, rebuilt from the log, when Redis was flushed, is down, or never configured.
Each test has a redis-server of its own (the embedded one), so it may really flush it."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis

from actors.redis_server import EmbeddedRedis
from memory.hot import HotEntry
from memory.store import EventStore
from memory.working_set import WorkingSet, recent_window
from tests.conftest import free_port
from tests.support.fake_llm import FakeLLM, text
from tests.support.hot import hot_store
from tests.test_agents_runner import Harness

AGENT = {"id": "gather", "kind": "agent", "tools": ["ledger_step"], "max_steps": 30,
         "instructions": "Record values until told to stop."}
PINNED = "Record every value exactly once"


class LongOutputs(FakeLLM):
    """Calls ledger_step with a new 400-character value each turn (call ids c1, c2, ...) and
    answers at turn `turns`; `hooks[n]` runs inside the n-th call, after its request is taken."""

    def __init__(self, turns: int, hooks=None):
        super().__init__()
        self.turns, self.n, self.hooks = turns, 0, hooks or {}

    async def chat(self, request):
        self.n += 1
        if self.n in self.hooks:
            await self.hooks[self.n]()
        self.replies.append(text(f"recorded {self.n - 1}") if self.n >= self.turns else {"tool_calls": [{
            "id": f"c{self.n}", "name": "ledger_step", "arguments": json.dumps({"value": f"v{self.n}:" + "x" * 400})}]})
        return await super().chat(request)


@pytest.fixture
async def redis_server(tmp_path):
    server = EmbeddedRedis(str(tmp_path / "home"))
    url = await server.url()
    yield url
    server.proc.kill()
    server.proc.wait()


async def run_agent(tmp_path, working_set, llm):
    store = EventStore(f"sqlite+aiosqlite:///{tmp_path / 'troupe.db'}")
    await store.migrate()
    h = Harness(store, tmp_path, working_set)
    h.llm = llm
    tid = await h.submit(plan=[AGENT], requirements=[PINNED], budget={"max_llm_calls": 40})
    assert await h.drive(tid) == "done"
    task = await store.load_task(tid)
    await store.close()
    return task, [r.messages for r in llm.requests]


async def test_the_agent_reads_its_context_from_the_hot_set_and_the_log_after_a_flush(tmp_path, redis_server):
    baseline_task, baseline = await run_agent(tmp_path / "log", WorkingSet(None, recent_outputs=3), LongOutputs(12))

    ws = WorkingSet(hot_store("t:hot:", redis_server), recent_outputs=3)
    client = aioredis.Redis.from_url(redis_server)
    seen: dict[str, int] = {}

    async def tamper():  # the entry of c5's output, still among the last 3 for requests 7 and 8
        tid = (await client.keys("t:hot:*:e:*:pins"))[0].decode().split(":e:")[1].split(":")[0]
        seen["tid_entries"] = len(await client.keys("t:hot:*:e:*"))
        await ws.hot.put("default", [HotEntry(tid, "n:gather:out:c5", "TAMPERED")])

    async def flush():
        seen["rebuilt"] = ws.stats.rebuilt
        await client.flushall()

    task, requests = await run_agent(tmp_path / "hot", ws, LongOutputs(12, {6: tamper, 8: flush}))
    assert task.nodes["gather"].output == baseline_task.nodes["gather"].output
    # Requests 7 and 8 carry what Redis held, not what the log holds: the context came from Redis.
    for i, (got, expected) in enumerate(zip(requests, baseline, strict=True)):
        if i in (6, 7):
            assert "TAMPERED" in json.dumps(got) and got != expected, i
        else:  # before the tampering, and rebuilt from the log after the flush: as without Redis
            assert got == expected, i
    assert seen["tid_entries"] >= 4 + 3  # pins, plan, digest, window, the last 3 outputs
    assert ws.stats.hits > 20 and ws.stats.rebuilt > seen["rebuilt"]
    # The last 3 outputs reach the model whole, older ones as references into the log.
    last = json.dumps(requests[-1])
    assert "tool.result of call c1" in last and "tool.result of call c8" in last
    assert "tool.result of call c9" not in last and "v11:" + "x" * 400 in last
    assert all(PINNED in r[0]["content"] and "gather: agent (tools: ledger_step)" in r[0]["content"]
               for r in requests)
    # The node ended: its entries, and the task's pinned ones (no agent of it runs), are gone.
    assert await client.keys("t:hot:*:e:*") == []
    await client.aclose()
    await ws.hot.close()

    # Redis down the whole time: the same requests, from the log alone.
    down = WorkingSet(hot_store("t:hot:", f"redis://127.0.0.1:{free_port()}/0"), recent_outputs=3)
    _, requests = await run_agent(tmp_path / "down", down, LongOutputs(12))
    assert requests == baseline and down.stats.hits == 0


async def test_the_hot_set_is_rebuilt_from_the_log_after_a_flush(tmp_path, redis_server):
    ws = WorkingSet(hot_store("t:hot:", redis_server), recent_outputs=3)
    client = aioredis.Redis.from_url(redis_server)
    paused, go = asyncio.Event(), asyncio.Event()

    async def pause():
        paused.set()
        await go.wait()

    store = EventStore(f"sqlite+aiosqlite:///{tmp_path / 'troupe.db'}")
    await store.migrate()
    h = Harness(store, tmp_path, ws)
    h.llm = LongOutputs(10, {7: pause})
    tid = await h.submit(plan=[AGENT], requirements=[PINNED], budget={"max_llm_calls": 40})
    drive = asyncio.create_task(h.drive(tid))
    await asyncio.wait_for(paused.wait(), 60)

    async def dump():
        out = {}
        for key in sorted(await client.keys("t:hot:*")):
            kind = (await client.type(key)).decode()
            if kind == "string":
                out[key] = await client.get(key)
            elif kind == "hash":
                out[key] = await client.hgetall(key)
            else:  # the recency sets: who is in them (their scores are times)
                out[key] = sorted(await client.zrange(key, 0, -1))
        return out

    before = await dump()
    assert any(k.endswith(b":e:" + tid.encode() + b":n:gather:out:c6") for k in before)
    await client.flushall()
    task = await store.load_task(tid)  # the log, read afresh by another process
    other = WorkingSet(hot_store("t:hot:", redis_server), recent_outputs=3)
    ctx = await other.node_context(task, "gather")
    assert await dump() == before
    assert other.stats.hits == 0 and ctx.pins == [PINNED]
    assert ctx.recent == recent_window(task.nodes["gather"].transcript, task.nodes["gather"].compacted, 3)
    # And the flushed set serves the next read whole.
    assert (await other.node_context(task, "gather")) == ctx and other.stats.hits == 4 + 3
    go.set()
    assert await drive == "done"
    await client.aclose()
    await other.hot.close()
    await ws.hot.close()
    await store.close()

"""The task runner in one process over a real store (SQLite and PostgreSQL): the same code the Conductor
runs, minus Ray. Crashes are simulated by cancelling a drive and starting a new one with a
new lease, exactly as the Supervisor does after a replica dies."""

import asyncio
import json
import uuid
from collections import Counter

import pytest

from memory.call_ledger import CallLedger
from memory.store import EventStore, NewEvent
from tools.executor import execute_call
from tools.registry import load_registry
from troupe.models import EventType, NodeStatus, Priority, TaskStatus
from troupe.reducer import reduce
from troupe.runner import TaskRunner


class Harness:
    def __init__(self, store, root):
        self.store, self.root = store, root
        self.registry = load_registry(["tests.support.tools"])
        # The executing side's ledger, as in the ToolPool: a call runs only after claiming its key.
        self.calls = CallLedger(store, heartbeat_s=0.2)

    def workspace(self, tenant, task_id):
        return self.root / "ws" / tenant / task_id

    async def call_tool(self, call):
        return await execute_call(self.registry, call, self.workspace(call.tenant, call.task_id), ledger=self.calls)

    async def submit(self, nodes, tests=None):
        task_id = str(uuid.uuid4())
        payload = {"goal": "test", "plan": {"nodes": nodes}, "acceptance_tests": tests or []}
        await self.store.create_task(task_id, tenant="default", goal="test", priority=Priority.normal, payload=payload)
        return task_id

    def runner(self, task_id, epoch, poll_s=0.05):
        return TaskRunner(self.store, self.call_tool, self.registry, self.workspace, task_id, epoch, poll_s=poll_s)

    async def drive(self, task_id):
        return await self.runner(task_id, await self.store.claim(task_id)).drive()

    async def state(self, task_id):
        return reduce(await self.store.read(task_id))

    def ledger(self, task_id):
        path = self.root / "ws" / "default" / f"{task_id}.ledger"
        return [line.split() for line in path.read_text().splitlines()] if path.exists() else []

    def runs(self, task_id, what="done"):
        return Counter(line[0] for line in self.ledger(task_id) if line[3] == what)


@pytest.fixture
async def h(any_store_url, tmp_path):
    store = EventStore(any_store_url)
    await store.migrate()
    yield Harness(store, tmp_path)
    await store.close()


def step(id_, value, deps=(), sleep_s=0.0, **kw):
    return {"id": id_, "tool": "ledger_step", "args": {"value": value, "sleep_s": sleep_s}, "deps": list(deps), **kw}


async def test_parallel_dag_runs_publishes_and_logs_in_order(h):
    nodes = [step("a", "A"), step("b", "B"), step("c", "C", deps=["a"]),
             {"id": "out", "tool": "write_text", "args": {"name": "out.md", "text": "{{a.output}}+{{b.output}}+{{c.output}}"},
              "deps": ["b", "c"]}]
    tid = await h.submit(nodes, [{"id": "has", "check_type": "contains", "params": {"artifact": "out.md", "text": "A+B+C"}}])
    assert await h.drive(tid) == "done"
    task = await h.state(tid)
    assert task.status == TaskStatus.done and task.verdicts[0].passed
    names = {a.name: a for a in task.artifacts}
    manifest = json.loads((h.workspace("default", tid) / "manifest.json").read_text())
    assert [a["name"] for a in manifest["artifacts"]] == ["out.md"]
    assert manifest["artifacts"][0]["sha256"] == names["out.md"].sha256
    statuses = [e.payload["status"] for e in await h.store.read(tid) if e.type == EventType.status]
    assert statuses == ["planning", "executing", "verifying", "publishing", "done"]
    seqs = [e.seq for e in await h.store.read(tid)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert h.runs(tid) == Counter({"a": 1, "b": 1, "c": 1})


async def test_retries_with_backoff_then_success(h):
    tid = await h.submit([{"id": "f", "tool": "flaky", "args": {"fail_times": 2},
                           "retry": {"max_attempts": 3, "backoff_s": 0.01}}])
    assert await h.drive(tid) == "done"
    task = await h.state(tid)
    assert task.nodes["f"].attempts == 3 and task.nodes["f"].output == "ok"
    retries = [e for e in await h.store.read(tid) if e.type == EventType.node_retry]
    assert [e.payload["attempt"] for e in retries] == [1, 2]


async def test_retries_exhausted_fail_the_task_with_reason(h):
    tid = await h.submit([{"id": "f", "tool": "flaky", "args": {"fail_times": 5},
                           "retry": {"max_attempts": 2, "backoff_s": 0.01}}, step("after", "x", deps=["f"])])
    assert await h.drive(tid) == "failed"
    task = await h.state(tid)
    assert "node 'f' failed" in task.reason and "after 2 attempts" in task.reason
    assert task.nodes["after"].status == NodeStatus.pending


async def test_node_timeout_is_a_clean_failure(h):
    tid = await h.submit([step("slow", "x", sleep_s=5, timeout_s=0.2, retry={"max_attempts": 1})])
    assert await h.drive(tid) == "failed"
    assert "timed out after 0.2 s" in (await h.state(tid)).reason


async def test_crash_mid_run_resumes_without_rerunning_finished_nodes(h):
    tid = await h.submit([step("a", "A"), step("b", "B", deps=["a"], sleep_s=0.5), step("c", "C", deps=["b"])])
    first = asyncio.create_task(h.runner(tid, await h.store.claim(tid)).drive())
    for _ in range(200):
        task = await h.state(tid)
        if task and task.nodes and task.nodes["b"].status == NodeStatus.running:
            break
        await asyncio.sleep(0.01)
    first.cancel()  # the process dies mid-node: nothing more is written
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (await h.state(tid)).nodes["b"].outcome_unknown
    assert await h.drive(tid) == "done"
    runs = h.runs(tid)
    assert runs["a"] == 1 and runs["c"] == 1 and runs["b"] == 1
    assert h.runs(tid, "start")["b"] <= 2
    keys = {line[1] for line in h.ledger(tid) if line[0] == "b"}
    assert len(keys) == 1  # the re-run carries the same idempotency key


async def test_newer_lease_fences_the_old_driver(h):
    tid = await h.submit([step("a", "A", sleep_s=0.3), step("b", "B", deps=["a"])])
    old = asyncio.create_task(h.runner(tid, await h.store.claim(tid)).drive())
    await asyncio.sleep(0.1)
    new = h.runner(tid, await h.store.claim(tid))
    results = await asyncio.gather(old, new.drive())
    assert sorted(results) == ["done", "superseded"]
    assert (await h.state(tid)).status == TaskStatus.done


async def test_cancel_request_stops_running_nodes(h):
    tid = await h.submit([step("slow", "x", sleep_s=30)])
    drive = asyncio.create_task(h.drive(tid))
    await asyncio.sleep(0.3)
    await h.store.append(tid, [NewEvent(EventType.cancel_requested, {})])
    assert await asyncio.wait_for(drive, 5) == "cancelled"
    assert h.runs(tid)["slow"] == 0


async def test_side_effect_with_unknown_outcome_asks_the_user(h):
    tid = await h.submit([{"id": "send", "tool": "send_once", "args": {"to": "bob", "sleep_s": 0.5}},
                          step("after", "x", deps=["send"])])
    first = asyncio.create_task(h.drive(tid))
    while h.runs(tid, "send-start")["send"] < 1:  # the driver dies mid-send
        await asyncio.sleep(0.02)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await h.drive(tid) == "waiting_for_input"
    task = await h.state(tid)
    assert "side effects" in task.reason and "'send'" in task.reason
    assert await h.drive(tid) == "waiting_for_input"  # no reply yet: nothing runs
    await h.store.append(tid, [NewEvent(EventType.message, {"text": "skip it, it went out"})])
    assert await h.drive(tid) == "done"
    assert h.runs(tid, "sent")["send"] == 0 and h.runs(tid)["after"] == 1


async def test_failed_verification_fails_with_verdicts(h):
    tid = await h.submit([{"id": "w", "tool": "write_text", "args": {"name": "r.md", "text": "hello"}}],
                         [{"id": "says_bye", "check_type": "contains", "params": {"artifact": "r.md", "text": "bye"}},
                          {"id": "has", "check_type": "exists", "params": {"artifact": "r.md"}}])
    assert await h.drive(tid) == "failed"
    task = await h.state(tid)
    assert [v.passed for v in task.verdicts] == [False, True]
    assert "says_bye" in task.reason and not task.artifacts


async def test_every_deterministic_check(h):
    tid = await h.submit(
        [{"id": "w", "tool": "write_text", "args": {"name": "d.json", "text": '{"items": [1, 2, 3]}'}}],
        [{"id": "exists", "check_type": "exists", "params": {"artifact": "d.json"}},
         {"id": "regex", "check_type": "regex", "params": {"artifact": "d.json", "pattern": r"\d, \d"}},
         {"id": "schema", "check_type": "json_schema", "params": {"artifact": "d.json", "schema": {
             "type": "object", "required": ["items"], "properties": {"items": {"type": "array"}}}}},
         {"id": "count", "check_type": "min_count", "threshold": 3, "params": {"artifact": "d.json", "pattern": r"\d"}},
         {"id": "node", "check_type": "contains", "params": {"node": "w", "field": "name", "text": "d.json"}},
         {"id": "all", "check_type": "all_nodes_done"}])
    assert await h.drive(tid) == "done"
    assert all(v.passed for v in (await h.state(tid)).verdicts)


async def test_plan_needing_missing_output_field_fails_clearly(h):
    tid = await h.submit([step("a", "A"), {"id": "b", "tool": "ledger_step", "args": {"value": "{{a.output.nope}}"},
                                           "deps": ["a"]}])
    assert await h.drive(tid) == "failed"
    assert "has no 'nope'" in (await h.state(tid)).reason


async def test_a_retry_of_a_call_in_doubt_runs_it_once_more_and_a_second_loss_asks_again(h):
    tid = await h.submit([{"id": "send", "tool": "send_once", "args": {"to": "bob", "sleep_s": 0.5}}])
    for _ in range(2):  # the first run is lost, then the confirmed re-run is lost too
        drive = asyncio.create_task(h.drive(tid))
        while h.runs(tid, "send-start")["send"] < _ + 1:
            await asyncio.sleep(0.02)
        drive.cancel()
        with pytest.raises(asyncio.CancelledError):
            await drive
        assert await h.drive(tid) == "waiting_for_input"
        task = await h.state(tid)
        [doubt] = task.in_doubt
        assert doubt["runs"] == _ + 1 and doubt["args"] == {"to": "bob", "sleep_s": 0.5}
        await h.store.append(tid, [NewEvent(EventType.message, {"text": "retry"})])
    assert await h.drive(tid) == "done"
    assert h.runs(tid, "send-start")["send"] == 3 and h.runs(tid, "sent")["send"] == 1  # two retries, two re-runs


async def test_an_outcome_the_pool_kept_but_the_log_lost_is_replayed_not_rerun(h):
    tid = await h.submit([{"id": "send", "tool": "send_once", "args": {"to": "bob"}}, step("after", "x", ["send"])])
    real = h.call_tool

    async def result_lost(call):  # the driver dies after the tool ran, before it logged the result
        await real(call)
        raise asyncio.CancelledError

    h.call_tool = result_lost
    with pytest.raises(asyncio.CancelledError):
        await h.drive(tid)
    h.call_tool = real
    assert await h.drive(tid) == "done"
    assert h.runs(tid, "sent")["send"] == 1
    replayed = [e for e in await h.store.read(tid) if e.type == EventType.tool_result and e.payload.get("replayed")]
    assert [e.payload["output"] for e in replayed] == ["sent to bob"]


async def test_a_side_effecting_call_that_times_out_is_not_retried(h):
    tid = await h.submit([{"id": "send", "tool": "send_once", "args": {"to": "bob", "sleep_s": 5}, "timeout_s": 0.3,
                           "retry": {"max_attempts": 5, "backoff_s": 0}}])
    assert await h.drive(tid) == "waiting_for_input"
    task = await h.state(tid)
    assert task.waiting_on == "side_effects" and task.in_doubt[0]["node_id"] == "send"
    assert h.runs(tid, "send-start")["send"] == 1


def _ledger_down_for(h, failures):
    """The call ledger's database refuses the next `failures` claims, as in an outage."""
    real, left = h.calls.claim, [failures]

    async def claim(call):
        if left[0] > 0:
            left[0] -= 1
            raise ConnectionError("database is restarting")
        return await real(call)

    h.calls.claim = claim
    return left


async def test_a_ledger_outage_is_waited_out_without_spending_an_attempt(h):
    # One attempt only: were the outage taken as a failed attempt, the task would fail.
    tid = await h.submit([{"id": "send", "tool": "send_once", "args": {"to": "bob"},
                           "retry": {"max_attempts": 1, "backoff_s": 0}}])
    left = _ledger_down_for(h, 3)
    assert await h.drive(tid) == "done"
    assert left == [0] and h.runs(tid, "sent")["send"] == 1
    events = await h.store.read(tid)
    assert not [e for e in events if e.type in (EventType.node_retry, EventType.node_failed)]
    assert (await h.state(tid)).nodes["send"].attempts == 1


async def test_a_newer_lease_stops_the_old_drivers_call_in_flight(h):
    tid = await h.submit([step("a", "A", sleep_s=30), step("b", "B", deps=["a"])])
    old = asyncio.create_task(h.drive(tid))
    while h.runs(tid, "start")["a"] < 1:
        await asyncio.sleep(0.02)
    await h.store.claim(tid)  # a newer lease, as after a re-dispatch: the pool's heartbeat stops the call
    assert await asyncio.wait_for(old, 20) == "superseded"
    assert h.runs(tid, "done") == Counter()


async def test_a_newer_lease_stops_the_old_driver_itself(h):
    # A side-effecting call is not stopped by the pool's fence (cut short, it would be in
    # doubt); the old driver's own heartbeat sees the newer lease and ends its drive.
    tid = await h.submit([{"id": "send", "tool": "send_once", "args": {"to": "bob", "sleep_s": 30}}])
    old = asyncio.create_task(h.drive(tid))
    while h.runs(tid, "send-start")["send"] < 1:
        await asyncio.sleep(0.02)
    await h.store.claim(tid)
    assert await asyncio.wait_for(old, 20) == "superseded"
    assert h.runs(tid, "sent")["send"] == 0


async def test_a_lost_pool_is_asked_again_without_spending_an_attempt(h):
    tid = await h.submit([step("a", "A", retry={"max_attempts": 1})])
    real, lost = h.call_tool, []

    async def pool_dies_twice(call):
        if len(lost) < 2:
            lost.append(call.idempotency_key)
            raise ConnectionError("replica died")
        return await real(call)

    h.call_tool = pool_dies_twice
    assert await h.drive(tid) == "done"
    assert len(lost) == 2 and h.runs(tid)["a"] == 1

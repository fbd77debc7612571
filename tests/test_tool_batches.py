"""Tool calls batched per loop turn (deployments/tool_batches.py): against a scripted pool,
which request each call travels in and when a request is cancelled; against the app's real
ToolPool through Serve, that outcomes come back as their calls end and that a batch nobody
waits for stops its runs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from deployments.tool_batches import BatchedToolCalls, run_batch
from troupe.tool_calls import ToolCall, ToolOutcome


def call(value: str, *, sleep_s: float = 0.0, side_effects: bool = False, task_id: str = "t1") -> ToolCall:
    return ToolCall(tool="ledger_step", args={"value": value, "sleep_s": sleep_s}, task_id=task_id,
                    tenant="default", node_id=value, idempotency_key=f"{task_id}:{value}:{uuid.uuid4().hex[:6]}",
                    side_effects=side_effects)


# -- against a scripted pool: the shape of the requests ------------------------------------


class _Request:
    """A Serve response, as the batcher sees one: awaitable or async-iterable, cancellable."""

    def __init__(self, job: asyncio.Task, queue: asyncio.Queue | None = None):
        self.job, self.queue, self.cancelled = job, queue, False

    def cancel(self) -> None:
        self.cancelled = True
        self.job.cancel()

    def __await__(self):
        return self.job.__await__()

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item


class ScriptedPool:
    """The ToolPool's two methods over a local `run_one`; records every request it gets."""

    def __init__(self, run_one: Callable[[ToolCall], Awaitable[ToolOutcome]]):
        self.run_one = run_one
        self.requests: list[tuple[str, list[str], _Request]] = []
        self.cancelled_runs: list[str] = []
        self.call = self._Method(self, "call")
        self.call_many = self._Method(self, "call_many")

    def options(self, *, stream: bool = False) -> ScriptedPool:
        assert stream
        return self

    class _Method:
        def __init__(self, pool: ScriptedPool, name: str):
            self.pool, self.name = pool, name

        def remote(self, arg: Any) -> _Request:
            pool = self.pool
            if self.name == "call":
                request = _Request(asyncio.ensure_future(pool._run(arg)))
                pool.requests.append(("call", [arg.node_id], request))
                return request
            queue: asyncio.Queue = asyncio.Queue()

            async def pump() -> None:
                try:
                    async for answers in run_batch(pool._run, arg):
                        await queue.put(answers)
                except Exception as exc:
                    await queue.put(exc)
                    return
                await queue.put(StopAsyncIteration())

            request = _Request(asyncio.ensure_future(pump()), queue)
            pool.requests.append(("call_many", [c.node_id for c in arg], request))
            return request

    async def _run(self, c: ToolCall) -> ToolOutcome:
        try:
            return await self.run_one(c)
        except asyncio.CancelledError:
            self.cancelled_runs.append(c.node_id)
            raise


async def sleepy(c: ToolCall) -> ToolOutcome:
    await asyncio.sleep(c.args["sleep_s"])
    if c.args["value"] == "boom":
        raise ValueError("a bug in the pool")
    return ToolOutcome(ok=True, output=c.args["value"])


async def test_the_calls_of_one_turn_share_a_request_and_a_lone_call_goes_by_itself():
    pool = ScriptedPool(sleepy)
    calls = BatchedToolCalls(pool, max_batch=3)
    outcomes = await asyncio.gather(*(calls.call(call(v)) for v in "abcde"))
    assert [o.output for o in outcomes] == list("abcde")
    assert [(kind, nodes) for kind, nodes, _ in pool.requests] == [("call_many", ["a", "b", "c"]),
                                                                     ("call_many", ["d", "e"])]
    assert (await calls.call(call("f"))).output == "f"
    assert pool.requests[-1][:2] == ("call", ["f"])


async def test_a_slow_call_holds_up_no_other_and_a_failing_one_fails_alone():
    pool = ScriptedPool(sleepy)
    calls = BatchedToolCalls(pool)
    slow = asyncio.ensure_future(calls.call(call("slow", sleep_s=30)))
    fast = asyncio.ensure_future(calls.call(call("fast")))
    boom = asyncio.ensure_future(calls.call(call("boom")))
    assert (await fast).output == "fast"
    with pytest.raises(RuntimeError, match="a bug in the pool"):
        await boom
    assert not slow.done() and len(pool.requests) == 1
    slow.cancel()


async def test_a_batch_nobody_waits_for_is_cancelled_and_its_runs_stop():
    pool = ScriptedPool(sleepy)
    calls = BatchedToolCalls(pool)
    waits = [asyncio.ensure_future(calls.call(call(v, sleep_s=30))) for v in ("x", "y")]
    done = asyncio.ensure_future(calls.call(call("quick")))
    assert (await done).output == "quick"
    (_, _, request), = pool.requests
    waits[0].cancel()  # another caller still waits: the request stays, and "x" runs on
    await asyncio.sleep(0.05)
    assert not request.cancelled and pool.cancelled_runs == []
    waits[1].cancel()  # now nobody waits: the request goes, and the pool stops both
    await asyncio.sleep(0.05)
    assert request.cancelled and sorted(pool.cancelled_runs) == ["x", "y"]


async def test_a_side_effecting_call_is_never_cut_short_by_its_callers_leaving():
    pool = ScriptedPool(sleepy)
    calls = BatchedToolCalls(pool)
    waits = [asyncio.ensure_future(calls.call(call("send", sleep_s=0.3, side_effects=True))),
             asyncio.ensure_future(calls.call(call("idem", sleep_s=30)))]
    await asyncio.sleep(0.05)
    for w in waits:
        w.cancel()
    await asyncio.sleep(0.05)
    (_, _, request), = pool.requests
    assert not request.cancelled  # the send must end on its own: its outcome goes to the ledger
    lone = asyncio.ensure_future(calls.call(call("mail", sleep_s=30, side_effects=True)))
    await asyncio.sleep(0.05)
    lone.cancel()
    await asyncio.sleep(0.05)
    assert not pool.requests[-1][2].cancelled and "mail" not in pool.cancelled_runs
    assert "send" not in pool.cancelled_runs


async def test_a_call_given_up_before_it_is_sent_is_not_sent():
    pool = ScriptedPool(sleepy)
    calls = BatchedToolCalls(pool)
    gone = asyncio.ensure_future(calls.call(call("gone", side_effects=True)))
    kept = asyncio.ensure_future(calls.call(call("kept")))
    await asyncio.sleep(0)  # both queued, not yet sent
    gone.cancel()
    assert (await kept).output == "kept"
    assert [nodes for _, nodes, _ in pool.requests] == [["kept"]]


async def test_a_lost_pool_fails_every_call_of_the_batch_for_its_caller_to_decide():
    pool = ScriptedPool(sleepy)
    calls = BatchedToolCalls(pool)
    first = asyncio.ensure_future(calls.call(call("a", sleep_s=30)))
    second = asyncio.ensure_future(calls.call(call("b", sleep_s=30)))
    await asyncio.sleep(0.05)
    (_, _, request), = pool.requests
    request.queue.put_nowait(ConnectionError("the replica died"))  # what a dead replica's stream raises
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert [type(r) for r in results] == [ConnectionError, ConnectionError]
    request.job.cancel()


async def test_a_call_cancelled_inside_the_pool_is_answered_and_ends_no_other():
    async def one(c: ToolCall) -> ToolOutcome:
        if c.args["value"] == "stopped":
            raise asyncio.CancelledError  # as a run stopped inside the pool would end
        await asyncio.sleep(0.05)
        return ToolOutcome(ok=True, output=c.args["value"])

    answers = [a for message in [m async for m in run_batch(one, [call("stopped"), call("fine")])] for a in message]
    by_index = {a.index: a for a in answers}
    assert by_index[0].outcome is None and "cancelled in the tool pool" in by_index[0].error
    assert by_index[1].outcome.output == "fine"


def test_the_pool_scales_by_tool_calls_in_flight_not_by_requests():
    from ray.serve._private.common import DeploymentID, ReplicaID
    from ray.serve.config import AutoscalingConfig, AutoscalingContext

    from deployments.tool_pool import tool_calls_policy

    def context(calls: dict[str, float] | None, requests: float) -> AutoscalingContext:
        dep = DeploymentID(name="ToolPool", app_name="troupe")
        replicas = [ReplicaID(unique_id=u, deployment_id=dep) for u in ("r1", "r2")]
        return AutoscalingContext(
            deployment_id=dep, deployment_name="ToolPool", app_name="troupe", current_num_replicas=2,
            target_num_replicas=2, running_replicas=replicas, total_num_requests=requests, total_queued_requests=0,
            aggregated_metrics={"tool_calls": {r: calls[r.unique_id] for r in replicas}} if calls else {},
            raw_metrics={}, capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=8, policy_state={},
            last_scale_up_time=None, last_scale_down_time=None, current_time=None,
            config=AutoscalingConfig(min_replicas=1, max_replicas=8, target_ongoing_requests=250))

    # 12 requests carry 1,000 calls: 4 replicas' worth, where Serve's own count would ask for 1.
    assert tool_calls_policy(context({"r1": 600, "r2": 400}, requests=12))[0] == 4
    assert tool_calls_policy(context(None, requests=500))[0] == 2  # no figure yet: requests, as Serve's own


# -- against the app's ToolPool, through Serve ----------------------------------------------


def _ledger(home: Path, task_id: str) -> list[tuple[str, str]]:
    path = home / "workspaces" / "default" / f"{task_id}.ledger"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(line.split()[0], line.split()[3]) for line in lines]


async def _until(predicate: Callable[[], Any], what: str, timeout_s: float = 60) -> None:
    for _ in range(int(timeout_s / 0.1)):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.ray
async def test_through_serve_outcomes_come_back_as_calls_end_and_an_abandoned_batch_stops(troupe_app):
    from ray import serve

    pool = serve.get_deployment_handle("ToolPool", app_name=troupe_app.name)
    calls = BatchedToolCalls(pool)
    task_id = f"t-{uuid.uuid4().hex[:8]}"
    slow = asyncio.ensure_future(calls.call(call("slow", sleep_s=60, task_id=task_id)))
    fast = await asyncio.gather(*(calls.call(call(v, task_id=task_id)) for v in ("a", "b", "c")))
    assert [o.output for o in fast] == ["a", "b", "c"] and all(o.ok for o in fast)
    assert ("slow", "done") not in _ledger(troupe_app.home, task_id) and not slow.done()
    # The autoscaler's figure counts calls, not requests (one request carried all four).
    assert await pool.record_autoscaling_stats.remote() == {"tool_calls": 1}

    # Two calls nobody waits for any more: the request is cancelled and the pool stops them.
    late = [asyncio.ensure_future(calls.call(call(v, sleep_s=60, task_id=task_id))) for v in ("x", "y")]
    await _until(lambda: {("x", "start"), ("y", "start")} <= set(_ledger(troupe_app.home, task_id)), "both runs")
    for w in late:
        w.cancel()
    await _until(lambda: {("x", "cancelled"), ("y", "cancelled")} <= set(_ledger(troupe_app.home, task_id)),
                 "the pool to stop both runs")
    slow.cancel()
    await _until(lambda: ("slow", "cancelled") in _ledger(troupe_app.home, task_id), "the last call of the first batch to stop")

"""Autonomy in the runner, in one process over a real store (SQLite and PostgreSQL) and a scripted in-process
model: planning with repair, agent nodes and their guards, budgets, corrections, follow-ups,
and resuming an agent after a crash. (The same flows over HTTP and Ray Serve, with a scripted
OpenAI-compatible server, are in test_agents_e2e.py.)"""

import asyncio
import json
import uuid
from collections import Counter

import pytest

from memory.call_ledger import CallLedger
from memory.store import EventStore, NewEvent
from memory.working_set import WorkingSet
from tests.support.fake_llm import FakeLLM, as_json, calls, text
from tests.support.hot import hot_prefix, hot_store  # noqa: F401  (a fixture)
from tools.executor import execute_call
from tools.registry import load_registry
from troupe.llm import LLMRequestError, LLMUnavailable
from troupe.models import EventType, NodeStatus, Priority, TaskStatus
from troupe.planner import ModelPlanner
from troupe.reducer import reduce
from troupe.runner import TaskRunner
from troupe.verifier import Verifier


class LocalPlanner:
    """The Planner deployment's role, in process."""

    def __init__(self, llm, tools):
        self.model = ModelPlanner(llm, {n: tools.get(n) for n in tools.names()}, tools.specs())

    async def plan(self, ctx):
        return await self.model.plan(ctx)

    async def correct(self, ctx):
        return await self.model.correct(ctx)

    async def learn(self, task):
        return None


class Harness:
    def __init__(self, store, root, working_set=None):
        self.store, self.root = store, root
        self.working_set = working_set
        self.tools = load_registry(["tests.support.tools"])
        self.llm = FakeLLM()
        self.calls = CallLedger(store, heartbeat_s=0.2)

    def workspace(self, tenant, task_id):
        return self.root / "ws" / tenant / task_id

    async def call_tool(self, call):
        return await execute_call(self.tools, call, self.workspace(call.tenant, call.task_id), ledger=self.calls)

    async def submit(self, goal="reach the goal", plan=None, tests=None, **extra):
        task_id = str(uuid.uuid4())
        payload = {"goal": goal, "acceptance_tests": tests or [], **extra}
        if plan is not None:
            payload["plan"] = {"nodes": plan}
        await self.store.create_task(task_id, tenant="default", goal=goal, priority=Priority.normal, payload=payload)
        return task_id

    def runner(self, task_id, epoch):
        return TaskRunner(self.store, self.call_tool, self.tools, self.workspace, task_id, epoch, poll_s=0.05,
                          planner=LocalPlanner(self.llm, self.tools), verifier=Verifier(self.llm), llm=self.llm,
                          working_set=self.working_set)

    async def drive(self, task_id):
        return await self.runner(task_id, await self.store.claim(task_id, from_states=("pending", "dispatched",
                                                                                     "waiting", "terminal"))).drive()

    async def state(self, task_id):
        return reduce(await self.store.read(task_id))

    async def types(self, task_id):
        return [e.type for e in await self.store.read(task_id)]

    def runs(self, task_id, what="done"):
        path = self.root / "ws" / "default" / f"{task_id}.ledger"
        lines = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
        return Counter(line[0] for line in lines if line[3] == what), lines


@pytest.fixture
async def h(any_store_url, tmp_path, hot_prefix):
    """Agent nodes read their context through a hot working set on the machine's Redis."""
    store = EventStore(any_store_url)
    await store.migrate()
    harness = Harness(store, tmp_path, WorkingSet(hot_store(hot_prefix), recent_outputs=8))
    yield harness
    await harness.working_set.hot.close()
    await store.close()
    harness.llm.assert_all_used()


def step(id_, value, deps=(), **kw):
    return {"id": id_, "tool": "ledger_step", "args": {"value": value}, "deps": list(deps), **kw}


AGENT = {"id": "gather", "kind": "agent", "deps": ["a", "b"], "tools": ["ledger_step"],
         "instructions": "Collect values starting from {{a.output}} and {{b.output}}."}


async def test_goal_is_planned_executed_verified_corrected_and_published(h):
    plan = {"pinned_requirements": ["The report must say FINAL"],
            "nodes": [step("a", "A"), step("b", "B"), AGENT,
                      {"id": "report", "tool": "write_text", "deps": ["gather"],
                       "args": {"name": "report.md", "text": "{{gather.output.answer}}"}}],
            "acceptance_tests": [{"id": "says_final", "check_type": "contains",
                                  "params": {"artifact": "report.md", "text": "FINAL"}}]}
    fix = {"diagnosis": "the report lacks FINAL", "nodes": [
        {"id": "report", "tool": "write_text", "deps": ["gather"],
         "args": {"name": "report.md", "text": "FINAL: {{gather.output.answer}}"}}]}
    h.llm.add(as_json(plan),
              calls(("ledger_step", {"value": "x1"}), ("ledger_step", {"value": "x2"})),
              calls(("ledger_step", {"value": "x3"})),
              text("collected x1 x2 x3"),
              as_json(fix))
    tid = await h.submit("Collect three values and write a report that says FINAL")
    assert await h.drive(tid) == "done"

    task = await h.state(tid)
    events = await h.store.read(tid)
    statuses = [e.payload["status"] for e in events if e.type == EventType.status]
    assert statuses == ["planning", "executing", "verifying", "executing", "verifying", "publishing", "done"]
    assert task.plan_source == "llm" and task.corrections == 1
    assert [v.passed for v in task.verdicts] == [True]
    assert (h.workspace("default", tid) / "report.md").read_text() == "FINAL: collected x1 x2 x3"
    # the agent made three calls over two turns, then answered; every model call is on the log
    agent_calls = [e for e in events if e.type == EventType.tool_called and e.payload.get("node_id") == "gather"]
    assert [e.payload["args"]["value"] for e in agent_calls] == ["x1", "x2", "x3"]
    usage = [e.payload["purpose"] for e in events if e.type == EventType.llm_called]
    assert usage == ["plan", "agent:gather", "agent:gather", "agent:gather", "correct"]
    assert task.usage.llm_calls == 5 and task.usage.cost_usd == pytest.approx(0.005)
    runs, _ = h.runs(tid)
    assert runs["a"] == runs["b"] == 1 and runs["gather"] == 3
    assert h.runs(tid, "write")[0]["report"] == 2  # redefined by the correction: a new idempotency key
    # pinned requirements reach every later model call; the correction sees what failed
    assert all("The report must say FINAL" in r.messages[0]["content"] for r in h.llm.requests[1:])
    assert "says_final" in h.llm.requests[-1].messages[-1]["content"]
    # the agent saw its instructions with upstream outputs filled in
    assert h.llm.requests[1].messages[1]["content"] == "Collect values starting from A and B."


async def test_invalid_plans_are_repaired_by_sending_the_error_back(h):
    good = {"nodes": [step("a", "A")]}
    cyclic = {"nodes": [step("a", "A", deps=["b"]), step("b", "B", deps=["a"])]}
    h.llm.add(text("Sure! Here is the plan: nodes a then b"), as_json(cyclic), as_json(good))
    tid = await h.submit()
    assert await h.drive(tid) == "done"
    feedback = [r.messages[-1]["content"] for r in h.llm.requests[1:]]
    assert "not valid JSON" in feedback[0]
    assert "cycle" in feedback[1] and "a -> b -> a" in feedback[1] or "b -> a -> b" in feedback[1]
    plan_set = next(e for e in await h.store.read(tid) if e.type == EventType.plan_set)
    assert plan_set.payload["repairs"] == 2


async def test_a_plan_cut_off_at_the_token_limit_is_named_so_and_repaired(h):
    good = {"nodes": [step("a", "A")]}
    cut = as_json(good)["content"][:25]
    h.llm.add({"content": cut, "finish_reason": "length"}, as_json(good))
    tid = await h.submit()
    assert await h.drive(tid) == "done"
    feedback = h.llm.requests[1].messages[-1]["content"]
    assert "cut off at the token limit" in feedback and "shorter" in feedback


async def test_unrepairable_plan_fails_the_task_with_the_reason(h):
    bad = {"nodes": [{"id": "a", "tool": "teleport", "args": {}}]}
    h.llm.add(as_json(bad), as_json(bad), as_json(bad))
    tid = await h.submit()
    assert await h.drive(tid) == "failed"
    task = await h.state(tid)
    assert "planning failed" in task.reason and "unknown tool 'teleport'" in task.reason
    assert "after 2 repairs" in task.reason and task.usage.llm_calls == 3


async def test_agent_repeating_one_call_is_warned_then_stopped(h):
    same = ("ledger_step", {"value": "again"})
    h.llm.add(calls(same), calls(same), calls(same))
    plan = [step("a", "A"), step("b", "B"), {**AGENT, "max_steps": 8}]
    tid = await h.submit(plan=plan, max_corrections=0)  # the guard, not the correction, is tested here
    assert await h.drive(tid) == "failed"
    task = await h.state(tid)
    assert task.nodes["gather"].status == NodeStatus.failed
    assert "agent stuck: it repeated the identical call ledger_step" in task.reason
    assert h.runs(tid)[0]["gather"] == 1  # the repeats never ran
    nudge = h.llm.requests[2].messages[-1]
    assert nudge["role"] == "tool" and "Change strategy" in nudge["content"]


async def test_agent_stops_at_max_steps(h):
    h.llm.add(*[calls(("ledger_step", {"value": f"v{i}"})) for i in range(3)])
    tid = await h.submit(plan=[step("a", "A"), step("b", "B"), {**AGENT, "max_steps": 3}], max_corrections=0)
    assert await h.drive(tid) == "failed"
    assert "max_steps=3" in (await h.state(tid)).reason
    assert h.runs(tid)[0]["gather"] == 3


async def test_budget_pauses_the_task_and_a_raise_resumes_it(h):
    h.llm.add(calls(("ledger_step", {"value": "1"})), calls(("ledger_step", {"value": "2"})))
    tid = await h.submit(plan=[step("a", "A"), step("b", "B"), AGENT], budget={"max_llm_calls": 2, "max_cost_usd": 5})
    assert await h.drive(tid) == "waiting_for_input"
    task = await h.state(tid)
    assert task.waiting_on == "budget" and "max_llm_calls is 2" in task.reason
    assert await h.drive(tid) == "waiting_for_input"  # nothing changed: still waiting, no model call
    await h.store.append(tid, [NewEvent(EventType.budget_raised, {"max_llm_calls": 3})])
    h.llm.add(text("done"))
    assert await h.drive(tid) == "done"
    task = await h.state(tid)
    assert task.usage.llm_calls == 3 and task.nodes["gather"].output["answer"] == "done"
    assert h.runs(tid)[0]["gather"] == 2


async def test_a_reply_to_a_budget_pause_doubles_the_limit(h):
    h.llm.add(calls(("ledger_step", {"value": "1"})))
    tid = await h.submit(plan=[step("a", "A"), step("b", "B"), AGENT], budget={"max_llm_calls": 1})
    assert await h.drive(tid) == "waiting_for_input"
    await h.store.append(tid, [NewEvent(EventType.message, {"text": "go on"})])
    h.llm.add(text("ok"))
    assert await h.drive(tid) == "done"
    assert (await h.state(tid)).budget.max_llm_calls == 2


async def test_follow_up_opens_an_iteration_with_pinned_requirements_as_context(h):
    first = {"pinned_requirements": ["Use metric units"], "nodes": [
        {"id": "w", "tool": "write_text", "args": {"name": "r.md", "text": "10 km"}}]}
    h.llm.add(as_json(first))
    tid = await h.submit("Report the distance in metric units")
    assert await h.drive(tid) == "done"
    second = {"pinned_requirements": ["Also give miles"], "nodes": [
        {"id": "w2", "tool": "write_text", "args": {"name": "r2.md", "text": "10 km (6.2 mi)"}}]}
    h.llm.add(as_json(second))
    await h.store.append(tid, [NewEvent(EventType.message, {"text": "Also give miles"}),
                               NewEvent(EventType.iteration_started, {"iteration": 2, "text": "Also give miles"})])
    assert (await h.state(tid)).status == TaskStatus.queued
    assert await h.drive(tid) == "done"
    task = await h.state(tid)
    assert task.iteration == 2 and task.pinned_requirements == ["Use metric units", "Also give miles"]
    request = h.llm.requests[-1]
    assert "Use metric units" in request.messages[0]["content"]  # earlier pinned requirements
    assert "Also give miles" in request.messages[1]["content"] and "r.md" in request.messages[1]["content"]
    assert {a.name for a in task.artifacts} >= {"r.md", "r2.md"}


async def test_crash_during_an_agent_node_repeats_no_finished_call(h):
    h.llm.add(calls(("ledger_step", {"value": "fast"})),
              calls(("ledger_step", {"value": "slow", "sleep_s": 1.0}), ("ledger_step", {"value": "quick"})))
    tid = await h.submit(plan=[step("a", "A"), step("b", "B"), AGENT])
    first = asyncio.create_task(h.drive(tid))
    for _ in range(300):
        task = await h.state(tid)
        if task and "gather" in task.nodes and len(task.nodes["gather"].transcript) >= 4:
            break  # turn 2 is running: "quick" has its result, "slow" does not
        await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    state = (await h.state(tid)).nodes["gather"]
    assert len(state.unknown_calls) == 1
    h.llm.add(text("all three"))
    assert await h.drive(tid) == "done"
    _, lines = h.runs(tid)
    done = Counter(line[0] for line in lines if line[3] == "done")
    assert done["gather"] == 3  # fast, quick and slow each finished exactly once
    assert len(h.llm.requests) == 3  # no model turn was asked again


async def test_a_retry_for_an_agents_call_in_doubt_outlives_a_crash_of_the_drive(h):
    agent = {"id": "notify", "kind": "agent", "tools": ["send_once"], "instructions": "Tell bob."}
    h.llm.add(calls(("send_once", {"to": "bob", "sleep_s": 0.5})))
    tid = await h.submit(plan=[agent])
    first = asyncio.create_task(h.drive(tid))
    while h.runs(tid, "send-start")[0]["notify"] < 1:
        await asyncio.sleep(0.02)
    first.cancel()  # the driver dies mid-send: the call is in doubt
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await h.drive(tid) == "waiting_for_input"
    assert [c["tool"] for c in (await h.state(tid)).in_doubt] == ["send_once"]
    await h.store.append(tid, [NewEvent(EventType.message, {"text": "retry"})])
    real = h.call_tool

    async def dies_before_the_rerun(call):
        raise asyncio.CancelledError

    h.call_tool = dies_before_the_rerun  # the drive that read the reply dies before it runs the call
    with pytest.raises(asyncio.CancelledError):
        await h.drive(tid)
    h.call_tool = real
    h.llm.add(text("told bob"))
    assert await h.drive(tid) == "done"  # the answer was in the log: not asked again
    assert h.runs(tid, "send-start")[0]["notify"] == 2 and h.runs(tid, "sent")[0]["notify"] == 1
    assert sum(1 for e in await h.store.read(tid) if e.payload.get("waiting_on") == "side_effects") == 1


async def test_a_ledger_outage_never_reaches_the_model(h):
    from tests.test_runner import _ledger_down_for

    agent = {"id": "notify", "kind": "agent", "tools": ["send_once"], "instructions": "Tell bob."}
    seen = []

    def answer(request):
        seen.append(json.dumps([m.model_dump() if hasattr(m, "model_dump") else m for m in request.messages],
                               default=str))
        return text("told bob")

    h.llm.add(calls(("send_once", {"to": "bob"})), answer)
    left = _ledger_down_for(h, 3)
    tid = await h.submit(plan=[agent])
    assert await h.drive(tid) == "done"
    assert left == [0] and h.runs(tid, "sent")[0]["notify"] == 1
    assert "sent to bob" in seen[0] and "ledger" not in seen[0]  # the model saw the result, not the outage
    results = [e for e in await h.store.read(tid) if e.type == EventType.tool_result]
    assert [e.payload.get("error") for e in results] == [None]


async def test_model_unavailable_waits_and_a_reply_retries(h):
    h.llm.add(LLMUnavailable("group 'reason': every deployment failed (Connection refused)"))
    tid = await h.submit()
    assert await h.drive(tid) == "waiting_for_input"
    task = await h.state(tid)
    assert task.waiting_on == "model" and "Connection refused" in task.reason
    h.llm.add(as_json({"nodes": [step("a", "A")]}))
    await h.store.append(tid, [NewEvent(EventType.message, {"text": "retry"})])
    assert await h.drive(tid) == "done"


async def test_corrections_stop_at_the_limit_and_ask_the_user(h):
    plan = {"nodes": [{"id": "w", "tool": "write_text", "args": {"name": "r.md", "text": "no"}}],
            "acceptance_tests": [{"id": "yes", "check_type": "contains", "params": {"artifact": "r.md", "text": "yes"}}]}
    retry = {"nodes": [{"id": "w", "tool": "write_text", "args": {"name": "r.md", "text": "still no"}}]}
    h.llm.add(as_json(plan), as_json(retry))
    tid = await h.submit(max_corrections=1)
    assert await h.drive(tid) == "waiting_for_input"
    task = await h.state(tid)
    assert task.waiting_on == "verification" and "after 1 corrections" in task.reason and "yes" in task.reason
    fixed = {"nodes": [{"id": "w", "tool": "write_text", "args": {"name": "r.md", "text": "yes"}}]}
    h.llm.add(as_json(fixed))
    await h.store.append(tid, [NewEvent(EventType.message, {"text": "the file must say yes"})])
    assert await h.drive(tid) == "done"
    assert "the file must say yes" in h.llm.requests[-1].messages[-1]["content"]


async def test_a_model_without_structured_output_gets_the_schema_in_words(h):
    h.llm.add(LLMRequestError("response_format json_schema is not supported by this model"),
              as_json({"nodes": [step("a", "A")]}))
    tid = await h.submit()
    assert await h.drive(tid) == "done"
    retry = h.llm.requests[-1]
    assert retry.response_format is None and "JSON Schema" in retry.messages[-1]["content"]


async def test_a_failed_node_is_corrected_around_when_a_model_is_there(h):
    plan = {"nodes": [step("a", "A"), {"id": "f", "tool": "flaky", "args": {"fail_times": 9},
                                       "retry": {"max_attempts": 1}}, step("after", "{{f.output}}", deps=["f"])]}
    fix = {"diagnosis": "flaky never succeeds", "nodes": [step("f", "F")]}
    h.llm.add(as_json(plan), as_json(fix))
    tid = await h.submit()
    assert await h.drive(tid) == "done"
    task = await h.state(tid)
    assert task.corrections == 1 and task.nodes["after"].output == "F"
    assert "node 'f' failed" in h.llm.requests[-1].messages[-1]["content"]
    assert h.runs(tid)[0]["a"] == 1  # what had succeeded is not run again


async def test_a_failed_node_fails_the_task_when_corrections_are_spent(h):
    plan = {"nodes": [{"id": "f", "tool": "flaky", "args": {"fail_times": 9}, "retry": {"max_attempts": 1}}]}
    h.llm.add(as_json(plan))
    tid = await h.submit(max_corrections=0)
    assert await h.drive(tid) == "failed"
    assert "node 'f' failed: transient failure" in (await h.state(tid)).reason


async def _until(predicate, timeout_s=20.0, what=None):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out; log: {what() if what else ''}"
        await asyncio.sleep(0.02)


def slow(id_, value, sleep_s=1.0):
    return {"id": id_, "tool": "ledger_step", "args": {"value": value, "sleep_s": sleep_s}}


THREE_BRANCHES = [step("a", "A"), slow("b", "B"), slow("c", "C"),
                  {"id": "report", "tool": "write_text", "deps": ["a", "b", "c"],
                   "args": {"name": "report.md", "text": "{{a.output}} {{b.output}} {{c.output}}"}}]


async def test_an_interrupt_revises_the_running_plan_and_reruns_nothing_finished(h):
    from troupe.transitions import post_message

    note = "Say the values are in metric units"
    fix = {"diagnosis": "the report must mention metric units", "nodes": [
        {"id": "report", "tool": "write_text", "deps": ["a", "b", "c"],
         "args": {"name": "report.md", "text": "{{a.output}} {{b.output}} {{c.output}}, in metric units"}}]}
    h.llm.add(as_json(fix))
    tid = await h.submit("three branches and a report", plan=THREE_BRANCHES)
    drive = asyncio.create_task(h.drive(tid))
    await _until(lambda: h.runs(tid)[0]["a"] == 1 and h.runs(tid, "start")[0]["b"] == 1,
                 what=lambda: drive.done() and drive.result())
    posted = await post_message(h.store, tid, note, on_running="interrupt")
    assert posted.applied == "interrupt" and not posted.follow_up
    assert await drive == "done"

    task = await h.state(tid)
    done, _ = h.runs(tid)
    assert done == Counter({"a": 1, "b": 1, "c": 1})  # b and c finished their runs; none ran again
    assert h.runs(tid, "write")[0] == Counter({"report": 1})  # the report ran once, as revised
    assert (h.workspace("default", tid) / "report.md").read_text() == "A B C, in metric units"
    assert task.iteration == 1 and note in task.pinned_requirements and task.interrupts == []
    [interrupted] = [e.payload for e in await h.store.read(tid) if e.type == EventType.interrupted]
    assert interrupted["messages"] == [note] and interrupted["replanned"] and interrupted["nodes"] == ["report"]
    [request] = h.llm.requests
    assert note in request.messages[1]["content"] and "While the plan ran" in request.messages[1]["content"]
    assert note in request.messages[0]["content"]  # pinned, like every requirement


async def test_enqueue_waits_for_the_iteration_to_end_and_reject_refuses(h):
    from troupe.transitions import TaskRunning, post_message

    second = {"nodes": [{"id": "w", "tool": "write_text", "args": {"name": "more.md", "text": "more"}}]}
    h.llm.add(as_json(second))
    tid = await h.submit("three branches and a report", plan=THREE_BRANCHES)
    drive = asyncio.create_task(h.drive(tid))
    await _until(lambda: h.runs(tid, "start")[0]["b"] == 1)
    with pytest.raises(TaskRunning, match="on_running=reject"):
        await post_message(h.store, tid, "not now", on_running="reject")
    posted = await post_message(h.store, tid, "Then write more.md", on_running="enqueue")
    assert posted.applied == "enqueued" and posted.iteration == 1
    assert await drive == "queued"  # iteration 1 ended as planned; the message started iteration 2

    task = await h.state(tid)
    assert task.iteration == 2 and task.history[0]["status"] == "done" and task.requirements == ["Then write more.md"]
    assert (h.workspace("default", tid) / "report.md").read_text() == "A B C"  # iteration 1 was not changed
    assert "not now" not in task.messages
    assert await h.drive(tid) == "done"
    assert "Then write more.md" in h.llm.requests[0].messages[1]["content"]
    assert h.runs(tid)[0] == Counter({"a": 1, "b": 1, "c": 1})


async def test_a_message_that_lands_just_after_the_iteration_ends_starts_the_next(h):
    from troupe.transitions import _start_if_ended

    tid = await h.submit("one step", plan=[step("a", "A")])
    assert await h.drive(tid) == "done"
    # The sender read `executing` and appended after the runner's last look: its own check starts the iteration.
    await h.store.append(tid, [NewEvent(EventType.message, {"text": "and more", "on_running": "enqueue"})])
    await _start_if_ended(h.store, tid)
    task = await h.state(tid)
    assert task.status == TaskStatus.queued and task.iteration == 2 and task.requirements == ["and more"]
    # Should the runner have started it too, the second iteration.started reopens nothing: the
    # driver dispatched meanwhile is not put back on the queue beside itself.
    assert await h.store.claim(tid, from_states=("pending",)) is not None
    await h.store.append(tid, [NewEvent(EventType.iteration_started, {"iteration": 2, "text": "and more"})])
    assert (await h.state(tid)).iteration == 2
    row = await h.store.get(tid)
    assert row.status == "queued" and row.dispatch_state == "dispatched"


async def test_an_interrupt_stops_an_agent_between_turns_and_it_goes_on_with_the_message_pinned(h):
    from troupe.transitions import post_message

    note = "Label the answer METRIC"
    plan = [{"id": "gather", "kind": "agent", "tools": ["ledger_step"], "instructions": "Collect a value."},
            {"id": "report", "tool": "write_text", "deps": ["gather"],
             "args": {"name": "r.md", "text": "{{gather.output.answer}}"}}]
    fix = {"nodes": [{"id": "report", "tool": "write_text", "deps": ["gather"],
                      "args": {"name": "r.md", "text": "METRIC {{gather.output.answer}}"}}]}
    h.llm.add(calls(("ledger_step", {"value": "x1", "sleep_s": 1.0})), as_json(fix), text("got x1"))
    tid = await h.submit("collect and report", plan=plan)
    drive = asyncio.create_task(h.drive(tid))
    await _until(lambda: h.runs(tid, "start")[0]["gather"] == 1, what=lambda: drive.done() and drive.result())
    await post_message(h.store, tid, note, on_running="interrupt")
    assert await drive == "done"

    assert h.runs(tid)[0] == Counter({"gather": 1})  # the call in flight finished; nothing ran twice
    assert (h.workspace("default", tid) / "r.md").read_text() == "METRIC got x1"
    events = await h.store.read(tid)
    assert [e.payload["purpose"] for e in events if e.type == EventType.llm_called] == [
        "agent:gather", "interrupt", "agent:gather"]
    assert note not in h.llm.requests[0].messages[0]["content"]
    assert note in h.llm.requests[2].messages[0]["content"]  # the agent's next turn sees it pinned
    assert sum(1 for e in events if e.type == EventType.node_started and e.payload["node_id"] == "gather") == 1


async def test_an_interrupt_without_a_model_is_pinned_and_the_plan_goes_on(h):
    from troupe.transitions import post_message

    tid = await h.submit("three branches and a report", plan=THREE_BRANCHES)
    runner = h.runner(tid, await h.store.claim(tid, from_states=("pending",)))
    runner.llm = runner.planner = None
    drive = asyncio.create_task(runner.drive())
    await _until(lambda: h.runs(tid, "start")[0]["b"] == 1, what=lambda: drive.done() and drive.result())
    await post_message(h.store, tid, "use metric units", on_running="interrupt")
    assert await drive == "done"
    [interrupted] = [e.payload for e in await h.store.read(tid) if e.type == EventType.interrupted]
    assert interrupted["replanned"] is False and "no planner model" in interrupted["reason"]
    assert (await h.state(tid)).pinned_requirements == ["use metric units"]


class EndlessAgentModel(FakeLLM):
    """A model with a 4,096-token window that calls ledger_step with a new value every turn
    and answers at turn `turns`; it refuses (like a real server) any request over its window."""

    def __init__(self, turns):
        super().__init__(window=4096)
        self.turns, self.n = turns, 0

    async def chat(self, request):
        import litellm

        tokens = litellm.token_counter(model="gpt-3.5-turbo", messages=request.messages, tools=request.tools)
        assert tokens <= self.window, f"{tokens} prompt tokens over the {self.window}-token window"
        self.n += 1
        if self.n >= self.turns:
            self.replies.append(text(f"collected {self.n - 1} values"))
        else:
            self.replies.append(calls(("ledger_step", {"value": f"v{self.n}-" + "x" * 150})))
        return await super().chat(request)


async def test_a_300_turn_agent_fits_its_window_and_resumes_without_compacting_again(h):
    h.llm = EndlessAgentModel(turns=300)
    pinned = "Every value must be recorded exactly once"
    agent = {"id": "gather", "kind": "agent", "tools": ["ledger_step"], "max_steps": 400,
             "instructions": "Record values until you have 299, then say how many."}
    tid = await h.submit(plan=[agent], requirements=[pinned], budget={"max_llm_calls": 400})

    async def compactions():
        return [e.payload for e in await h.store.read(tid) if e.type == EventType.context_compacted]

    first = asyncio.create_task(h.drive(tid))
    while h.llm.n < 150:
        assert not first.done(), first.result()
        await asyncio.sleep(0.05)
    first.cancel()  # the process dies mid-node
    with pytest.raises(asyncio.CancelledError):
        await first
    before = await compactions()
    assert len(before) >= 3
    answered = {m["tool_call_id"] for m in (await h.state(tid)).nodes["gather"].transcript if m["role"] == "tool"}
    assert await h.drive(tid) == "done"

    task = await h.state(tid)
    after = await compactions()
    uptos = [c["upto"] for c in after]
    assert uptos == sorted(set(uptos)), "a compaction was redone"  # each later one starts where the last ended
    assert after[:len(before)] == before and len(after) > len(before)
    assert all(c["window"] == 4096 and c["digest"] for c in after)
    assert task.pinned_requirements == [pinned]
    assert all(pinned in r.messages[0]["content"] for r in h.llm.requests)
    # Every call is in the log once, and ran once, but for one whose result was not yet durable
    # when the process died: ledger_step is idempotent, so that call runs again on resume.
    _, lines = h.runs(tid)
    ran = Counter(key.rsplit(":", 1)[1] for node, key, _, what in lines if node == "gather" and what == "done")
    twice = [call for call, n in ran.items() if n > 1]
    assert len(ran) == task.nodes["gather"].tool_calls == len(task.nodes["gather"].transcript) // 2
    assert len(twice) <= 1 and max(ran.values()) <= 2 and not set(twice) & answered, ran
    assert "compacted" in h.llm.requests[-1].messages[2]["content"]
    assert task.nodes["gather"].output["answer"].startswith("collected")

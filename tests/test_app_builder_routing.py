"""The app builder's runtime pieces without Ray: routing a failure to the node that owns its
file, the tests/review/approval checks, the approval's place in the log, and the template."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import tools.builtin  # noqa: F401  (registers the tools)
from tests.test_runner import h  # noqa: F401  (the runner over a real store, as tests/test_runner.py drives it)
from tools.registry import default_registry
from troupe.app_checks import approved
from troupe.checks import run_checks
from troupe.models import AcceptanceTest, Event, EventType, NodeState, NodeStatus, Plan, Task, TaskStatus, Verdict
from troupe.plan_templates import load_template
from troupe.plans import validate_plan
from troupe.reducer import reduce
from troupe.routing import CORRECTION_MARK, corrected_nodes, route_correction

DOC, PLAN = load_template("build_web_api", {"spec": "a notes API"})
TESTS = [AcceptanceTest.model_validate(t) for t in DOC["acceptance_tests"]]


def failed(test_id, *locations):
    return Verdict(test_id=test_id, passed=False, reason="failed", locations=list(locations))


def loc(file, line=3, error="KeyError: 'x'", frames=()):
    return {"file": file, "line": line, "error": error, "test": "tests/test_api.py::test_x", "frames": list(frames)}


def test_the_template_is_a_valid_plan_whose_writers_own_their_files():
    validate_plan(PLAN, {n: default_registry.get(n) for n in default_registry.names()})
    owners = {n.id: n.owns for n in PLAN.nodes if n.owns}
    assert owners == {"contract": ["project/openapi.yaml"], "code": ["project/app/*"],
                      "tests": ["project/tests/*"]}
    assert "a notes API" in PLAN.node("contract").instructions
    assert {t.check_type for t in TESTS} == {"tests_passed", "review_scores", "human_approval"}


def test_an_error_in_a_file_goes_to_its_owner():
    routed = route_correction(PLAN, [failed("tests_pass", loc("project/app/main.py", 12))], TESTS)
    assert list(routed) == ["code"] and routed["code"][0]["line"] == 12
    routed = route_correction(PLAN, [failed("tests_pass", loc("project/tests/test_api.py", 4,
                                                              "NameError: name 'client' is not defined"))], TESTS)
    assert list(routed) == ["tests"]  # a broken test is the test writer's to fix


def test_a_failed_assertion_in_a_test_goes_to_the_code_under_test():
    through_app = loc("project/tests/test_api.py", 9, "AssertionError: assert 3 == 4",
                      frames=[{"file": "project/tests/test_api.py", "line": 9},
                              {"file": "project/app/main.py", "line": 20}])
    assert list(route_correction(PLAN, [failed("tests_pass", through_app)], TESTS)) == ["code"]
    only_test = loc("project/tests/test_api.py", 9, "assert 404 == 200")
    assert list(route_correction(PLAN, [failed("tests_pass", only_test)], TESTS)) == ["code"]


def test_what_cannot_be_routed_is_left_to_the_planner():
    assert route_correction(PLAN, [failed("tests_pass", loc("elsewhere/x.py"))], TESTS) is None
    assert route_correction(PLAN, [failed("tests_pass")], TESTS) is None
    # a review failure without a place, beside a routed one, is not covered by re-running the code's dependents
    no_place = Verdict(test_id="approved", passed=False, reason="rejected by the user: add pagination")
    assert route_correction(PLAN, [failed("tests_pass", loc("project/app/main.py")), no_place], TESTS) is None


def test_a_failure_downstream_of_a_routed_owner_is_rechecked_not_planned():
    bundle = failed("bundle_tests_pass", loc("app.zip:app/main.py"))
    routed = route_correction(PLAN, [failed("tests_pass", loc("project/app/main.py")), bundle], TESTS)
    assert list(routed) == ["code"]
    assert route_correction(PLAN, [bundle], TESTS) is None  # alone, nothing it could be routed to


def test_the_owner_is_redefined_with_the_exact_failures_each_round():
    routed = route_correction(PLAN, [failed("tests_pass", loc("project/app/main.py", 12))], TESTS)
    [node] = corrected_nodes(PLAN, routed, 1)
    assert node.id == "code" and node.owns == ["project/app/*"]
    assert node.instructions.startswith(PLAN.node("code").instructions)
    assert f"{CORRECTION_MARK}1\n" in node.instructions
    assert "- project/app/main.py:12: KeyError: 'x' (test tests/test_api.py::test_x)" in node.instructions
    second = Plan(nodes=[node if n.id == "code" else n for n in PLAN.nodes])
    routed = route_correction(second, [failed("tests_pass", loc("project/app/main.py", 30, "TypeError: y"))], TESTS)
    [again] = corrected_nodes(second, routed, 2)
    assert again.instructions.count(CORRECTION_MARK) == 1 and "KeyError" not in again.instructions
    assert "main.py:30: TypeError: y" in again.instructions


def task_with(outputs: dict, corrections=0, approval=None) -> Task:
    nodes = {k: NodeState(id=k, status=NodeStatus.done, output=v) for k, v in outputs.items()}
    return Task(id="t1", goal="g", nodes=nodes, corrections=corrections, approval=approval)


RUN_OK = {"passed": True, "exit_code": 0, "counts": {"passed": 3, "failed": 0, "errors": 0, "skipped": 0},
          "failures": [], "summary": "3 passed"}
RUN_BAD = {"passed": False, "exit_code": 1, "counts": {"passed": 2, "failed": 1, "errors": 0, "skipped": 0},
           "failures": [loc("project/app/main.py", 12)], "summary": "2 passed, 1 failed"}
REVIEW = {"security": {"score": 5, "findings": [
              {"file": "project/app/main.py", "line": 7, "rule": "A03-injection", "severity": "high",
               "message": "eval() runs text as code"},
              {"file": "project/app/main.py", "line": 2, "rule": "Q-print", "severity": "low", "message": "print"}]},
          "quality": {"score": 9, "findings": []}}


def verdicts(task: Task, tmp_path: Path) -> dict[str, Verdict]:
    return {v.test_id: v for v in run_checks(TESTS, task, tmp_path)}


def test_tests_and_review_checks_carry_the_failures_places(tmp_path):
    got = verdicts(task_with({"test_run": RUN_BAD, "bundle_tests": RUN_OK, "review": REVIEW}), tmp_path)
    assert not got["tests_pass"].passed
    assert "project/app/main.py:12: KeyError: 'x' (in tests/test_api.py::test_x)" in got["tests_pass"].reason
    assert got["tests_pass"].locations[0]["file"] == "project/app/main.py"
    assert got["bundle_tests_pass"].passed and got["bundle_tests_pass"].reason == "tests passed (3 passed)"
    review = got["reviewed"]
    assert not review.passed and "security 5/10 < 7" in review.reason
    assert review.locations == [{"file": "project/app/main.py", "line": 7,
                                 "error": "A03-injection (high): eval() runs text as code"}]  # low ones stay out
    too_few = dict(RUN_OK, counts=dict(RUN_OK["counts"], passed=1))
    got = verdicts(task_with({"test_run": too_few}), tmp_path)
    assert "only 1 tests passed, need at least 2" in got["tests_pass"].reason
    assert got["reviewed"].reason == "the plan has no node 'review'"
    got = verdicts(task_with({"test_run": {"answer": "x"}}), tmp_path)
    assert "not a run_pytest result" in got["tests_pass"].reason


@pytest.mark.parametrize("reply, ok", [("approve", True), ("Approved, ship it", True), ("LGTM", True),
                                        ("yes please", True), ("no: add pagination", False),
                                        ("I don't approve", False), ("", False)])
def test_an_approval_is_a_reply_that_starts_by_approving(reply, ok):
    assert approved(reply) is ok


def test_approval_waits_then_passes_or_fails_with_the_feedback_for_this_round_only(tmp_path):
    from troupe.models import Approval

    base = {"test_run": RUN_OK, "bundle_tests": RUN_OK, "review": dict(REVIEW, security={"score": 10, "findings": []})}
    pending = verdicts(task_with(base), tmp_path)["approved"]
    assert not pending.passed and pending.awaiting == "approval"
    stale = verdicts(task_with(base, corrections=1, approval=Approval(round=0, reply="approve")), tmp_path)
    assert stale["approved"].awaiting == "approval"  # approved an earlier version, not this one
    ok = verdicts(task_with(base, corrections=1, approval=Approval(round=1, reply="approve")), tmp_path)
    assert ok["approved"].passed and all(v.passed for v in ok.values())
    no = verdicts(task_with(base, approval=Approval(round=0, reply="Add pagination to GET /notes")), tmp_path)
    assert not no["approved"].passed and no["approved"].awaiting is None
    assert no["approved"].reason == "rejected by the user: Add pagination to GET /notes"


T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def ev(seq, type_, **payload):
    return Event(task_id="t1", seq=seq, ts=T0 + timedelta(seconds=seq), type=type_, payload=payload)


def test_the_reply_to_an_approval_request_stays_in_the_state_past_the_resume():
    log = [ev(1, EventType.submitted, goal="build"),
           ev(2, EventType.plan_set, plan=PLAN.model_dump(mode="json"), acceptance_tests=[]),
           ev(3, EventType.status, status="waiting_for_input", waiting_on="approval", resume="verifying",
              reason="ready for your approval"),
           ev(4, EventType.message, text="approve"),
           ev(5, EventType.status, status="verifying")]
    task = reduce(log)
    assert task.status == TaskStatus.verifying and task.reply is None
    assert task.approval is not None and (task.approval.round, task.approval.reply) == (0, "approve")
    budget = [*log[:2], ev(3, EventType.status, status="waiting_for_input", waiting_on="budget",
                           resume="executing", reason="budget"), ev(4, EventType.message, text="approve")]
    assert reduce(budget).approval is None  # only a reply to an approval request approves
    done = [*log, ev(6, EventType.status, status="done"),
            ev(7, EventType.iteration_started, text="add a DELETE endpoint", iteration=2)]
    assert reduce(done).approval is None  # the next iteration needs its own approval


@pytest.fixture(scope="module")
def offline():
    from troupe.offline_planner import OfflinePlanner

    return OfflinePlanner()


TOOLS = {n: default_registry.get(n) for n in default_registry.names()}
API_GOALS = ["Create a REST API that manages a library of books",
             "Build me a small Python web service for tracking my running workouts",
             "I want a FastAPI backend for a shopping list app with tests"]


@pytest.mark.parametrize("goal", API_GOALS + DOC["examples"])
def test_a_web_api_goal_is_shown_to_the_model_planner_and_refused_offline_with_the_fix(offline, goal):
    from troupe.offline_planner import NoTemplate

    example = offline.template_example(goal, tools=TOOLS)
    assert example is not None and example["template"] == "build_web_api", offline.rank(goal)[:3]
    assert Plan.model_validate(example["plan"]).node("contract").instructions.count(goal) == 1
    with pytest.raises(NoTemplate, match=r"build_web_api \([01]\.\d\d\) has agent nodes that write code, which need "
                                         r"a model; configure one \(TROUPE_MODEL_REASON"):
        offline.plan(goal, tools=TOOLS)


@pytest.mark.parametrize("goal", ["Write the weekly sales summary for the Oslo office",
                                  "Summarize https://example.com/blog/launch", "Write a poem about spring"])
def test_other_goals_are_shown_no_template(offline, goal):
    assert offline.template_example(goal, tools=TOOLS) is None


def test_the_model_planner_presents_a_shown_template_as_one():
    from troupe.planner import ModelPlanner, PlanningContext

    shown = {"template": "build_web_api", "goal": "g", "plan": {"nodes": [{"id": "contract"}]}}
    learned = {"goal": "older goal", "plan": {"nodes": [{"id": "w"}]}}
    text = ModelPlanner(None, {}, [])._goal_text(PlanningContext(task_id="t", goal="g", examples=[shown, learned]))
    assert "The built-in plan template 'build_web_api' fits this goal" in text
    assert "A similar goal that was planned and verified before:\n" + '{"goal": "older goal"' in text


# -- the approval pause in the runner, over a real store, with crashes between the steps ------



async def test_the_approval_pause_survives_new_drives_and_publishes_once_approved(h):
    from memory.store import NewEvent
    from tests.test_runner import step

    nodes = [step("a", "A"), {"id": "out", "tool": "write_text", "args": {"name": "out.md", "text": "{{a.output}}"},
                              "deps": ["a"]}]
    tid = await h.submit(nodes, [{"id": "has", "check_type": "contains", "params": {"artifact": "out.md", "text": "A"}},
                                 {"id": "ok", "check_type": "human_approval"}])
    assert await h.drive(tid) == "waiting_for_input"
    task = await h.state(tid)
    assert task.waiting_on == "approval" and task.artifacts == []  # nothing published before the approval
    assert "- has: passed: contains every expected text" in task.reason and "Reply 'approve'" in task.reason
    assert await h.drive(tid) == "waiting_for_input"  # a new drive (after a crash) without a reply: still waiting
    await h.store.append(tid, [NewEvent(EventType.message, {"text": "approve"})])
    assert await h.drive(tid) == "done"
    task = await h.state(tid)
    assert [a.name for a in task.artifacts if a.name == "out.md"] == ["out.md"]
    assert {v.test_id: v.passed for v in task.verdicts} == {"has": True, "ok": True}
    assert h.runs(tid) == {"a": 1}  # no step ran again across the three drives


async def test_a_rejection_without_a_model_fails_with_the_feedback(h):
    from memory.store import NewEvent
    from tests.test_runner import step

    tid = await h.submit([step("a", "A")], [{"id": "ok", "check_type": "human_approval"}])
    assert await h.drive(tid) == "waiting_for_input"
    await h.store.append(tid, [NewEvent(EventType.message, {"text": "no, call it B"})])
    assert await h.drive(tid) == "failed"
    task = await h.state(tid)
    assert "ok: rejected by the user: no, call it B" in task.reason and task.artifacts == []


@pytest.mark.parametrize("path, ok", [("project/app/main.py", True), ("./project/app/../app/util.py", True),
                                      ("project/tests/test_api.py", False), ("project/app", False),
                                      ("elsewhere/project/app/x.py", False)])
def test_ownership_is_matched_on_the_normalised_path(path, ok):
    from troupe.routing import owned

    assert owned(["project/app/*"], path) is ok


async def test_an_agent_that_owns_files_may_write_only_those(any_store_url, tmp_path):
    from memory.store import EventStore
    from tests.support.fake_llm import calls, text
    from tests.test_agents_runner import Harness

    store = EventStore(any_store_url)
    await store.migrate()
    h = Harness(store, tmp_path)  # agents' context from the log's fold (no hot memory needed here)
    try:
        h.llm.add(calls(("files", {"action": "write", "path": "project/tests/test_api.py", "content": "x"})),
                  calls(("files", {"action": "write", "path": "project/app/main.py", "content": "app = 1\n"})),
                  text("wrote it"))
        node = {"id": "code", "kind": "agent", "tools": ["files"], "owns": ["project/app/*"], "instructions": "Write."}
        tid = await h.submit(plan=[node], max_corrections=0)
        assert await h.drive(tid) == "done", (await h.state(tid)).reason
        results = [e.payload for e in await store.read(tid) if e.type == EventType.tool_result]
        assert results[0]["content"] == ("error: node 'code' may write only the files it owns (project/app/*), "
                                         "not 'project/tests/test_api.py'")
        assert "error" not in results[1]
        written = h.workspace("default", tid) / "project"
        assert (written / "app" / "main.py").read_text() == "app = 1\n" and not (written / "tests").exists()
        h.llm.assert_all_used()
    finally:
        await store.close()

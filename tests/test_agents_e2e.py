"""Autonomous tasks end to end on real Ray Serve over HTTP, the model being the scripted
OpenAI-compatible server (tests/support/scripted_llm.py) behind the real LiteLLM router.

Requests are told apart by what they carry: planning asks for the `PlanDraft` schema,
corrections for `CorrectionDraft`, the judge for `Judgement`; agent turns carry `tools`."""

import json
from collections import Counter

import pytest

from tests.support.scripted_llm import Fail
from tests.test_crash import kill_named, wait_for
from tests.test_e2e import wait_status

pytestmark = pytest.mark.ray


def schema(name):
    return lambda body: (body.get("response_format") or {}).get("json_schema", {}).get("name") == name


def agent_turn(node_text=""):
    return lambda body: bool(body.get("tools")) and node_text in json.dumps(body["messages"][1])


def is_probe(body):
    """The LLM router's probe (LLMRouter.probe), which the Supervisor sends while tasks wait on a model."""
    return body.get("max_tokens") == 1 and "Troupe probe" in json.dumps(body.get("messages"))


def step(id_, value, deps=(), sleep_s=0.0):
    return {"id": id_, "tool": "ledger_step", "args": {"value": value, "sleep_s": sleep_s}, "deps": list(deps)}


def ledger(app, task_id, what="done"):
    path = app.home / "workspaces" / "default" / f"{task_id}.ledger"
    lines = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    return Counter(line[0] for line in lines if line[3] == what)


def events(client, task_id):
    return client.get(f"/v1/tasks/{task_id}/events", params={"stream": "false"}).json()


def call(name, **args):
    return {"name": name, "arguments": args}


PLAN = {
    "pinned_requirements": ["The report must say FINAL"],
    "nodes": [step("a", "A"), step("b", "B"),
              {"id": "gather", "kind": "agent", "deps": ["a", "b"], "tools": ["ledger_step"],
               "instructions": "Collect three values, starting from {{a.output}} and {{b.output}}."},
              {"id": "report", "tool": "write_text", "deps": ["gather"],
               "args": {"name": "report.md", "text": "{{gather.output.answer}}"}}],
    "acceptance_tests": [
        {"id": "says_final", "check_type": "contains", "params": {"artifact": "report.md", "text": "FINAL"}},
        {"id": "judged", "check_type": "llm_judge", "params": {"artifact": "report.md",
                                                                "rubric": "It lists the collected values."}}],
}
FIX = {"diagnosis": "the report lacks FINAL", "nodes": [
    {"id": "report", "tool": "write_text", "deps": ["gather"],
     "args": {"name": "report.md", "text": "FINAL: {{gather.output.answer}}"}}]}



@pytest.fixture
def app(any_store_llm_app):
    """The app under test, on SQLite and on PostgreSQL."""
    return any_store_llm_app

def test_goal_to_verified_artifacts_with_an_agent_and_a_correction(app, scripted_llm):
    scripted_llm.add(PLAN, when=schema("PlanDraft"), model="reason")
    scripted_llm.add([call("ledger_step", value="x1"), call("ledger_step", value="x2")], when=agent_turn(), model="fast")
    scripted_llm.add([call("ledger_step", value="x3")], when=agent_turn(), model="fast")
    scripted_llm.add("collected x1 x2 x3", when=agent_turn(), model="fast")
    scripted_llm.add({"passed": True, "reason": "lists x1, x2, x3"}, when=schema("Judgement"), times=2)
    scripted_llm.add(FIX, when=schema("CorrectionDraft"), model="reason")

    with app.client() as client:
        r = client.post("/v1/tasks", json={"goal": "Collect three values and write a report that says FINAL"})
        assert r.status_code == 202, r.text
        tid = r.json()["task_id"]
        body = wait_status(client, tid)
        assert body["status"] == "done", body["reason"]
        log = events(client, tid)
        report = client.get(f"/v1/tasks/{tid}/artifacts/report.md").text

    assert report == "FINAL: collected x1 x2 x3"
    assert body["plan_source"] == "llm" and body["corrections"] == 1
    assert body["pinned_requirements"] == ["The report must say FINAL"]
    assert [v["passed"] for v in body["verdicts"]] == [True, True]
    # the event sequence: plan, parallel nodes, the agent's turns and calls, a failed verdict,
    # the corrective sub-plan, a passing verdict, then publishing
    kinds = [e["type"] for e in log if e["type"] in (
        "plan.set", "agent.step", "verify.verdicts", "plan.corrected", "artifact.published")]
    assert kinds[:6] == ["plan.set", "agent.step", "agent.step", "agent.step", "verify.verdicts", "plan.corrected"]
    assert kinds[6] == "verify.verdicts" and set(kinds[7:]) == {"artifact.published"}
    first, second = [e["payload"] for e in log if e["type"] == "verify.verdicts"]
    assert not first["passed"] and second["passed"]
    assert {v["test_id"]: v["passed"] for v in first["verdicts"]} == {"says_final": False, "judged": True}
    agent_calls = [e["payload"]["args"]["value"] for e in log
                   if e["type"] == "tool.called" and e["payload"]["node_id"] == "gather"]
    assert agent_calls == ["x1", "x2", "x3"]
    used = [e["payload"] for e in log if e["type"] == "llm.called"]
    assert [u["purpose"] for u in used] == ["plan", "agent:gather", "agent:gather", "agent:gather", "verify",
                                            "correct", "verify"]
    assert all(u["tokens_in"] > 0 and u["tokens_out"] > 0 and u["latency_s"] > 0 for u in used)
    assert all(u["model"] for u in used)
    assert ledger(app, tid) == Counter({"a": 1, "b": 1, "gather": 3})
    # every call after planning carried the pinned requirement
    later = [r for r in scripted_llm.requests if (r.get("response_format") or {}).get("json_schema", {}).get("name")
             != "PlanDraft"]
    assert later and all("The report must say FINAL" in r["messages"][0]["content"] for r in later)


def test_bad_plans_are_repaired_and_unrepairable_ones_fail_clearly(app, scripted_llm):
    cyclic = {"nodes": [step("a", "A", deps=["b"]), step("b", "B", deps=["a"])]}
    scripted_llm.add("Here is my plan: first a, then b.", when=schema("PlanDraft"))
    scripted_llm.add(cyclic, when=schema("PlanDraft"))
    scripted_llm.add({"nodes": [step("a", "A")]}, when=schema("PlanDraft"))
    unknown = {"nodes": [{"id": "x", "tool": "teleport", "args": {}}]}
    with app.client() as client:
        repaired = client.post("/v1/tasks", json={"goal": "do a"}).json()["task_id"]
        assert wait_status(client, repaired)["status"] == "done"
        scripted_llm.add(unknown, when=schema("PlanDraft"), times=3)
        broken = client.post("/v1/tasks", json={"goal": "teleport"}).json()["task_id"]
        body = wait_status(client, broken)
    assert body["status"] == "failed"
    assert "unknown tool 'teleport'" in body["reason"] and "after 2 repairs" in body["reason"]
    feedback = [r["messages"][-1]["content"] for r in scripted_llm.requests[1:3]]
    assert "not valid JSON" in feedback[0] and "cycle" in feedback[1]


def test_budget_pauses_and_raising_it_completes_the_task(app, scripted_llm):
    plan = {"nodes": [step("a", "A"), step("b", "B"),
                      {"id": "gather", "kind": "agent", "deps": ["a", "b"], "tools": ["ledger_step"],
                       "instructions": "Collect a value."}]}
    scripted_llm.add(plan, when=schema("PlanDraft"))
    scripted_llm.add([call("ledger_step", value="v1")], when=agent_turn())
    with app.client() as client:
        tid = client.post("/v1/tasks", json={"goal": "collect", "budget": {"max_llm_calls": 2}}).json()["task_id"]
        body = wait_status(client, tid, statuses=("waiting_for_input", "done", "failed"))
        assert body["status"] == "waiting_for_input" and body["waiting_on"] == "budget"
        assert "max_llm_calls is 2" in body["reason"]
        r = client.post(f"/v1/tasks/{tid}/budget", json={"max_llm_calls": 1})
        assert r.status_code == 422 and "only be raised" in r.json()["title"]
        r = client.post(f"/v1/tasks/{tid}/budget", json={"max_llm_calls": 2})  # does not clear the limit hit
        assert r.status_code == 409 and "max_llm_calls" in r.json()["detail"], r.text
        scripted_llm.add("got v1", when=agent_turn())
        assert client.post(f"/v1/tasks/{tid}/budget", json={"max_llm_calls": 10}).status_code == 202
        body = wait_status(client, tid)
    assert body["status"] == "done" and body["usage"]["llm_calls"] == 3
    assert body["nodes"]["gather"]["output"]["answer"] == "got v1"


def test_follow_up_on_a_finished_task_opens_an_iteration(app, scripted_llm):
    first = {"pinned_requirements": ["Use metric units"],
             "nodes": [{"id": "w", "tool": "write_text", "args": {"name": "r.md", "text": "10 km"}}]}
    second = {"pinned_requirements": ["Also give miles"],
              "nodes": [{"id": "w2", "tool": "write_text", "args": {"name": "r2.md", "text": "10 km (6.2 mi)"}}]}
    scripted_llm.add(first, when=schema("PlanDraft"))
    with app.client() as client:
        tid = client.post("/v1/tasks", json={"goal": "How far is it, in metric units?"}).json()["task_id"]
        assert wait_status(client, tid)["status"] == "done"
        scripted_llm.add(second, when=schema("PlanDraft"))
        r = client.post(f"/v1/tasks/{tid}/messages", json={"text": "Also give miles"})
        assert r.status_code == 202 and r.json()["iteration"] == 2
        body = wait_status(client, tid)
        names = {a["name"] for a in client.get(f"/v1/tasks/{tid}/artifacts").json()}
    assert body["status"] == "done" and body["iteration"] == 2
    assert {"r.md", "r2.md"} <= names
    replan = scripted_llm.requests[-1]
    assert "Use metric units" in replan["messages"][0]["content"]
    assert "Also give miles" in replan["messages"][1]["content"]


def test_agent_repeating_a_call_forever_stops_within_max_steps(app, scripted_llm):
    plan = {"nodes": [{"id": "loop", "kind": "agent", "tools": ["ledger_step"], "max_steps": 6,
                       "instructions": "Get a value."}]}
    scripted_llm.add(plan, when=schema("PlanDraft"))
    scripted_llm.add([call("ledger_step", value="same")], when=agent_turn(), times=3)
    with app.client() as client:
        tid = client.post("/v1/tasks", json={"goal": "loop", "max_corrections": 0}).json()["task_id"]
        body = wait_status(client, tid)
    assert body["status"] == "failed"
    assert "agent stuck: it repeated the identical call ledger_step" in body["reason"]
    assert ledger(app, tid)["loop"] == 1


def test_killing_the_conductor_during_an_agent_node_repeats_no_finished_call(app, scripted_llm):
    plan = {"nodes": [{"id": "gather", "kind": "agent", "tools": ["ledger_step"], "instructions": "Collect."}]}
    scripted_llm.add(plan, when=schema("PlanDraft"))
    scripted_llm.add([call("ledger_step", value="fast")], when=agent_turn())
    scripted_llm.add([call("ledger_step", value="slow", sleep_s=4.0), call("ledger_step", value="quick")],
                     when=agent_turn())
    scripted_llm.add("collected all", when=agent_turn())
    with app.client() as client:
        tid = client.post("/v1/tasks", json={"goal": "collect"}).json()["task_id"]

        def quick_done():
            log = events(client, tid)
            return any(e["type"] == "tool.result" and e["payload"].get("output") == "quick" for e in log)

        wait_for(quick_done, 60, "the second turn's quick call")
        kill_named(f"SERVE_REPLICA::{app.name}#Conductor")
        body = wait_status(client, tid, timeout_s=180)
        log = events(client, tid)
    assert body["status"] == "done", body["reason"]
    dispatches = [e for e in log if e["type"] == "task.dispatched"]
    assert len(dispatches) >= 2
    # "slow" was in flight when its driver died: it runs again (same idempotency key), and
    # its first run may still finish in the tool pool; "fast" and "quick" had finished
    assert 3 <= ledger(app, tid)["gather"] <= 4
    starts = Counter(e["payload"]["args"]["value"] for e in log if e["type"] == "tool.called")
    assert starts["fast"] == 1 and starts["quick"] == 1 and starts["slow"] <= 2
    results = Counter(e["payload"].get("output") for e in log if e["type"] == "tool.result")
    assert results["fast"] == results["quick"] == results["slow"] == 1
    assert sum(1 for e in log if e["type"] == "agent.step") == 3  # no model turn asked twice


def test_a_verified_plan_is_learned_and_given_to_the_planner_for_a_similar_goal(app, scripted_llm):
    plan = {"nodes": [{"id": "w", "tool": "write_text", "args": {"name": "notes.md", "text": "weekly sales"}}]}
    scripted_llm.add(plan, when=schema("PlanDraft"), times=2)
    with app.client() as client:
        tid = client.post("/v1/tasks", json={"goal": "Write the weekly sales summary for the Oslo office"}).json()
        assert wait_status(client, tid["task_id"])["status"] == "done"

        def learned():
            return [t for t in client.get("/v1/templates").json()
                    if t["kind"] == "learned" and t["template_id"].startswith(tid["task_id"])]

        [template] = wait_for(learned, 120, "the learned template")
        assert template["goal"].endswith("Oslo office") and template["source"] == "llm"
        built_in = {t["name"] for t in client.get("/v1/templates").json() if t["kind"] == "built_in"}
        assert {"summarize_urls", "run_python", "answer_from_files"} <= built_in
        second = client.post("/v1/tasks", json={"goal": "Write the weekly sales summary for the Bergen office"})
        assert wait_status(client, second.json()["task_id"])["status"] == "done"
    request = [r for r in scripted_llm.requests if schema("PlanDraft")(r)][-1]
    prompt = request["messages"][1]["content"]
    assert "A similar goal that was planned and verified before" in prompt and "Oslo office" in prompt


def test_a_task_waiting_on_the_model_goes_on_by_itself_once_the_model_answers(app, scripted_llm):
    plan = {"nodes": [{"id": "gather", "kind": "agent", "tools": ["ledger_step"], "instructions": "Collect."}]}
    scripted_llm.add(plan, when=schema("PlanDraft"))
    scripted_llm.add(Fail(503, "overloaded"), when=agent_turn())
    scripted_llm.add(Fail(503, "still overloaded"), when=is_probe, times=2)  # the first probe of both groups
    scripted_llm.add("OK", when=is_probe, times=None)
    scripted_llm.add("collected", when=agent_turn())
    with app.client() as client:
        tid = client.post("/v1/tasks", json={"goal": "collect"}).json()["task_id"]
        body = wait_status(client, tid, statuses=("waiting_for_input", "done", "failed"))
        assert body["status"] == "waiting_for_input" and body["waiting_on"] == "model", body
        assert "goes on by itself" in body["reason"]
        body = wait_status(client, tid, timeout_s=120)
        log = events(client, tid)
    assert body["status"] == "done" and body["nodes"]["gather"]["output"]["answer"] == "collected"
    assert not any(e["type"] == "message.received" for e in log)  # nobody replied
    assert sum(1 for r in scripted_llm.requests if is_probe(r)) >= 3  # a failed probe, then one that answered


def test_a_preference_from_one_task_shapes_the_next_plan_until_it_is_forgotten(app, scripted_llm):
    import uuid

    tenant = {"X-Troupe-Tenant": f"memo-{uuid.uuid4().hex[:8]}"}  # its own memory: other tests plan unaffected
    plan = {"nodes": [{"id": "w", "tool": "write_text", "args": {"name": "n.md", "text": "notes"}}]}
    with app.client() as client:
        client.headers.update(tenant)  # the tenant's own tasks and memory; "default" is another tenant here
        other = {"X-Troupe-Tenant": "default"}

        def run(goal):
            scripted_llm.add(plan, when=schema("PlanDraft"))
            tid = client.post("/v1/tasks", json={"goal": goal}).json()["task_id"]
            assert wait_status(client, tid)["status"] == "done"
            return tid, scripted_llm.requests[-1]["messages"][0]["content"]

        first, _ = run("Summarize this week's news. Always cite primary sources. Our fiscal year starts in April.")
        kept = client.get("/v1/memory").json()
        assert {(m["kind"], m["text"]) for m in kept} == {
            ("preference", "Always cite primary sources."), ("fact", "Our fiscal year starts in April.")}
        assert all(m["source"] == {"task_id": first, "where": "goal"} for m in kept)
        assert all(m["source"]["task_id"] != first for m in client.get("/v1/memory", headers=other).json())

        second, system = run("Summarize the budget for the fiscal year")
        assert "Always cite primary sources." in system and "Our fiscal year starts in April." in system
        assert "Always cite primary sources." in client.get(f"/v1/tasks/{second}").json()[
            "pinned_requirements"]

        added = client.post("/v1/memory", json={"text": "Write in British English.", "kind": "preference"})
        assert added.status_code == 201, added.text
        assert client.post("/v1/memory", json={"text": "write in british english."}).status_code == 409
        assert client.post("/v1/memory", json={"text": "Our deploy token is ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4"}
                           ).status_code == 422
        preference = next(m for m in kept if m["kind"] == "preference")
        assert client.delete(f"/v1/memory/{preference['memory_id']}", headers=other).status_code == 404
        assert client.delete(f"/v1/memory/{preference['memory_id']}").status_code == 204
        assert client.delete(f"/v1/memory/{preference['memory_id']}").status_code == 404

        _, system = run("Draft a status update")
        assert "Always cite primary sources." not in system and "Write in British English." in system

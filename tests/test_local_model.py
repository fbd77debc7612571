"""A real model in the app graph: the llamacpp engine serving the packaged SmolLM2-135M (CPU)
behind the LLM router. SmolLM2 is weak on purpose; these tests assert mechanics (plans that
validate or fail clearly, emulated tool calls, verdicts, events naming the engine), never
the quality of an answer. Calls are kept few and short (max_tokens) for 2-core machines.
"""

from __future__ import annotations

import pytest

from tests.conftest import _make_app
from tests.test_e2e import wait_status
from troupe.llm import ChatRequest, LLMRequestError

pytestmark = pytest.mark.ray

ENGINE = "smollm2"
TERMINAL = ("done", "failed", "cancelled", "waiting_for_input")


@pytest.fixture(scope="module")
def local_app(serve_http, tmp_path_factory):
    app = _make_app(serve_http, tmp_path_factory, "troupe-local", "/local",
                    # few tools: the planner's prompt lists them all, and prompt tokens cost the most here
                    tool_modules=["tests.support.tools"],
                    engines=[{"kind": "llamacpp", "name": ENGINE, "model_path": "smollm2", "n_ctx": 4096,
                              "max_tokens": 160, "n_threads": 2}],
                    llm={"num_retries": 0, "fallbacks": [], "cooldown_time": 0, "timeout": 300})
    yield app
    app.delete()


@pytest.fixture(scope="module")
def router(local_app):
    from ray import serve

    return serve.get_deployment_handle("LLMRouter", app_name=local_app.name)


def events(client, task_id):
    return client.get(f"/v1/tasks/{task_id}/events", params={"stream": "false"}).json()


def assert_calls_name_the_engine(log):
    used = [e["payload"] for e in log if e["type"] == "llm.called"]
    assert used, "no model call was recorded"
    assert all(u["engine"] == ENGINE and u["model"] == f"troupe-engine/{ENGINE}" for u in used), used
    assert all(u["tokens_in"] > 0 and u["tokens_out"] > 0 for u in used), used
    return used


async def test_the_engine_serves_both_groups_through_the_router(router):
    status = await router.status.remote()
    assert status["groups"] == ["fast", "reason"]
    assert {(d["group"], d["engine"], d["model"]) for d in status["deployments"]} == \
        {("fast", ENGINE, "troupe-engine/smollm2"), ("reason", ENGINE, "troupe-engine/smollm2")}
    from deployments.llm_router import RouterClient

    reply = await RouterClient(router).chat(ChatRequest(group="fast", max_tokens=8, temperature=0, messages=[
        {"role": "user", "content": "Say hello."}]))
    assert reply.usage.engine == ENGINE and reply.usage.tokens_out > 0 and reply.content
    assert (await router.status.remote())["tool_calls"]["fast"] == "undecided"


async def test_a_request_over_the_window_fails_clearly(router):
    from deployments.llm_router import RouterClient

    long = "word " * 6000
    with pytest.raises(LLMRequestError, match="exceeds the context window of engine 'smollm2' \\(4096 tokens\\)") \
            as info:
        await RouterClient(router).chat(ChatRequest(group="reason", max_tokens=8, messages=[
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": long}]))
    assert info.value.status == 413 and "group 'reason'" in info.value.message


def test_a_goal_is_planned_by_the_model_or_fails_clearly(local_app):
    with local_app.client() as client:
        r = client.post("/v1/tasks", json={
            "goal": "Write the word hello into the file notes.md", "max_corrections": 0,
            "budget": {"max_llm_calls": 4}})
        assert r.status_code == 202, r.text
        tid = r.json()["task_id"]
        # 27 s alone here; over 240 s once late in a loaded full run (the engine shares 2 cores).
        body = wait_status(client, tid, statuses=TERMINAL, timeout_s=480)
        log = events(client, tid)
    used = assert_calls_name_the_engine(log)
    assert used[0]["purpose"] == "plan"
    planned = [e for e in log if e["type"] == "plan.set"]
    if planned:  # the plan validated (plan.set is written only then) and ran
        assert body["plan_source"] == "llm" and planned[0]["payload"]["plan"]["nodes"]
    else:
        assert body["status"] == "failed"
        assert "after 2 repairs" in body["reason"] or "exceeds the context window" in body["reason"], body["reason"]


def test_an_agent_node_calls_a_tool_through_the_envelope(local_app):
    # `record` has one argument: a tool with a sleep_s argument once got a model-chosen sleep
    # longer than the test's wait.
    plan = {"nodes": [{"id": "gather", "kind": "agent", "tools": ["record"], "max_steps": 2,
                       "instructions": "Call the tool record with the value \"alpha\"."}]}
    with local_app.client() as client:
        r = client.post("/v1/tasks", json={"goal": "Record alpha in the ledger", "plan": plan, "max_corrections": 0})
        assert r.status_code == 202, r.text
        tid = r.json()["task_id"]
        body = wait_status(client, tid, statuses=TERMINAL, timeout_s=280)
        log = events(client, tid)
    used = assert_calls_name_the_engine(log)
    assert all(u["purpose"] == "agent:gather" and u["tool_calls"] == "emulated" for u in used), used
    called = [e["payload"] for e in log if e["type"] == "tool.called" and e["payload"]["node_id"] == "gather"]
    results = [e["payload"] for e in log if e["type"] == "tool.result" and e["payload"]["node_id"] == "gather"]
    assert called and called[0]["tool"] == "record" and isinstance(called[0]["args"].get("value"), str)
    assert {c["call_id"] for c in called} <= {r["call_id"] for r in results}
    # Whatever the model does next, the node ends: an answer, or a clear stop (max_steps, stuck).
    assert body["status"] == "done" or "agent" in body["reason"], body


def test_the_judge_returns_a_verdict(local_app):
    plan = {"nodes": [{"id": "w", "tool": "write_text", "args": {"name": "colors.md", "text": "Red, green, blue."}}]}
    tests = [{"id": "judged", "check_type": "llm_judge",
              "params": {"artifact": "colors.md", "rubric": "The text names at least one color."}}]
    with local_app.client() as client:
        r = client.post("/v1/tasks", json={"goal": "List colors", "plan": plan, "acceptance_tests": tests,
                                           "max_corrections": 0})
        assert r.status_code == 202, r.text
        tid = r.json()["task_id"]
        body = wait_status(client, tid, statuses=TERMINAL, timeout_s=240)
        log = events(client, tid)
    used = assert_calls_name_the_engine(log)
    assert {u["purpose"] for u in used} == {"verify"} and 1 <= len(used) <= 2
    [verdict] = [e["payload"] for e in log if e["type"] == "verify.verdicts"][-1]["verdicts"]
    assert verdict["test_id"] == "judged" and verdict["reason"].startswith("judge: "), verdict
    assert body["status"] == "done" if verdict["passed"] else body["status"] != "done"


def test_a_missing_model_file_fails_the_engine_deployment_with_the_fix(serve_http, tmp_path):
    from ray import serve

    from deployments.engines import LlamaCppEngineConfig, build_engine

    config = LlamaCppEngineConfig(name="missing", model_path=str(tmp_path / "nope.gguf"))
    try:
        with pytest.raises(RuntimeError, match="Deploying application engine-missing failed"):
            serve.run(build_engine(config), name="engine-missing", route_prefix=None)
        message = serve.status().applications["engine-missing"].deployments["LlamaCpp:missing"].message
        assert "nope.gguf' does not exist" in message and "TROUPE_LOCAL_MODEL" in message
    finally:
        serve.delete("engine-missing")

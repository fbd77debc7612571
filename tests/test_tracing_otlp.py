"""One task, one trace, across processes, exported to a real OTLP/HTTP receiver.

A Troupe app whose processes have `OTEL_EXPORTER_OTLP_ENDPOINT` set (the standard variable,
as serve_config.yaml's runtime_env would set it) runs a task that reads a loopback web page in
the browser and then runs an agent node against the scripted model. The receiver (started by
the test, decoding the protobuf with opentelemetry-proto) must get the task, node, tool, agent,
model and browser spans under the task's trace id, from the Conductor, the ToolPool, the LLM
router and the BrowserPool, parented as the carriers say, and nothing secret in any of them.
An ingest job, which no task asked for, arrives as a trace of its own with its stages."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.conftest import MODEL_KEY_PROBE, _make_app
from tests.support.local_backend import postgres_database
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.scripted_llm import litellm_params
from tests.test_agents_e2e import agent_turn, call, schema, step
from tests.test_e2e import wait_status
from tests.web.site import Site

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

TASK_SPANS = {"task", "node", "tool", "agent", "llm", "browser.browse"}


@pytest.fixture(scope="module")
def receiver():
    with OtlpReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def site():
    with Site("127.0.0.1") as s:
        yield s


@pytest.fixture(scope="module")
def traced_app(serve_http, tmp_path_factory, scripted_llm_server, receiver):
    """An app exporting its spans to `receiver`; on PostgreSQL with a password in its URL and
    the model key in its processes' environment, so that a leak of either would show."""
    password = f"pw-{uuid.uuid4().hex}"  # this machine's PostgreSQL trusts loopback: any password works
    llm = {"model_list": [{"model_name": group, "litellm_params": {
        **litellm_params(scripted_llm_server, group), "api_key": "os.environ/TROUPE_TEST_MODEL_KEY"}}
        for group in ("fast", "reason")], "num_retries": 0, "fallbacks": [], "cooldown_time": 0}
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
           "OTEL_BSP_SCHEDULE_DELAY": "500"}  # export every half second, not every five
    with postgres_database() as url:
        app = _make_app(serve_http, tmp_path_factory, "troupe-otlp", "/otlp", llm=llm, env=env,
                        database_url=url.replace("postgres@", f"postgres:{password}@"))
        yield app, password
        app.delete()


def _secrets_in(spans: list[ReceivedSpan], secrets: list[str]) -> list[str]:
    return [f"{s.service}/{s.name}" for s in spans if any(x in s.text() for x in secrets)]


def test_a_task_is_one_trace_across_processes(traced_app, receiver, site, scripted_llm):
    app, password = traced_app
    member = app.new_key("otlp")
    scripted_llm.add([call("ledger_step", value="x1")], when=agent_turn(), model="fast")
    scripted_llm.add("collected x1", when=agent_turn(), model="fast")
    plan = {"nodes": [
        {"id": "read", "tool": "browse", "args": {"url": f"{site.url}/docs/p1?session=s3cr3t", "settle_s": 0}},
        {"id": "gather", "kind": "agent", "deps": ["read"], "tools": ["ledger_step"],
         "instructions": "Collect one value."}]}
    with app.client(member, timeout=60) as c:
        r = c.post("/v1/tasks", json={"goal": "read then gather", "plan": plan, "max_corrections": 0})
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]
        assert wait_status(c, task_id, timeout_s=240)["status"] == "done"
    trace_id = uuid.UUID(task_id).hex

    spans = receiver.wait(lambda got: TASK_SPANS <= {s.name for s in got}
                          and any(s.name == "task" for s in got), trace_id=trace_id)
    names = {s.name for s in spans}
    assert TASK_SPANS <= names, f"missing {TASK_SPANS - names}; got {sorted(names)}"
    by_name: dict[str, list[ReceivedSpan]] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    # Each kind of span comes from its own process, all under the task's trace id.
    services = {name: {s.service for s in by_name[name]} for name in TASK_SPANS}
    assert services == {"task": {"troupe-conductor"}, "node": {"troupe-conductor"}, "agent": {"troupe-conductor"},
                        "tool": {"troupe-tools"}, "llm": {"troupe-llm"}, "browser.browse": {"troupe-browser"}}
    assert all(s.attributes.get("troupe.task_id") == task_id for s in spans)
    # They nest: nodes and the agent under the task, each tool call under its node or agent (its
    # carrier crossed to the ToolPool), the page under its tool call (its carrier crossed again).
    ids = {s.span_id: s for s in spans}
    [task] = by_name["task"]
    [agent] = by_name["agent"]
    assert [s.attributes["node_id"] for s in by_name["node"]] == ["read"]
    assert [ids[s.parent_span_id].name for s in (*by_name["node"], agent)] == ["task", "task"]
    tools = {s.attributes["tool"]: s for s in by_name["tool"]}
    assert ids[tools["browse"].parent_span_id].attributes["node_id"] == "read"
    assert tools["ledger_step"].parent_span_id == agent.span_id
    [page] = by_name["browser.browse"]
    assert page.parent_span_id == tools["browse"].span_id
    assert page.attributes["server.address"] == "127.0.0.1" and page.attributes["http.response.status_code"] == 200
    assert task.start_ns <= page.start_ns <= page.end_ns <= task.end_ns
    # The model calls: the agent's two turns, under the agent's span (its carrier crossed to the
    # LLMRouter), with the GenAI attributes.
    llm = by_name["llm"]
    assert len(llm) == 2 and {s.attributes["gen_ai.request.model"] for s in llm} == {"fast"}
    assert [s.parent_span_id for s in llm] == [agent.span_id] * 2
    assert sum(s.attributes["gen_ai.usage.output_tokens"] for s in llm) > 0
    # Nothing secret left the processes: not the model key, the database password or URL, an
    # API key, nor the page URL's query.
    secrets = [MODEL_KEY_PROBE, password, member, app.admin_key, "postgresql", "s3cr3t"]
    assert _secrets_in(receiver.spans, secrets) == []


def test_the_planners_and_the_judges_model_calls_nest_under_their_own_spans(traced_app, receiver, scripted_llm):
    """A goal planned by the model and judged by it: the Planner's `plan` and the Verifier's
    `verify` spans sit under the task span (their carriers crossed the handles), and each one's
    model call under it."""
    app, _ = traced_app
    plan = {"nodes": [step("a", "A")], "acceptance_tests": [{"id": "judged", "check_type": "llm_judge", "params": {
        "node": "a", "rubric": "The step ran."}}]}
    scripted_llm.add(plan, when=schema("PlanDraft"), model="reason")
    scripted_llm.add({"passed": True, "reason": "it ran"}, when=schema("Judgement"), model="reason")
    with app.client(app.new_key("otlp-plan"), timeout=60) as c:
        r = c.post("/v1/tasks", json={"goal": "Tally the quorum of zebra finches", "max_corrections": 0})
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]
        body = wait_status(c, task_id, ("done", "failed", "cancelled", "waiting_for_input"), timeout_s=240)
        assert body["status"] == "done" and body["plan_source"] == "llm", body
    wanted = {"task", "plan", "verify", "llm"}
    spans = receiver.wait(lambda got: wanted <= {s.name for s in got}
                          and sum(s.name == "llm" for s in got) >= 2, trace_id=uuid.UUID(task_id).hex)
    ids = {s.span_id: s for s in spans}
    by_name = {name: [s for s in spans if s.name == name] for name in wanted}
    [task], [planned], [verified] = by_name["task"], by_name["plan"], by_name["verify"]
    assert (planned.service, verified.service) == ("troupe-planner", "troupe-verifier")
    assert planned.parent_span_id == verified.parent_span_id == task.span_id
    assert sorted(ids[s.parent_span_id].name for s in by_name["llm"]) == ["plan", "verify"]


def test_an_ingest_job_is_a_trace_of_its_own(traced_app, receiver):
    app, password = traced_app
    member = app.new_key("otlp-docs")
    text = "# Grant review\n\nThe annual grant review approved the fund for the coming year.\n"
    with app.client(member, timeout=120) as c:
        r = c.post("/v1/collections/notes/ingest", files=[("files", ("grant.md", text.encode(), "text/markdown"))])
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        deadline = time.monotonic() + 300
        while (job := c.get(f"/v1/ingest/{job_id}").json())["status"] not in ("done", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(1)
        assert job["status"] == "done", job

    def complete(got: list[ReceivedSpan]) -> bool:
        return any(s.name == "ingest.job" and s.attributes.get("troupe.ingest.job_id") == job_id for s in got)

    [root] = [s for s in receiver.wait(complete) if s.name == "ingest.job"
              and s.attributes.get("troupe.ingest.job_id") == job_id]
    assert root.service == "troupe-ingest" and root.parent_span_id == "" and root.attributes["troupe.tenant"] == "otlp-docs"
    spans = receiver.wait(lambda got: {"ingest", "ingest.plan", "ingest.parse", "ingest.embed", "ingest.upsert"}
                          <= {s.name for s in got}, trace_id=root.trace_id)
    by_name = {s.name: s for s in spans}
    run = by_name["ingest"]
    assert run.parent_span_id == root.span_id and run.attributes["troupe.ingest.chunks_stored"] >= 1
    for stage in ("plan", "parse", "embed", "upsert"):
        assert by_name[f"ingest.{stage}"].parent_span_id == run.span_id
    assert by_name["ingest.parse"].attributes["troupe.ingest.files_parsed"] == 1
    assert by_name["ingest.upsert"].attributes["troupe.ingest.chunks"] == run.attributes["troupe.ingest.chunks_stored"]
    assert _secrets_in(spans, [MODEL_KEY_PROBE, password, member, app.admin_key, "postgresql"]) == []

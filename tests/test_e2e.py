"""End to end on real Ray + Serve over HTTP: a 6-node plan with parallel branches, watched
live over SSE, its artifact checked against the manifest."""

import hashlib
import json
import time

import httpx_sse
import pytest

pytestmark = pytest.mark.ray

PLAN = {"nodes": [
    {"id": "square", "tool": "python", "args": {"code": "print(sum(i*i for i in range(1001)))"}},
    {"id": "left", "tool": "ledger_step", "args": {"value": "left", "sleep_s": 0.3}},
    {"id": "right", "tool": "ledger_step", "args": {"value": "right", "sleep_s": 0.3}},
    {"id": "join", "tool": "ledger_step", "args": {"value": "{{left.output}}+{{right.output}}"}, "deps": ["left", "right"]},
    {"id": "notes", "tool": "files", "args": {"action": "write", "path": "notes/join.txt", "content": "{{join.output}}"},
     "deps": ["join"]},
    {"id": "report", "tool": "write_report",
     "args": {"title": "Sum of squares", "body": "Result: {{square.output}}\nJoined: {{join.output}}"},
     "deps": ["square", "notes"]},
]}
TESTS = [
    {"id": "report_exists", "check_type": "exists", "params": {"artifact": "report.md"}},
    {"id": "right_answer", "check_type": "contains", "params": {"artifact": "report.md", "text": "333833500"}},
    {"id": "joined", "check_type": "regex", "params": {"artifact": "report.md", "pattern": "Joined: left\\+right"}},
    {"id": "all_done", "check_type": "all_nodes_done"},
]


def wait_status(client, task_id, statuses=("done", "failed", "cancelled"), timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = client.get(f"/v1/tasks/{task_id}").json()
        if body["status"] in statuses:
            return body
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} still {body['status']} after {timeout_s}s")



@pytest.fixture
def app(any_store_app):
    """The app under test, on SQLite and on PostgreSQL."""
    return any_store_app

def test_six_node_plan_end_to_end_with_live_events(app):
    with app.client() as c:
        r = c.post("/v1/tasks", json={"goal": "sum of squares report", "plan": PLAN, "acceptance_tests": TESTS})
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]
        assert r.headers["location"] == f"/v1/tasks/{task_id}"

        events = []
        with httpx_sse.connect_sse(c, "GET", f"/v1/tasks/{task_id}/events", timeout=120) as source:
            for sse in source.iter_sse():
                events.append((int(sse.id), sse.event, json.loads(sse.data)))
        assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
        statuses = [data["payload"]["status"] for _, kind, data in events if kind == "task.status"]
        assert statuses == ["planning", "executing", "verifying", "publishing", "done"], events[-3:]
        started = {d["payload"]["node_id"]: s for s, k, d in events if k == "node.started"}
        done = {d["payload"]["node_id"]: s for s, k, d in events if k == "node.done"}
        assert set(done) == {n["id"] for n in PLAN["nodes"]}
        assert started["right"] < done["left"] and started["left"] < done["right"]  # the branches overlapped
        for node in PLAN["nodes"]:
            for dep in node.get("deps", []):
                assert done[dep] < started[node["id"]]

        task = c.get(f"/v1/tasks/{task_id}").json()
        assert task["status"] == "done" and all(v["passed"] for v in task["verdicts"])
        artifacts = {a["name"]: a for a in c.get(f"/v1/tasks/{task_id}/artifacts").json()}
        assert set(artifacts) == {"report.md", "notes/join.txt", "manifest.json"}
        manifest = c.get(f"/v1/tasks/{task_id}/artifacts/manifest.json").json()
        report = c.get(f"/v1/tasks/{task_id}/artifacts/report.md")
        assert report.status_code == 200 and "333833500" in report.text
        listed = {a["name"]: a for a in manifest["artifacts"]}
        assert listed["report.md"]["sha256"] == hashlib.sha256(report.content).hexdigest()
        assert listed["report.md"]["size"] == len(report.content)
        assert c.get(f"/v1/tasks/{task_id}/artifacts/notes/join.txt").text == "left+right"

        # Resuming the stream from Last-Event-ID gives exactly the events after it.
        with httpx_sse.connect_sse(c, "GET", f"/v1/tasks/{task_id}/events",
                                   headers={"Last-Event-ID": str(len(events) - 3)}) as source:
            tail = [int(s.id) for s in source.iter_sse()]
        assert tail == [len(events) - 2, len(events) - 1, len(events)]

        listing = c.get("/v1/tasks", params={"status": "done"}).json()
        assert task_id in [t["task_id"] for t in listing["items"]]


def test_tools_are_listed_with_schemas(app):
    with app.client() as c:
        tools = {t["name"]: t for t in c.get("/v1/tools").json()}
    for name in ("python", "http_fetch", "files", "write_report"):
        assert tools[name]["parameters"]["type"] == "object" and tools[name]["description"]
    assert "code" in tools["python"]["parameters"]["properties"]
    assert tools["send_once"]["side_effects"] is True


def test_cancel_running_task_promptly_then_409(app):
    plan = {"nodes": [{"id": "slow", "tool": "ledger_step", "args": {"value": "x", "sleep_s": 60}}]}
    with app.client() as c:
        task_id = c.post("/v1/tasks", json={"goal": "slow", "plan": plan}).json()["task_id"]
        wait_status(c, task_id, statuses=("executing",))
        time.sleep(0.5)
        t0 = time.monotonic()
        r = c.delete(f"/v1/tasks/{task_id}")
        assert r.status_code == 202
        body = wait_status(c, task_id, timeout_s=30)
        assert body["status"] == "cancelled" and time.monotonic() - t0 < 30  # the node sleeps 60 s
        again = c.delete(f"/v1/tasks/{task_id}")
        assert again.status_code == 409 and again.headers["content-type"] == "application/problem+json"


def test_a_running_task_rejects_enqueues_or_is_interrupted_as_the_message_says(app):
    from tests.test_api_errors import problem

    plan = {"nodes": [{"id": "a", "tool": "ledger_step", "args": {"value": "x", "sleep_s": 3}}]}
    with app.client() as c:
        task_id = c.post("/v1/tasks", json={"goal": "g", "plan": plan}).json()["task_id"]
        wait_status(c, task_id, statuses=("executing",))
        refused = problem(c.post(f"/v1/tasks/{task_id}/messages", json={"text": "no", "on_running": "reject"}), 409)
        assert "on_running=enqueue" in refused["detail"]
        problem(c.post(f"/v1/tasks/{task_id}/messages", json={"text": "no", "on_running": "later"}), 422)
        pinned = c.post(f"/v1/tasks/{task_id}/messages", json={"text": "keep it short", "on_running": "interrupt"})
        assert pinned.status_code == 202 and pinned.json()["applied"] == "interrupt"
        queued = c.post(f"/v1/tasks/{task_id}/messages", json={"text": "then write notes.md"})
        assert queued.status_code == 202 and queued.json() | {"seq": 0} == {
            "task_id": task_id, "seq": 0, "status": "executing", "iteration": 1, "applied": "enqueued"}
        deadline = time.monotonic() + 60
        while (body := c.get(f"/v1/tasks/{task_id}").json())["iteration"] < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        # The first iteration ran to its end as planned; the queued message started the second.
        assert body["iteration"] == 2 and body["history"][0]["status"] == "done", body
        assert body["requirements"] == ["then write notes.md"] and "keep it short" in body["pinned_requirements"]
        [interrupted] = [e["payload"] for e in c.get(f"/v1/tasks/{task_id}/events", params={"stream": "false"}).json()
                         if e["type"] == "task.interrupted"]
        assert interrupted["messages"] == ["keep it short"] and interrupted["replanned"] is False  # no model here


def test_follow_up_message_is_recorded(app):
    plan = {"nodes": [{"id": "a", "tool": "ledger_step", "args": {"value": "x"}}]}
    with app.client() as c:
        task_id = c.post("/v1/tasks", json={"goal": "g", "plan": plan}).json()["task_id"]
        wait_status(c, task_id)
        r = c.post(f"/v1/tasks/{task_id}/messages", json={"text": "also add a chart"})
        assert r.status_code == 202
        assert c.get(f"/v1/tasks/{task_id}").json()["messages"] == ["also add a chart"]


def test_a_plan_run_again_is_learned_once(app):
    """Procedural memory keeps one template per distinct plan: tasks repeating a plan (a
    schedule, a client) teach nothing new, whether they end together or one after another."""
    plan = {"nodes": [{"id": "a", "tool": "ledger_step", "args": {"value": f"learn-once-{time.time_ns()}"}}]}

    def learned(c, ids):
        return [t for t in c.get("/v1/templates").json()
                if t["kind"] == "learned" and t["template_id"].split(":")[0] in ids]

    with app.client() as c:
        ids = [c.post("/v1/tasks", json={"goal": f"repeat the ledger step, run {i}", "plan": plan}).json()["task_id"]
               for i in range(3)]
        assert all(wait_status(c, t)["status"] == "done" for t in ids)
        deadline = time.monotonic() + 60
        while not learned(c, ids) and time.monotonic() < deadline:
            time.sleep(0.2)
        ids.append(c.post("/v1/tasks", json={"goal": "repeat the ledger step, once more", "plan": plan}
                          ).json()["task_id"])
        assert wait_status(c, ids[-1])["status"] == "done"
        time.sleep(2)  # past the Planner's batch window: a second lesson would be stored by now
        assert len(learned(c, ids)) == 1, learned(c, ids)

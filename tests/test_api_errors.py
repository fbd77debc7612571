"""Bad input at the API: each gets its documented 4xx problem, and the server stays healthy."""

import pytest

from tests.test_e2e import wait_status

pytestmark = pytest.mark.ray

PROBLEM = "application/problem+json"
OK_PLAN = {"nodes": [{"id": "a", "tool": "ledger_step", "args": {"value": "x"}}]}


def problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def test_malformed_json_is_400(troupe_app):
    with troupe_app.client() as c:
        body = problem(c.post("/v1/tasks", content=b'{"goal": "x",', headers={"content-type": "application/json"}), 400)
    assert "not valid JSON" in body["detail"]


def test_wrong_types_name_the_field(troupe_app):
    with troupe_app.client() as c:
        body = problem(c.post("/v1/tasks", json={"goal": 42, "priority": "urgent"}), 422)
        fields = {e["field"] for e in body["errors"]}
        assert {"goal", "priority"} <= fields
        body = problem(c.post("/v1/tasks", json={"goal": "x", "plan": {"nodes": [{"id": "a", "tool": "ledger_step",
                                                                                   "args": {"value": 3}}]}}), 422)
        assert "node 'a'" in body["detail"] and "value" in body["detail"]
        body = problem(c.post("/v1/tasks", json={"goal": "x", "plan": {"nodes": [
            {"id": "a", "tool": "ledger_step", "args": {"value": "x"}, "deps": ["b"]},
            {"id": "b", "tool": "ledger_step", "args": {"value": "x"}, "deps": ["a"]}]}}), 422)
        assert "cycle" in body["detail"]
        problem(c.post("/v1/tasks", json=["not", "an", "object"]), 422)
        problem(c.post("/v1/tasks", json={"goal": ""}), 422)


def test_huge_bodies_are_413(troupe_app):
    big = b'{"goal": "' + b"x" * 2_000_000 + b'"}'
    with troupe_app.client() as c:
        problem(c.post("/v1/tasks", content=big, headers={"content-type": "application/json"}), 413)

        def chunks():  # no Content-Length: the limit is enforced while reading
            for i in range(0, len(big), 65536):
                yield big[i:i + 65536]

        problem(c.post("/v1/tasks", content=chunks(), headers={"content-type": "application/json"}), 413)


def test_unknown_ids_are_404(troupe_app):
    with troupe_app.client() as c:
        for method, path in [("GET", "/v1/tasks/nope"), ("GET", "/v1/tasks/nope/events"),
                             ("DELETE", "/v1/tasks/nope"), ("GET", "/v1/tasks/nope/artifacts"),
                             ("GET", "/v1/tasks/nope/artifacts/x.md")]:
            problem(c.request(method, path), 404)
        problem(c.post("/v1/tasks/nope/messages", json={"text": "hi"}), 404)
        problem(c.get("/v1/nothing-here"), 404)


def test_tenants_are_isolated(troupe_app):
    with troupe_app.client() as c:
        task_id = c.post("/v1/tasks", json={"goal": "g", "plan": OK_PLAN},
                         headers={"X-Troupe-Tenant": "acme"}).json()["task_id"]
        problem(c.get(f"/v1/tasks/{task_id}"), 404)
        problem(c.get(f"/v1/tasks/{task_id}", headers={"X-Troupe-Tenant": "globex"}), 404)
        assert c.get(f"/v1/tasks/{task_id}", headers={"X-Troupe-Tenant": "acme"}).status_code == 200
        problem(c.get("/v1/tasks", headers={"X-Troupe-Tenant": "../../etc"}), 422)


def test_bad_cursor_and_event_id(troupe_app):
    with troupe_app.client() as c:
        problem(c.get("/v1/tasks", params={"cursor": "garbage!"}), 400)
        problem(c.get("/v1/tasks", params={"limit": 0}), 422)
        task_id = c.post("/v1/tasks", json={"goal": "g", "plan": OK_PLAN}).json()["task_id"]
        problem(c.get(f"/v1/tasks/{task_id}/events", headers={"Last-Event-ID": "abc"}), 400)


def test_path_traversal_in_artifacts_and_files_tool(troupe_app):
    plan = {"nodes": [
        {"id": "ok", "tool": "files", "args": {"action": "write", "path": "fine.txt", "content": "fine"}},
        {"id": "escape", "tool": "files", "args": {"action": "read", "path": "../../../../etc/passwd"},
         "deps": ["ok"], "retry": {"max_attempts": 1}},
    ]}
    with troupe_app.client() as c:
        task_id = c.post("/v1/tasks", json={"goal": "escape", "plan": plan}).json()["task_id"]
        body = wait_status(c, task_id)
        assert body["status"] == "failed" and "escape" in body["reason"]
        assert "passwd" not in str(body["nodes"]["escape"]["output"])
        for name in ["../../../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "/etc/passwd", "fine.txt"]:
            problem(c.get(f"/v1/tasks/{task_id}/artifacts/{name}"), 404)  # nothing was published


def test_server_stays_healthy(troupe_app):
    with troupe_app.client() as c:
        r = c.get("/healthz")
        assert r.status_code == 200 and r.json()["ok"]
        task_id = c.post("/v1/tasks", json={"goal": "after the abuse", "plan": OK_PLAN}).json()["task_id"]
        assert wait_status(c, task_id)["status"] == "done"


def test_the_first_admin_key_is_readable_by_the_service_alone(troupe_app):
    assert (troupe_app.home / "admin.key").stat().st_mode & 0o777 == 0o600
    assert troupe_app.admin_key.startswith("trp_")

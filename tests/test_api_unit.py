"""The API without Ray: a real store and registry behind a backend whose Supervisor is a
recorder, to check behaviour that needs no dispatch (saturation, OpenAPI)."""

import pytest

from deployments.api import GatewayConfig
from tests.support.local_backend import LocalBackend, local_client

PLAN = {"nodes": [{"id": "a", "tool": "ledger_step", "args": {"value": "x"}}]}


@pytest.fixture
def client(tmp_path):
    backend = LocalBackend(tmp_path, GatewayConfig(max_queued_tasks=2, retry_after_s=7))
    _, c = local_client(backend)
    with c:
        c.headers["Authorization"] = f"Bearer {backend.admin_key}"
        yield c, backend


def test_full_queue_answers_429_with_retry_after(client):
    c, backend = client
    for _ in range(2):
        assert c.post("/v1/tasks", json={"goal": "g", "plan": PLAN}).status_code == 202
    r = c.post("/v1/tasks", json={"goal": "g", "plan": PLAN})
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    assert r.headers["content-type"] == "application/problem+json"
    assert backend.kicks == ["kick", "kick"]
    listed = c.get("/v1/tasks").json()["items"]
    assert [t["status"] for t in listed] == ["queued", "queued"]
    assert sorted(c.get(f"/v1/tasks/{t['task_id']}").json()["queue_position"] for t in listed) == [1, 2]


def test_openapi_documents_the_contract(client):
    c, _ = client
    spec = c.get("/openapi.json").json()
    assert {"/v1/tasks", "/v1/tasks/{task_id}", "/v1/tasks/{task_id}/events", "/v1/tools"} <= set(spec["paths"])
    create = spec["components"]["schemas"]["TaskCreate"]["properties"]
    assert {"goal", "plan", "acceptance_tests", "priority", "metadata"} <= set(create)
    assert c.get("/docs").status_code == 200


def test_idempotency_key_makes_a_repeated_submission_find_its_task(client):
    c, backend = client
    first = c.post("/v1/tasks", json={"goal": "g", "plan": PLAN}, headers={"Idempotency-Key": "order-17"})
    again = c.post("/v1/tasks", json={"goal": "g", "plan": PLAN}, headers={"Idempotency-Key": "order-17"})
    assert first.status_code == again.status_code == 202
    assert first.json()["task_id"] == again.json()["task_id"]
    other = c.post("/v1/tasks", json={"goal": "g", "plan": PLAN}, headers={"Idempotency-Key": "order-17",
                                                                          "X-Troupe-Tenant": "globex"})
    assert other.json()["task_id"] != first.json()["task_id"]  # keys are per tenant
    assert len(c.get("/v1/tasks").json()["items"]) == 1

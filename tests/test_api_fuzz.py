"""Schemathesis against the real app's OpenAPI document, with a valid key: no generated
request may get a 5xx. The stateful run follows the document's OpenAPI links (POST /v1/tasks
-> GET /v1/tasks/{task_id} ...), so the id-based operations are reached with real ids."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import FlakyStrategyDefinition

pytestmark = pytest.mark.ray

FAST = settings(max_examples=8, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def api_schema(troupe_app):
    return schemathesis.openapi.from_url(troupe_app.base_url + "/openapi.json")


@pytest.fixture(scope="module", autouse=True)
def _no_schedules_left(troupe_app):
    """A generated schedule would keep submitting tasks to the session's shared app: delete them."""
    yield
    with troupe_app.client(headers={"X-Troupe-Tenant": "fuzz"}) as c:
        for s in c.get("/v1/schedules").json():
            c.delete(f"/v1/schedules/{s['schedule_id']}")


@pytest.fixture(scope="module")
def auth_headers(troupe_app):
    return {"Authorization": f"Bearer {troupe_app.admin_key}", "X-Troupe-Tenant": "fuzz"}


def _no_server_error(case, response) -> None:
    # The one 5xx by design: this app has no model, and the model routes say so (503, documented).
    if response.status_code == 503 and "No model configured" in response.text:
        return
    assert response.status_code < 500, (case.operation.label, response.status_code, response.text[:500])


def test_no_server_errors(api_schema, auth_headers, troupe_app):
    labels = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)

        @given(case=operation.as_strategy())
        @FAST
        def check(case) -> None:
            if case.operation.path.endswith("/events"):  # JSON, not a stream that lasts the task's life
                case.query = {**(case.query or {}), "stream": "false"}
            response = case.call(headers=auth_headers, timeout=60)
            _no_server_error(case, response)

        check()
    assert len(labels) >= 19, labels
    _admin_key_still_works(troupe_app)


def test_stateful_links_reach_the_id_operations(api_schema, auth_headers, troupe_app):
    reached: set[str] = set()

    # Without revoke_key: the run reuses ids from any response (GET /v1/keys, the audit log), so
    # it revoked the app's own admin key, which every later test of the session signs in with.
    # test_no_server_errors still sends revoke_key its generated ids.
    # Schedules, webhooks and memory are left to test_no_server_errors: their operations here only thin
    # out the steps that reach the task operations through links.
    class Machine(api_schema.exclude(operation_id="revoke_key").exclude(tag=["schedules", "webhooks", "memory"])
                  .as_state_machine()):
        def get_call_kwargs(self, case):
            reached.add(case.operation.label)
            query = {**(case.query or {}), "stream": "false"} if case.operation.path.endswith("/events") else None
            if query is not None:
                case.query = query
            return {"headers": auth_headers, "timeout": 60}

        def validate_response(self, response, case, **kwargs):
            _no_server_error(case, response)

    # Random, generate only: a derandomized run walks the same choice prefixes twice against a
    # server whose state (the ids it hands out) has moved on, and shrinking replays runs; both
    # end in Hypothesis's FlakyStrategyDefinition rather than in a finding about the API. Even
    # generating, Hypothesis may walk a known prefix again (2 full runs in 3 here, at 40 examples
    # in one run): so several short runs, each with a fresh engine, and one that ends so is
    # over, not failed. A server error, or a check, still fails the test from any run.
    for _ in range(5):
        try:
            Machine.run(settings=settings(max_examples=8, stateful_step_count=8, deadline=None, derandomize=False,
                                          phases=[Phase.generate], database=None,
                                          suppress_health_check=list(HealthCheck)))
        except FlakyStrategyDefinition:
            continue
    # Reached with the ids POST /v1/tasks returned: the operations the issue found unreached.
    by_id = {"GET /v1/tasks/{task_id}", "GET /v1/tasks/{task_id}/events", "POST /v1/tasks/{task_id}/messages",
             "POST /v1/tasks/{task_id}/budget", "DELETE /v1/tasks/{task_id}", "GET /v1/tasks/{task_id}/artifacts"}
    print(f"stateful run reached {len(reached & by_id)} of {len(by_id)} task operations: {sorted(reached)}")
    assert reached >= by_id, sorted(by_id - reached)
    _admin_key_still_works(troupe_app)


def _admin_key_still_works(app) -> None:
    """The session's later tests sign in with the app's admin key: the run must not have revoked it."""
    with app.client() as c:
        r = c.get("/v1/tasks")
    assert r.status_code == 200, r.text

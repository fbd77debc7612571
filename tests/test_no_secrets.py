"""No secret anywhere: an app on PostgreSQL with a password in its URL and a model key in its
workers' environment runs tasks, answers model calls, health checks, key and audit requests,
and fails a tool; then every response, every event and every log file of the Ray session is
searched for the password, the model key and the API keys' secrets. None may appear."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import MODEL_KEY_PROBE, _make_app
from tests.support.local_backend import postgres_database
from tests.support.scripted_llm import litellm_params

pytestmark = pytest.mark.ray

@pytest.fixture(scope="module")
def secret_app(serve_http, tmp_path_factory, scripted_llm_server):
    password = f"pw-{uuid.uuid4().hex}"  # this machine's PostgreSQL trusts loopback: any password works
    llm = {"model_list": [{"model_name": "reason", "litellm_params": {
        **litellm_params(scripted_llm_server, "reason"), "api_key": "os.environ/TROUPE_TEST_MODEL_KEY"}}],
        "num_retries": 0, "fallbacks": [], "cooldown_time": 0}
    with postgres_database() as url:
        app = _make_app(serve_http, tmp_path_factory, "troupe-secrets", "/secrets", llm=llm,
                        database_url=url.replace("postgres@", f"postgres:{password}@"))
        yield app, password
        app.delete()


def _session_logs() -> list[Path]:
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    return [p for p in logs.rglob("*") if p.is_file()]


def test_no_secret_in_responses_events_or_logs(secret_app, scripted_llm):
    app, password = secret_app
    member = app.new_key("acme")
    said: list[str] = []
    with app.client() as admin, app.client(member) as c:
        plan = {"nodes": [{"id": "ok", "tool": "python", "args": {"code": "print(6 * 7)"}},
                          {"id": "bad", "tool": "flaky", "args": {"fail_times": 99}, "retry": {"max_attempts": 1}}]}
        task_id = c.post("/v1/tasks", json={"goal": "two nodes", "plan": plan, "max_corrections": 0}).json()["task_id"]
        deadline = time.monotonic() + 120
        while c.get(f"/v1/tasks/{task_id}").json()["status"] not in ("done", "failed", "waiting_for_input"):
            assert time.monotonic() < deadline
            time.sleep(0.3)
        scripted_llm.add("Bonjour", model="reason")
        r = c.post("/v1/chat/completions", json={"model": "reason", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        assert scripted_llm.authorizations[-1] == f"Bearer {MODEL_KEY_PROBE}"  # the key was really in use
        for r in (c.get(f"/v1/tasks/{task_id}"), c.get(f"/v1/tasks/{task_id}/events?stream=false"),
                  c.get("/v1/models"), c.get("/healthz"), admin.get("/healthz"), admin.get("/v1/keys"),
                  admin.get("/v1/audit"), c.get("/v1/tasks"), c.post("/v1/chat/completions", json={"model": "nope",
                  "messages": [{"role": "user", "content": "hi"}]}), admin.get("/openapi.json")):
            said.append(r.text)
        assert "store" in admin.get("/healthz").json()  # admins do get the details
    from ray import serve

    said.append(str(serve.status()))  # what `serve status` prints: every app, deployment and message
    everything = "\n".join(said)
    for secret in (password, MODEL_KEY_PROBE, member, app.admin_key):
        assert secret not in everything
    leaks = [str(p) for p in _session_logs() if any(s.encode() in p.read_bytes()
                                                     for s in (password, MODEL_KEY_PROBE, member, app.admin_key))]
    assert leaks == []

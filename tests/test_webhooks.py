"""Webhooks: signatures (pure); out, a receiver the test starts gets `done` signed, is retried
after it answers 500 and gets it exactly once after 200; in, a signed hook submits a task from
its trigger's template with the payload as input."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.conftest import _make_app
from tests.test_crash import wait_for
from tests.test_e2e import wait_status
from troupe.signing import HEADER, SignatureError, sign, verify

PLAN = {"nodes": [{"id": "a", "tool": "ledger_step", "args": {"value": "v"}}]}


def test_signatures():
    body = b'{"event":"done"}'
    header = sign("whsec_x", body, timestamp=1_700_000_000)
    assert verify("whsec_x", body, header, now=1_700_000_010) == 1_700_000_000
    for secret, data, h, now in (("whsec_y", body, header, 1_700_000_010),  # wrong secret
                                 ("whsec_x", body + b" ", header, 1_700_000_010),  # body changed
                                 ("whsec_x", body, header, 1_700_001_000),  # stale: a replay
                                 ("whsec_x", body, None, 1_700_000_010), ("whsec_x", body, "v1=ab", 0)):
        with pytest.raises(SignatureError):
            verify(secret, data, h, now=now)


class Receiver:
    """Answers 500 to the first request, then 200; keeps what it got."""

    def __init__(self):
        self.got: list[tuple[dict, bytes, int]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 500 if not receiver.got else 200
                receiver.got.append((dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def hooks_app(serve_http, tmp_path_factory):
    app = _make_app(serve_http, tmp_path_factory, "troupe-hooks", "/hooks",
                    webhooks={"poll_s": 0.2, "backoff_s": 0.5})
    yield app
    app.delete()


@pytest.mark.ray
def test_done_is_delivered_signed_retried_after_500_and_once_after_200(hooks_app):
    receiver = Receiver()
    try:
        with hooks_app.client() as c:
            r = c.post("/v1/webhooks", json={"url": receiver.url, "events": ["done"]})
            assert r.status_code == 201, r.text
            hook = r.json()
            assert hook["secret"].startswith("whsec_")
            assert "secret" not in c.get("/v1/webhooks").json()[0]
            assert c.post("/v1/webhooks", json={"url": "ftp://x", "events": ["done"]}).status_code == 422
            task_id = c.post("/v1/tasks", json={"goal": "g", "plan": PLAN}).json()["task_id"]
            assert wait_status(c, task_id)["status"] == "done"
            wait_for(lambda: len(receiver.got) >= 2, 30, "the retried delivery")
            time.sleep(2)  # nothing comes after the 200
            assert [s for _, _, s in receiver.got] == [500, 200]
            ids = set()
            for headers, body, _ in receiver.got:
                verify(hook["secret"], body, headers[HEADER])
                payload = json.loads(body)
                assert payload["event"] == "done" and payload["task_id"] == task_id
                assert headers["Troupe-Event"] == "done"
                ids.add(headers["Troupe-Delivery"])
            assert len(ids) == 1  # one delivery, two attempts
            [log] = c.get(f"/v1/webhooks/{hook['webhook_id']}/deliveries").json()
            assert log["state"] == "delivered" and log["attempts"] == 2 and log["last_status"] == 200
            # Another tenant sees neither the webhook nor its log.
            with hooks_app.client(hooks_app.new_key("hooks-other")) as other:
                assert other.get("/v1/webhooks").json() == []
                assert other.get(f"/v1/webhooks/{hook['webhook_id']}/deliveries").status_code == 404
            assert c.delete(f"/v1/webhooks/{hook['webhook_id']}").status_code == 200
    finally:
        receiver.close()


@pytest.mark.ray
def test_signed_hook_submits_a_task_with_the_payload(hooks_app):
    with hooks_app.client() as c:
        r = c.post("/v1/triggers", json={"name": "on-push", "task": {"goal": "handle {{payload}}", "plan": PLAN}})
        assert r.status_code == 201, r.text
        trigger = r.json()
    body = json.dumps({"ref": "main", "commits": 3}).encode()
    url = hooks_app.base_url + trigger["url"]
    headers = {"Content-Type": "application/json", HEADER: sign(trigger["secret"], body)}
    assert httpx.post(url, content=body, headers={HEADER: sign("whsec_wrong", body)}).status_code == 401
    assert httpx.post(url, content=body).status_code == 401
    assert httpx.post(hooks_app.base_url + "/v1/hooks/trg_nope", content=body, headers=headers).status_code == 401
    r = httpx.post(url, content=body, headers=headers)
    assert r.status_code == 202, r.text
    task_id = r.json()["task_id"]
    assert httpx.post(url, content=body, headers=headers).json()["task_id"] == task_id  # a resend: same task
    with hooks_app.client() as c:
        task = wait_status(c, task_id)
        assert task["status"] == "done" and '"commits": 3' in task["goal"]
        assert task["metadata"]["trigger_payload"] == {"ref": "main", "commits": 3}


async def test_status_events_fill_the_outbox_in_their_transaction(any_store_url):
    from memory.store import EventStore, NewEvent
    from memory.webhooks import WebhookStore, webhook_event
    from troupe.models import EventType, Priority, utcnow

    assert webhook_event({"status": "waiting_for_input", "waiting_on": "budget"}) == "budget"
    assert webhook_event({"status": "waiting_for_input", "waiting_on": "side_effects"}) == "waiting_for_input"
    assert webhook_event({"status": "executing"}) is None
    store = EventStore(any_store_url)
    await store.migrate()
    hooks = WebhookStore(store)
    mine = await hooks.create("acme", "http://127.0.0.1:9/h", ["done", "budget"])
    await hooks.create("globex", "http://127.0.0.1:9/g", ["done"])  # another tenant's: not for acme's tasks
    await store.create_task("t1", tenant="acme", goal="g", priority=Priority.normal, payload={"goal": "g"})
    await store.append("t1", [NewEvent(EventType.status, {"status": "executing"}),
                              NewEvent(EventType.status, {"status": "waiting_for_input", "waiting_on": "budget"})])
    await store.append("t1", [NewEvent(EventType.status, {"status": "done"})])
    log = await hooks.deliveries(mine["webhook_id"])
    assert sorted(d["event"] for d in log) == ["budget", "done"] and {d["state"] for d in log} == {"pending"}
    due = await hooks.due(utcnow(), lease_s=30)
    assert len(due) == 2 and await hooks.due(utcnow(), lease_s=30) == []  # leased
    await hooks.finish(due[0], ok=False, status=500, error="boom", retry_in_s=None)
    await hooks.finish(due[1], ok=True, status=200, error=None, retry_in_s=None)
    assert sorted(d["state"] for d in await hooks.deliveries(mine["webhook_id"])) == ["delivered", "failed"]
    await store.close()

"""Tenants cannot see each other, over HTTP on the real app: tenant A plants a secret in a
goal, a plan argument, a tool output, an artifact, an uploaded document and a browsed page;
tenant B then tries every read path it has, including code in the sandbox and the files
tool. Not one occurrence of the secret reaches B."""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
import uuid

import pytest

from tests.test_collections_api import wait_job
from tests.test_e2e import wait_status

pytestmark = pytest.mark.ray

TERMINAL = ("done", "failed", "cancelled", "waiting_for_input")


@pytest.fixture(scope="module")
def page_with(request):
    """A loopback web page whose text is set by the test."""
    body = {"html": b""}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body["html"])))
            self.end_headers()
            self.wfile.write(body["html"])

        def log_message(self, *args) -> None:
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def set_page(html: str) -> str:
        body["html"] = html.encode()
        return f"http://127.0.0.1:{server.server_address[1]}/notes.html"

    yield set_page
    server.shutdown()


def test_tenant_b_sees_nothing_of_tenant_a(any_store_app, page_with):
    troupe_app = any_store_app
    secret = f"zq{uuid.uuid4().hex}"  # one token, so that search and sentence splitting keep it whole
    alice, bob = f"alice-{secret[:6]}", f"bob-{secret[:6]}"
    a = troupe_app.client(troupe_app.new_key(alice), timeout=120)
    b = troupe_app.client(troupe_app.new_key(bob), timeout=120)
    home = troupe_app.home
    url = page_with(f"<html><head><title>Quarterly notes</title></head><body><p>The pelican budget code is "
                    f"{secret} for the quarter.</p></body></html>")

    # -- tenant A plants the secret everywhere it can --------------------------------------------
    plan = {"nodes": [
        {"id": "compute", "tool": "python", "args": {"code": f"print('{secret}')"}},
        {"id": "report", "tool": "write_report", "deps": ["compute"],
         "args": {"title": "Secret", "body": f"{{{{compute.output}}}} and {secret}"}},
        {"id": "read", "tool": "browse", "args": {"url": url}},
    ]}
    planted = a.post("/v1/tasks", json={"goal": f"keep {secret} safe", "plan": plan}).json()["task_id"]
    task = wait_status(a, planted, TERMINAL, timeout_s=180)
    assert task["status"] == "done", task
    assert any(x["name"] == "report.md" for x in task["artifacts"])
    job = a.post("/v1/collections/vault/ingest",
                 files=[("files", ("vault.md", f"# Vault\n\nThe vault combination is {secret} this year.\n"))])
    assert job.status_code == 202, job.text
    job_id = job.json()["job_id"]
    assert wait_job(a, job_id)["status"] == "done"
    assert secret in json.dumps(a.post("/v1/collections/vault/search", json={"query": "vault combination"}).json())
    workspace = home / "workspaces" / alice / planted

    # -- tenant B tries every read path --------------------------------------------------------------
    seen: list[str] = []

    def got(r) -> None:
        seen.append(f"{r.status_code} {r.text}")

    for path in (f"/v1/tasks/{planted}", f"/v1/tasks/{planted}/events?stream=false", f"/v1/tasks/{planted}/events",
                 f"/v1/tasks/{planted}/artifacts", f"/v1/tasks/{planted}/artifacts/report.md",
                 f"/v1/ingest/{job_id}", f"/v1/ingest/{job_id}/events"):
        r = b.get(path)
        assert r.status_code == 404, (path, r.text)
        got(r)
    for path in ("/v1/tasks", "/v1/templates", "/v1/tools"):
        got(b.get(path))
    r = b.post("/v1/collections/vault/search", json={"query": "vault combination"})
    assert r.status_code == 404
    got(r)
    # B's own collection of the same name: its search runs over the shared store, where only
    # the tenant filter keeps A's passage out.
    mine = b.post("/v1/collections/vault/ingest",
                  files=[("files", ("vault.md", "# Vault\n\nThe vault combination is kept by the bank.\n"))])
    assert mine.status_code == 202, mine.text
    assert wait_job(b, mine.json()["job_id"])["status"] == "done"
    r = b.post("/v1/collections/vault/search", json={"query": "vault combination", "limit": 10})
    assert r.status_code == 200 and "kept by the bank" in r.text, r.text
    got(r)
    # Messages, budget and cancel on A's task are 404 too, and change nothing.
    for method, path, body in (("POST", f"/v1/tasks/{planted}/messages", {"text": "hi"}),
                               ("POST", f"/v1/tasks/{planted}/budget", {"max_llm_calls": 99}),
                               ("DELETE", f"/v1/tasks/{planted}", None)):
        r = b.request(method, path, json=body)
        assert r.status_code == 404, (path, r.text)
        got(r)

    # B's own task: sandboxed code hunting for the secret in TROUPE_HOME and A's workspace, the
    # files tool walking out of its workspace, and a web search over pages the pool has read.
    # The code holds the secret and its marker reversed, so that B's own plan does not contain them.
    hunt = f"""
import os, sqlite3
needle = {secret[::-1]!r}[::-1].encode()
hit = 'DNUOF'[::-1]
roots = [{str(home)!r}, {str(workspace)!r}, {str(home / 'workspaces' / alice)!r}]
for root in roots:
    for top, dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(top, name)
            try:
                if needle in open(p, 'rb').read():
                    print(hit, p)
            except Exception as exc:
                print('no', type(exc).__name__)
try:
    rows = sqlite3.connect('file:' + {str(home / 'troupe.db')!r} + '?mode=ro', uri=True).execute(
        'select payload from events').fetchall()
    print(hit + ' rows' if any(needle in str(r).encode() for r in rows) else 'rows without it')
except Exception as exc:
    print('db refused', type(exc).__name__)
import socket
try:  # the database server (PostgreSQL's port): the sandbox has no network
    socket.create_connection(('127.0.0.1', 5432), timeout=2).close()
    print(hit + ' port')
except OSError as exc:
    print('port refused', type(exc).__name__)
for p in [{str(workspace / 'report.md')!r}, {str(home / 'admin.key')!r}]:
    try:
        print(open(p).read())
    except Exception as exc:
        print('refused', type(exc).__name__)
print('hunt over')
"""
    steal = {"nodes": [
        {"id": "hunt", "tool": "python", "args": {"code": hunt}},
        {"id": "search", "tool": "web_search", "args": {"query": "pelican budget code quarter"}},
    ]}
    thief = b.post("/v1/tasks", json={"goal": "look around", "plan": steal}).json()["task_id"]
    stolen = wait_status(b, thief, TERMINAL, timeout_s=180)
    got(b.get(f"/v1/tasks/{thief}"))
    got(b.get(f"/v1/tasks/{thief}/events?stream=false"))
    assert stolen["status"] == "done", stolen
    assert "hunt over" in json.dumps(stolen["nodes"]["hunt"])  # the code ran (it was not just refused)
    # The files tool, walking out of B's workspace: each probe fails, and says nothing of A's file.
    for probe in (f"../{planted}/report.md", f"../../{alice}/{planted}/report.md", str(workspace / "report.md")):
        plan = {"nodes": [{"id": "walk", "tool": "files", "args": {"action": "read", "path": probe}}]}
        walked = wait_status(b, b.post("/v1/tasks", json={"goal": "walk", "plan": plan}).json()["task_id"], TERMINAL)
        assert walked["nodes"]["walk"]["status"] == "failed", walked["nodes"]["walk"]
        got(b.get(f"/v1/tasks/{walked['id']}/events?stream=false"))

    everything = "\n".join(seen)
    assert secret not in everything
    assert "FOUND" not in everything
    assert troupe_app.admin_key not in everything
    a.close()
    b.close()

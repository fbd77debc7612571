"""Through the whole app (Gateway, Conductor, ToolPool on Ray): a task of tenant mallory runs
`python` code that goes after tenant alice's data in the app's TROUPE_HOME, and everything
mallory gets back (task, events) holds none of it."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ServeApp
from tests.test_sandbox_isolation import PROBE, attempts

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
APP = "troupe-iso"


@pytest.fixture(scope="module")
def iso_app(serve_http):
    """The app with its home outside /tmp (which the sandbox covers anyway), so that only the
    cover of TROUPE_HOME stands between mallory and alice."""
    from ray import serve

    home = Path(tempfile.mkdtemp(prefix=".iso-app-", dir=REPO))
    home.chmod(0o755)  # as an operator's folder may be: the database file in it is then world-readable
    app = ServeApp(APP, "/iso", serve_http + "/iso", home, {
        "home": str(home), "app_name": APP,
        "tool_modules": ["tools.builtin", "tests.support.tools"]})
    app.deploy()
    yield app
    serve.delete(APP)
    shutil.rmtree(home, ignore_errors=True)


def as_tenant(tenant: str) -> dict[str, str]:
    return {"X-Troupe-Tenant": tenant}


def run_task(client, tenant: str, body: dict, timeout_s: float = 180) -> tuple[str, dict]:
    r = client.post("/v1/tasks", json=body, headers=as_tenant(tenant))
    assert r.status_code == 202, r.text
    task_id = r.json()["task_id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        task = client.get(f"/v1/tasks/{task_id}", headers=as_tenant(tenant)).json()
        if task["status"] in ("done", "failed", "cancelled"):
            return task_id, task
        time.sleep(0.3)
    raise AssertionError(f"task {task_id} still {task['status']} after {timeout_s}s")


def test_mallory_python_code_gets_nothing_of_alice(iso_app):
    secret = f"alice-SECRET-{uuid.uuid4().hex}"
    (iso_app.home / "admin.key").write_text(f"{secret}-admin")  # as the lead's first start will write it
    with iso_app.client(timeout=60) as c:
        alice_task, task = run_task(c, "alice", {
            "goal": f"remember {secret}",
            "plan": {"nodes": [{"id": "note", "tool": "files",
                                "args": {"action": "write", "path": "notes.txt", "content": secret}}]}})
        assert task["status"] == "done", task
        alice_ws = iso_app.home / "workspaces" / "alice" / alice_task
        # The control: alice's secret really is in the database files (WAL included) and her workspace.
        db_bytes = b"".join(p.read_bytes() for p in iso_app.home.glob("troupe.db*"))
        assert secret.encode() in db_bytes
        assert (alice_ws / "notes.txt").read_text() == secret

        probe = PROBE.format(home=str(iso_app.home), alice_ws=str(alice_ws))
        mallory_task, task = run_task(c, "mallory", {
            "goal": "look around", "plan": {"nodes": [{"id": "peek", "tool": "python", "args": {"code": probe}}]}})
        events = c.get(f"/v1/tasks/{mallory_task}/events", params={"stream": "false"},
                       headers=as_tenant("mallory"))
        assert events.status_code == 200, events.text
        received = str(task) + events.text
        assert secret not in received
        assert task["status"] == "done", task
        output = next(e["payload"]["output"] for e in events.json()
                      if e["type"] == "tool.result" and "output" in e["payload"])
        got = attempts(output)
        assert got["sqlite"].startswith("refused: OperationalError")
        assert got["alice-workspace"].startswith("refused: FileNotFoundError")
        assert got["admin-key"].startswith("refused: FileNotFoundError")
        assert got["walk-home"] == "{}"

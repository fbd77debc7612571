"""Kill the browser replica mid-call: the node's retry lands on a fresh replica and the
task completes."""

from __future__ import annotations

import pytest

from tests.test_crash import kill_named, node_states, wait_for
from tests.test_e2e import wait_status
from tests.web.conftest import _require_chromium

pytestmark = pytest.mark.ray


def test_browse_survives_a_killed_browser_replica(troupe_app, site):
    _require_chromium()
    plan = {"nodes": [
        {"id": "page", "tool": "browse", "args": {"url": f"{site.url}/slow?s=12", "timeout_s": 30},
         "retry": {"max_attempts": 5, "backoff_s": 1}},
        {"id": "report", "tool": "write_report", "args": {"title": "Page", "body": "{{page.output.text}}"},
         "deps": ["page"]},
    ]}
    with troupe_app.client() as c:
        task_id = c.post("/v1/tasks", json={"goal": "browse through a crash", "plan": plan}).json()["task_id"]
        wait_for(lambda: node_states(c, task_id).get("page") == "running", what="browse running")
        wait_for(lambda: any(p.startswith("/slow") for p in site.paths()), what="the page requested")
        kill_named(f"SERVE_REPLICA::{troupe_app.name}#BrowserPool")
        body = wait_status(c, task_id, timeout_s=180)
        assert body["status"] == "done", body.get("reason")
        assert body["nodes"]["page"]["attempts"] >= 2
        events = c.get(f"/v1/tasks/{task_id}/events", params={"stream": "false"}).json()
        retries = [e for e in events if e["type"] == "node.retry"]
        assert retries and "the browser was lost during browse: its replica died" in retries[0]["payload"]["error"]

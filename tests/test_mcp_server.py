"""Troupe as an MCP server, tested with the official `mcp` SDK's own client over streamable
HTTP against the real app: list the tools, submit a task, follow its progress, read its
artifact; refused without a key, a viewer cannot act, tenants stay apart."""

from __future__ import annotations

import base64
import time

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

pytestmark = pytest.mark.ray

PLAN = {"nodes": [
    {"id": "left", "tool": "ledger_step", "args": {"value": "L", "sleep_s": 0.3}},
    {"id": "right", "tool": "ledger_step", "args": {"value": "R", "sleep_s": 0.3}},
    {"id": "report", "tool": "write_report", "deps": ["left", "right"],
     "args": {"title": "Both", "body": "{{left.output}} and {{right.output}}"}},
]}


def _client(app, key: str | None) -> Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60, read=300))
    return Client(streamable_http_client(f"{app.base_url}/mcp", http_client=http))


async def test_mcp_client_submits_follows_and_reads(troupe_app):
    member = troupe_app.new_key("mcp-acme")
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async with _client(troupe_app, member) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == {"submit_task", "get_task", "wait_for_task", "list_artifacts", "read_artifact",
                              "reply", "search_collection", "ingest"}
        assert tools["get_task"].annotations.read_only_hint and "goal" in tools["submit_task"].input_schema["properties"]
        submitted = await client.call_tool("submit_task", {"goal": "two branches and a report", "plan": PLAN})
        assert not submitted.is_error, submitted.content
        task_id = submitted.structured_content["task_id"]
        waited = await client.call_tool("wait_for_task", {"task_id": task_id}, progress_callback=on_progress)
        assert not waited.is_error and waited.structured_content["status"] == "done", waited.content
        assert progress and progress[-1][0] == 3 and progress[-1][1] == 3  # all three nodes done
        listed = await client.call_tool("list_artifacts", {"task_id": task_id})
        names = {a["name"] for a in listed.structured_content["result"]}
        assert {"report.md", "manifest.json"} <= names
        report = await client.call_tool("read_artifact", {"task_id": task_id, "name": "report.md"})
        assert "L and R" in report.structured_content["text"]
        bad = await client.call_tool("submit_task", {"goal": "g", "plan": {"nodes": [{"id": "a", "tool": "teleport"}]}})
        assert bad.is_error and "unknown tool" in bad.content[0].text
        job = await client.call_tool("ingest", {"collection": "mcp-docs", "files": {
            "note.md": base64.b64encode(b"# Note\n\nThe lighthouse keeper counts 41 ships.\n").decode()}})
        assert not job.is_error and job.structured_content["status"] == "queued", job.content

    # Another tenant's key cannot see the task; a viewer can read but not act.
    async with _client(troupe_app, troupe_app.new_key("mcp-globex")) as other:
        hidden = await other.call_tool("get_task", {"task_id": task_id})
        assert hidden.is_error and "404" in hidden.content[0].text
    async with _client(troupe_app, troupe_app.new_key("mcp-acme", "viewer")) as viewer:
        assert not (await viewer.call_tool("get_task", {"task_id": task_id})).is_error
        refused = await viewer.call_tool("submit_task", {"goal": "g", "plan": PLAN})
        assert refused.is_error and "member role" in refused.content[0].text


def test_mcp_endpoint_refuses_requests_without_a_valid_key(troupe_app):
    import httpx

    ping = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    revoked = troupe_app.new_key("mcp-revoked")
    with troupe_app.client() as admin:
        [key] = admin.get("/v1/keys", params={"tenant": "mcp-revoked"}).json()
        assert admin.delete(f"/v1/keys/{key['key_id']}").status_code == 200
    time.sleep(1.5)  # revocation reaches every replica within a second
    for headers in ({}, {"Authorization": "Bearer trp_not-a-key"}, {"Authorization": f"Bearer {revoked}"}):
        r = httpx.post(f"{troupe_app.base_url}/mcp", json=ping, headers=headers, timeout=30)
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"

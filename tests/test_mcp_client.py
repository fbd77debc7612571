"""MCP servers' tools as Troupe tools, on a real app: the third-party `mcp-server-time` (PyPI,
stdio), a test server over stdio whose process the test kills mid-call, and one over
streamable HTTP the test starts. Plan nodes and an agent node (scripted model) call them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import REPO_ROOT, _make_app, free_port
from tests.support.scripted_llm import router_config
from tests.test_agents_e2e import agent_turn, call, events
from tests.test_crash import wait_for
from tests.test_e2e import wait_status

pytestmark = pytest.mark.ray

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def http_server():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.mcp_servers", "http", str(port)], cwd=REPO_ROOT)
    url = f"http://127.0.0.1:{port}/mcp"
    wait_for(lambda: _up(port), 30, "the HTTP MCP server")
    yield url
    proc.terminate()
    proc.wait(10)


def _up(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
        return True
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def mcp_app(serve_http, tmp_path_factory, scripted_llm_server, http_server):
    ledger = tmp_path_factory.mktemp("mcp-ledger") / "calls.log"
    app = _make_app(serve_http, tmp_path_factory, "troupe-mcp", "/mcpc",
                    llm=router_config(scripted_llm_server, num_retries=0, fallbacks=[], cooldown_time=0),
                    mcp_servers=[
                        {"name": "time", "command": str(BIN / "mcp-server-time"), "args": ["--local-timezone", "UTC"]},
                        {"name": "slow", "command": sys.executable, "args": ["-m", "tests.support.mcp_servers", "stdio"],
                         "env": {"PYTHONPATH": str(REPO_ROOT), "MCP_TEST_LEDGER": str(ledger)}},
                        {"name": "web", "url": http_server, "tenants": ["default"],
                         "headers_from_env": {"X-Probe": "TROUPE_TEST_MODEL_KEY"}},
                    ])
    app.ledger = ledger
    yield app
    app.delete()


def _kill_slow_server(ledger: Path) -> int:
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "tests.support.mcp_servers" in " ".join(p.info["cmdline"] or []) and \
                    p.environ().get("MCP_TEST_LEDGER") == str(ledger):
                os.kill(p.pid, signal.SIGKILL)
                return p.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    raise AssertionError("no stdio test server is running")


def _lines(ledger: Path, what: str) -> list[str]:
    return [x for x in ledger.read_text().splitlines() if x.startswith(what)] if ledger.exists() else []


def test_mcp_tools_are_listed_with_their_schemas(mcp_app):
    with mcp_app.client() as c:
        tools = {t["name"]: t for t in c.get("/v1/tools").json()}
    now = tools["time_get_current_time"]
    assert now["source"] == "mcp:time" and now["parameters"]["required"] == ["timezone"]
    assert now["side_effects"] is False and now["idempotent"] is True  # readOnlyHint
    assert tools["slow_send_note"]["side_effects"] is True  # destructiveHint, not idempotent
    assert "web_slow_echo" in tools
    # The HTTP server is offered to tenant `default` only.
    with mcp_app.client(mcp_app.new_key("mcp-other")) as other:
        listed = {t["name"] for t in other.get("/v1/tools").json()}
        assert "time_get_current_time" in listed and "web_slow_echo" not in listed
        r = other.post("/v1/tasks", json={"goal": "g", "plan": {"nodes": [
            {"id": "a", "tool": "web_slow_echo", "args": {"value": "x"}}]}})
        assert r.status_code == 422
    # Arguments are validated against the server's schema before the task exists.
    with mcp_app.client() as c:
        r = c.post("/v1/tasks", json={"goal": "g", "plan": {"nodes": [
            {"id": "a", "tool": "time_get_current_time", "args": {"timezone": 5}}]}})
        assert r.status_code == 422 and "timezone" in r.text


def test_plan_and_agent_nodes_call_mcp_tools(mcp_app, scripted_llm):
    scripted_llm.add([call("time_convert_time", source_timezone="UTC", time="12:00", target_timezone="Asia/Tokyo")],
                     when=agent_turn(), model="fast")
    scripted_llm.add("In Tokyo it is 21:00", when=agent_turn(), model="fast")
    plan = {"nodes": [
        {"id": "now", "tool": "time_get_current_time", "args": {"timezone": "Europe/Paris"}},
        {"id": "web", "tool": "web_slow_echo", "args": {"value": "over-http"}},
        {"id": "agent", "kind": "agent", "tools": ["time_convert_time"], "deps": ["now"],
         "instructions": "Convert noon UTC to Tokyo time."},
        {"id": "report", "tool": "write_text", "deps": ["agent", "web"],
         "args": {"name": "report.md", "text": "{{agent.output.answer}} / {{web.output.result}}"}}]}
    with mcp_app.client() as c:
        task_id = c.post("/v1/tasks", json={"goal": "time things", "plan": plan}).json()["task_id"]
        body = wait_status(c, task_id)
        assert body["status"] == "done", body
        results = {e["payload"]["node_id"]: e["payload"] for e in events(c, task_id) if e["type"] == "tool.result"}
        assert results["now"]["output"]["timezone"] == "Europe/Paris"
        assert results["web"]["output"] == {"result": "echo:over-http"}
        # The agent's call reached the server: its converted time (+09:00) is in the log.
        assert "+09:00" in json.dumps(events(c, task_id))
        report = c.get(f"/v1/tasks/{task_id}/artifacts/report.md").text
        assert "Tokyo" in report and "echo:over-http" in report


def test_killed_stdio_server_is_restarted_and_the_node_retries(mcp_app):
    ledger = mcp_app.ledger
    with mcp_app.client() as c:
        plan = {"nodes": [{"id": "slow", "tool": "slow_slow_echo", "args": {"value": "k1", "sleep_s": 3}}]}
        task_id = c.post("/v1/tasks", json={"goal": "slow echo", "plan": plan}).json()["task_id"]
        wait_for(lambda: _lines(ledger, "slow_echo start k1"), 60, "the call to start")
        _kill_slow_server(ledger)
        body = wait_status(c, task_id, ("done", "failed", "cancelled", "waiting_for_input"))
        # Short enough that pytest prints it whole: why it waits, and each event's gist.
        assert body["status"] == "done", [
            (e["type"], e["payload"].get("status") or e["payload"].get("error") or e["payload"].get("attempt"))
            for e in events(c, task_id)][4:12]
        types = [e["type"] for e in events(c, task_id)]
        assert "node.retry" in types
        assert len(_lines(ledger, "slow_echo start k1")) == 2 and len(_lines(ledger, "slow_echo end k1")) == 1

        # A side-effecting tool cut short is not run again on its own: the user is asked.
        plan = {"nodes": [{"id": "send", "tool": "slow_send_note", "args": {"to": "k2", "sleep_s": 3}}]}
        task_id = c.post("/v1/tasks", json={"goal": "send a note", "plan": plan}).json()["task_id"]
        wait_for(lambda: _lines(ledger, "send_note start k2"), 60, "the send to start")
        _kill_slow_server(ledger)
        body = wait_status(c, task_id, ("waiting_for_input", "done", "failed"))
        assert body["status"] == "waiting_for_input", body
        time.sleep(1)
        assert len(_lines(ledger, "send_note start k2")) == 1
        c.delete(f"/v1/tasks/{task_id}")


async def test_http_servers_are_under_the_egress_policy(monkeypatch):
    from tools.egress import EgressDenied
    from tools.mcp_client import McpPool, McpServerConfig, list_server_tools

    monkeypatch.delenv("TROUPE_EGRESS_ALLOW_HOSTS", raising=False)
    cfg = McpServerConfig(name="inside", url="http://127.0.0.1:9/mcp")
    with pytest.raises(EgressDenied):
        await list_server_tools(cfg)
    with pytest.raises(EgressDenied):
        await McpPool([cfg]).call("inside", "anything", {})
    with pytest.raises(ValueError, match="exactly one"):
        McpServerConfig(name="both", url="http://x/mcp", command="x")

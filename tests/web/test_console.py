"""The web console in real Chromium against the real app (Ray, Serve, SQLite): sign in,
submit a plan with parallel branches and watch it finish live, preview and download an
artifact, cancel a running task, and a viewer sees no actions. Every request stays on
127.0.0.1 and the pages log no errors. Full-page screenshots at 1280 and 390 px go to the
folder the test prints."""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.conftest import REPO_ROOT
from tests.web.conftest import _require_chromium
from tools.web.config import find_chromium

pytestmark = pytest.mark.ray

WAIT_MS = 90_000  # an upper bound for a loaded CI machine; tests wait for states, never time them
PARALLEL_PLAN = """\
nodes:
  - id: start
    tool: ledger_step
    args: {value: go}
  - id: left
    tool: ledger_step
    args: {value: L, sleep_s: 0.5}
    deps: [start]
  - id: right
    tool: ledger_step
    args: {value: R, sleep_s: 0.5}
    deps: [start]
  - id: notes
    tool: write_text
    args:
      name: notes.md
      text: "# Findings\\n\\nLeft said **{{left.output}}**, right said *{{right.output}}*.\\n\\n<script>window.pwned = 1</script><img src=x onerror=\\"window.pwned = 2\\">\\n\\n[bad link](javascript:alert(1))\\n"
    deps: [left, right]
  - id: data
    tool: write_text
    args: {name: data.json, text: '{"left": "{{left.output}}", "right": "{{right.output}}"}'}
    deps: [left, right]
"""


@pytest.fixture(scope="module")
def browser():
    _require_chromium()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=find_chromium(), headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots() -> Path:
    """The test artifacts' folder: $TROUPE_TEST_ARTIFACTS/console, else test-artifacts/console
    in the checkout (git ignores it), where CI and people find the screenshots after a run."""
    folder = Path(os.environ.get("TROUPE_TEST_ARTIFACTS") or REPO_ROOT / "test-artifacts") / "console"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def tenant(troupe_app):
    """A tenant of the console tests' own, so that other tests' tasks never show up."""
    name = f"console-{uuid.uuid4().hex[:8]}"
    return name, troupe_app.new_key(name, "member"), troupe_app.new_key(name, "viewer")


class Watched:
    """A browser context whose pages' requests and console errors are recorded."""

    def __init__(self, browser, base_url: str, width: int = 1280):
        self.context = browser.new_context(viewport={"width": width, "height": 900}, accept_downloads=True)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.base_url = base_url

    def check(self) -> None:
        away = [u for u in self.requests if urlsplit(u).scheme not in ("data", "blob")
                and urlsplit(u).hostname != "127.0.0.1"]
        assert not away, f"requests left 127.0.0.1: {away}"
        assert not self.errors, f"console errors: {self.errors}"
        self.context.close()


def sign_in(page: Page, base_url: str, key: str) -> None:
    page.goto(base_url + "/")
    expect(page).to_have_url(re.compile(r"/console/signin$"))
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/console/tasks$"))


def screenshot(page: Page, folder: Path, name: str) -> None:
    """Full-page screenshots of the current page at desktop and phone widths."""
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(folder / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def test_sign_in_run_a_parallel_plan_live_preview_and_download(browser, troupe_app, tenant, shots):
    _, member, _ = tenant
    w = Watched(browser, troupe_app.base_url)
    page = w.page
    page.goto(troupe_app.base_url + "/")
    screenshot(page, shots, "signin")
    page.get_by_label("API key").fill("trp_this-is-not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    w.errors.clear()  # the browser logs the 401 of the refused sign-in
    page.get_by_label("API key").fill(member)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/console/tasks$"))
    assert member not in str(w.context.cookies())

    page.get_by_role("link", name="New task", exact=True).first.click()
    page.get_by_label("Goal").fill("Ask left and right, then write down what they said")
    page.get_by_label("Plan").fill("nodes:\n  - id: x\n    tool: no_such_tool\n")
    page.get_by_role("button", name="Submit").click()
    expect(page.get_by_role("alert")).to_contain_text("no_such_tool")
    expect(page.locator("#plan-check li[data-node=x].fault")).to_contain_text("line 2")  # on the node at fault
    screenshot(page, shots, "new-task-errors")
    w.errors.clear()  # the 422 of the refused form
    page.get_by_label("Plan").fill(PARALLEL_PLAN)
    page.get_by_label("Priority").select_option("high")
    page.get_by_role("button", name="Submit").click()
    expect(page).to_have_url(re.compile(r"/console/tasks/[0-9a-f-]{36}$"))
    task_id = page.url.rsplit("/", 1)[1]
    page.evaluate("window.__sameDocument = true")

    nodes = page.locator("#node-list li")
    expect(nodes).to_have_count(5, timeout=WAIT_MS)
    expect(page.locator("#node-list li[data-status=done]")).to_have_count(5, timeout=WAIT_MS)
    expect(page.locator("#dag g.node[data-status=done]")).to_have_count(5)
    expect(page.locator("#task-status")).to_have_text("done", timeout=WAIT_MS)
    assert page.evaluate("window.__sameDocument") is True  # watched live, never reloaded
    expect(page.locator("#timeline li[data-type='tool.result']")).to_have_count(5)

    page.get_by_label("Show").select_option(label="tool calls")
    visible = page.locator("#timeline li:visible")
    assert visible.count() == 10
    assert all(t.startswith("tool.") for t in visible.evaluate_all("els => els.map(e => e.dataset.type)"))
    page.get_by_label("Show").select_option(label="every event")

    # Markdown is rendered, and what the artifact says in HTML stays text.
    page.get_by_role("button", name="Preview notes.md").click()
    preview = page.locator("#preview-content")
    expect(preview.locator("h1")).to_have_text("Findings")
    expect(preview.locator("strong")).to_have_text("L")
    expect(preview).to_contain_text("<script>window.pwned = 1</script>")
    assert preview.locator("script, img, a[href^=javascript]").count() == 0
    assert page.evaluate("window.pwned") is None
    page.get_by_role("button", name="Preview data.json").click()
    expect(preview.locator("pre")).to_contain_text('"left": "L"')
    screenshot(page, shots, "task")

    row = page.locator("tr[data-artifact='data.json']")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download data.json").click()
    body = Path(download.value.path()).read_bytes()
    with troupe_app.client(member) as c:
        manifest = c.get(f"/v1/tasks/{task_id}/artifacts/manifest.json").json()
    listed = {a["name"]: a["sha256"] for a in manifest["artifacts"]}
    assert hashlib.sha256(body).hexdigest() == row.get_attribute("data-sha256") == listed["data.json"]

    # Replay: the slider steps through the log; the page shows the state after that event.
    slider = page.get_by_label(re.compile("^Step through the log"))
    last = int(page.locator("#timeline li").last.get_attribute("data-seq"))
    expect(slider).to_have_attribute("max", str(last))
    slider.focus()
    page.keyboard.press("Home")
    expect(page.locator("#replay-pos")).to_contain_text(f"Event 1 of {last} · task.submitted")
    expect(page.locator("#task-status")).to_have_text("queued")
    expect(page.locator("#node-list li")).to_have_count(0)
    expect(page.locator("#timeline li:visible")).to_have_count(1)
    expect(page.get_by_role("button", name="Send")).to_be_hidden()  # no acting on the past
    start_done = int(page.locator("#timeline li[data-type='node.done']").first.get_attribute("data-seq"))
    slider.evaluate("(s, v) => { s.value = v; s.dispatchEvent(new Event('input')); }", str(start_done))
    expect(page.locator("#node-list li[data-node=start]")).to_have_attribute("data-status", "done")
    expect(page.locator("#node-list li[data-status=done]")).to_have_count(1)
    expect(page.locator("#task-status")).to_have_text("executing")
    expect(page.locator("#timeline li:visible")).to_have_count(start_done)
    expect(page.locator("#artifacts")).to_contain_text("None yet.")
    screenshot(page, shots, "task-replay")
    page.get_by_role("button", name="Back to the end").click()
    expect(page.locator("#node-list li[data-status=done]")).to_have_count(5)
    expect(page.locator("#task-status")).to_have_text("done")
    expect(page.locator("#timeline li:visible")).to_have_count(last)

    page.get_by_role("link", name="Tasks", exact=True).click()
    expect(page.locator(f"tr[data-task='{task_id}'] .status")).to_have_text("done")
    screenshot(page, shots, "tasks")
    page.get_by_label("Search goals").fill("LEFT AND RIGHT")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator(f"tr[data-task='{task_id}']")).to_have_count(1)
    page.get_by_label("Search goals").fill("a goal nobody wrote")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#task-rows")).to_contain_text("No task's goal holds “a goal nobody wrote”")
    w.check()


def test_cancel_a_running_task(browser, troupe_app, tenant, shots):
    _, member, _ = tenant
    with troupe_app.client(member) as c:
        r = c.post("/v1/tasks", json={"goal": "a slow step to cancel", "plan": {"nodes": [
            {"id": "slow", "tool": "ledger_step", "args": {"value": "x", "sleep_s": 120}}]}})
        task_id = r.json()["task_id"]
    w = Watched(browser, troupe_app.base_url)
    page = w.page
    sign_in(page, troupe_app.base_url, member)
    page.goto(f"{troupe_app.base_url}/console/tasks/{task_id}")
    expect(page.locator("#node-list li[data-node=slow]")).to_have_attribute("data-status", "running", timeout=WAIT_MS)
    expect(page.get_by_label("Interrupt: revise the running plan now", exact=False)).to_be_visible()
    screenshot(page, shots, "task-running")
    cancel = page.get_by_role("button", name="Cancel task")
    cancel.click()
    page.get_by_role("button", name="Confirm: cancel this task").click()
    expect(page.locator("#task-status")).to_have_text("cancelled", timeout=WAIT_MS)
    expect(cancel).to_be_hidden()
    w.check()


def test_a_viewer_sees_no_action_buttons_and_the_api_refuses_its_actions(browser, troupe_app, tenant, shots):
    _, member, viewer = tenant
    w = Watched(browser, troupe_app.base_url, width=390)
    page = w.page
    sign_in(page, troupe_app.base_url, viewer)
    expect(page.get_by_role("link", name="New task")).to_have_count(0)
    page.evaluate("window.__sameDocument = true")
    with troupe_app.client(member) as c:
        task_id = c.post("/v1/tasks", json={"goal": "seen by a viewer", "plan": {"nodes": [
            {"id": "a", "tool": "ledger_step", "args": {"value": "x"}}]}}).json()["task_id"]
    # The list is live: the new task shows up and finishes without a reload.
    expect(page.locator(f"tr[data-task='{task_id}'] .status")).to_have_text("done", timeout=WAIT_MS)
    assert page.evaluate("window.__sameDocument") is True
    page.goto(f"{troupe_app.base_url}/console/tasks/{task_id}")
    expect(page.locator("#task-status")).to_have_text("done", timeout=WAIT_MS)
    expect(page.get_by_role("button", name=re.compile("Cancel|Retry|Skip|Send|Raise budget"))).to_have_count(0)
    status = page.evaluate("""async (id) => (await fetch(`/v1/tasks/${id}`, {method: 'DELETE',
        headers: {'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content}})).status""", task_id)
    assert status == 403
    w.errors.clear()  # the browser logs that refusal
    screenshot(page, shots, "task-viewer")
    w.check()


def test_an_admin_sees_the_system_page(browser, troupe_app, shots):
    w = Watched(browser, troupe_app.base_url)
    page = w.page
    sign_in(page, troupe_app.base_url, troupe_app.admin_key)
    page.get_by_role("link", name="System").click()
    expect(page.get_by_role("heading", name="System", level=1)).to_be_visible()
    expect(page.get_by_role("heading", name="store")).to_be_visible()
    expect(page.get_by_role("heading", name="deployments")).to_be_visible()
    expect(page.get_by_role("heading", name="Queue by tenant and priority")).to_be_visible()
    # The test app configures no model: the router answers, and the page says so.
    expect(page.locator("section[aria-labelledby=models-h]")).to_contain_text("No model groups are configured")
    screenshot(page, shots, "system")
    w.check()


def test_an_admin_lists_every_tenant_and_acts_for_one(browser, troupe_app, tenant, shots):
    name, member, _ = tenant
    with troupe_app.client(member) as c:
        task_id = c.post("/v1/tasks", json={"goal": "a task an admin looks into", "plan": {"nodes": [
            {"id": "a", "tool": "write_text", "args": {"name": "a.txt", "text": "from the tenant"}}]}}
                         ).json()["task_id"]
    w = Watched(browser, troupe_app.base_url)
    page = w.page
    sign_in(page, troupe_app.base_url, troupe_app.admin_key)
    row = page.locator(f"tr[data-task='{task_id}']")
    expect(row).to_contain_text(name, timeout=WAIT_MS)  # every tenant's tasks, with their tenant
    page.get_by_label("Tenant").fill(name)
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#task-rows tr[data-task]").first).to_be_visible()
    assert set(page.locator("#task-rows tr[data-task] td:nth-child(3)").all_inner_texts()) == {name}
    expect(row).to_be_visible()
    screenshot(page, shots, "tasks-admin")
    row.get_by_role("link").click()
    expect(page.get_by_role("heading", name=f"A task of tenant {name}")).to_be_visible()
    screenshot(page, shots, "task-other-tenant")
    page.get_by_role("button", name=f"Act for {name} and open the task").click()
    expect(page.locator("#task-status")).to_have_text("done", timeout=WAIT_MS)
    expect(page.locator("#acting")).to_have_text(f"acting for {name}")
    with page.expect_download() as download:  # the session's own API calls act for the tenant too
        page.get_by_role("link", name="Download a.txt").click()
    assert Path(download.value.path()).read_text() == "from the tenant"
    page.get_by_role("button", name="Back to", exact=False).click()
    expect(page.locator("#acting")).to_have_count(0)
    status = page.evaluate("async (id) => (await fetch(`/v1/tasks/${id}`)).status", task_id)
    assert status == 404
    w.errors.clear()  # the browser logs that 404
    w.check()


def test_raise_the_budget_of_a_task_paused_on_it(browser, troupe_app, tenant, shots):
    """An agent node with a budget of no model calls pauses before its first call; raising
    the budget from the page resumes it (what the model then does is not this test's concern)."""
    _, member, _ = tenant
    with troupe_app.client(member) as c:
        task_id = c.post("/v1/tasks", json={
            "goal": "an agent with no model budget", "budget": {"max_cost_usd": 1.0, "max_llm_calls": 0},
            "plan": {"nodes": [{"id": "think", "kind": "agent", "instructions": "say hi", "tools": ["ledger_step"]}]},
        }).json()["task_id"]
    w = Watched(browser, troupe_app.base_url)
    page = w.page
    sign_in(page, troupe_app.base_url, member)
    page.goto(f"{troupe_app.base_url}/console/tasks/{task_id}")
    expect(page.locator("#task-status")).to_have_text("waiting for input", timeout=WAIT_MS)
    expect(page.locator("#reply-box")).to_contain_text("budget reached")
    screenshot(page, shots, "task-waiting-budget")
    page.get_by_label("Model calls").fill("3")
    page.get_by_role("button", name="Raise budget").click()
    expect(page.locator("#action-result")).to_have_text("Raise budget: sent.")
    expect(page.locator("#timeline li[data-type='budget.raised']")).to_have_count(1, timeout=WAIT_MS)
    # Resumed: the task goes back to executing after the raise, live on the timeline.
    page.wait_for_function("""() => {
        const raised = document.querySelector("#timeline li[data-type='budget.raised']");
        return [...document.querySelectorAll("#timeline li[data-type='task.status']")].some(
            (li) => +li.dataset.seq > +raised.dataset.seq && li.textContent.includes("executing"));
    }""", timeout=WAIT_MS)
    with troupe_app.client(member) as c:
        assert c.get(f"/v1/tasks/{task_id}").json()["budget"]["max_llm_calls"] == 3
    w.check()



def test_answer_a_task_waiting_on_a_side_effecting_call_in_doubt(browser, troupe_app, tenant, shots):
    """A side-effecting call that times out is in doubt: the page shows the call and asks.
    Retry tells the task to run it again (its first run still going, it is in doubt again, so
    the task asks again); Skip goes on without it and the task finishes."""
    _, member, _ = tenant
    with troupe_app.client(member) as c:
        task_id = c.post("/v1/tasks", json={"goal": "send a message whose outcome gets lost", "plan": {"nodes": [
            {"id": "send", "tool": "send_once", "args": {"to": "bob", "sleep_s": 60}, "timeout_s": 4},
            {"id": "after", "tool": "ledger_step", "args": {"value": "x"}, "deps": ["send"]}]}}).json()["task_id"]
    w = Watched(browser, troupe_app.base_url)
    page = w.page
    sign_in(page, troupe_app.base_url, member)
    page.goto(f"{troupe_app.base_url}/console/tasks/{task_id}")
    expect(page.locator("#task-status")).to_have_text("waiting for input", timeout=WAIT_MS)
    doubt = page.locator("#in-doubt li[data-node=send]")
    expect(doubt).to_have_attribute("data-runs", "1")
    expect(doubt).to_contain_text("send_once")
    expect(doubt).to_contain_text('"to":"bob"')
    expect(page.locator("#reply-box")).to_contain_text("Reply 'retry'")
    screenshot(page, shots, "task-waiting-side-effects")

    page.get_by_role("button", name="Retry", exact=True).click()
    expect(page.locator("#action-result")).to_have_text("Reply retry: sent.")
    expect(page.locator("#timeline li[data-type='node.retry']")).to_have_count(1, timeout=WAIT_MS)
    page.wait_for_function("""() => {
        const retry = document.querySelector("#timeline li[data-type='node.retry']");
        return [...document.querySelectorAll("#timeline li[data-type='task.status']")].some(
            (li) => +li.dataset.seq > +retry.dataset.seq && li.textContent.includes("waiting_for_input"));
    }""", timeout=WAIT_MS)
    expect(page.locator("#task-status")).to_have_text("waiting for input", timeout=WAIT_MS)
    expect(page.locator("#in-doubt li[data-node=send]")).to_contain_text("send_once")

    page.get_by_role("button", name="Skip", exact=True).click()
    expect(page.locator("#task-status")).to_have_text("done", timeout=WAIT_MS)
    expect(page.locator("#reply-box")).to_be_hidden()
    expect(page.locator("#node-list li[data-node=send]")).to_have_attribute("data-status", "done")
    expect(page.locator("#node-list li[data-node=after]")).to_have_attribute("data-status", "done")
    expect(page.locator("#timeline li[data-type='message.received']")).to_have_count(2)
    with troupe_app.client(member) as c:
        events = c.get(f"/v1/tasks/{task_id}/events", params={"stream": "false"}).json()
    assert [e["payload"]["text"] for e in events if e["type"] == "message.received"] == ["retry", "skip"]
    assert any(e["type"] == "node.done" and e["payload"].get("skipped") for e in events)
    w.check()


def test_new_task_with_a_dropped_attachment_and_an_acceptance_test(browser, troupe_app, tenant, shots):
    _, member, _ = tenant
    w = Watched(browser, troupe_app.base_url)
    page = w.page
    sign_in(page, troupe_app.base_url, member)
    page.get_by_role("link", name="New task", exact=True).first.click()
    # The drop zone's listener comes with a deferred script: a drop before it ran is lost.
    page.wait_for_load_state("load")
    page.get_by_label("Goal").fill("Read the dropped notes")
    page.get_by_label("Plan").fill("nodes:\n  - id: a\n    tool: ledger_step\n    args: {value: x}\n")
    page.get_by_label("Acceptance tests").fill("- id: all\n  check_type: all_nodes_done\n")
    dropped = page.evaluate_handle("""() => {
        const dt = new DataTransfer();
        dt.items.add(new File(["The pager rotates on Tuesdays."], "oncall.txt", {type: "text/plain"}));
        return dt;
    }""")
    page.locator("#drop").dispatch_event("drop", {"dataTransfer": dropped})
    expect(page.locator("#file-list li[data-file='oncall.txt']")).to_contain_text("30 bytes")
    screenshot(page, shots, "new-task-attachment")
    page.get_by_role("button", name="Submit").click()
    expect(page).to_have_url(re.compile(r"/console/tasks/[0-9a-f-]{36}$"))
    task_id = page.url.rsplit("/", 1)[1]
    with troupe_app.client(member) as c:
        task = c.get(f"/v1/tasks/{task_id}").json()
        assert task["attachments"] == ["attachments/oncall.txt"]
        assert [t["id"] for t in task["acceptance_tests"]] == ["all"]
        c.delete(f"/v1/tasks/{task_id}")  # its ingest is not this test's concern
    w.check()


def test_verdicts_show_each_citation_with_its_source(browser, troupe_app, tenant, shots):
    _, member, _ = tenant
    fact = "The Eiffel Tower is 330 metres tall and stands in Paris."
    plan = {"nodes": [
        {"id": "fetch", "tool": "source_page", "args": {"url": "http://127.0.0.1/tower", "text": fact}},
        {"id": "write", "tool": "write_text", "deps": ["fetch"], "args": {"name": "summary.md", "text": (
            "# Tower\n\nThe Eiffel Tower is 330 metres tall [1].\n\n[1] Tower facts — http://127.0.0.1/tower\n")}}]}
    tests = [{"id": "cited", "check_type": "citations_supported", "threshold": 0.5,
              "params": {"artifact": "summary.md", "sources_node": "fetch"}}]
    with troupe_app.client(member) as c:
        task_id = c.post("/v1/tasks", json={"goal": "cite the tower's height", "plan": plan,
                                            "acceptance_tests": tests}).json()["task_id"]
    w = Watched(browser, troupe_app.base_url)
    page = w.page
    sign_in(page, troupe_app.base_url, member)
    page.goto(f"{troupe_app.base_url}/console/tasks/{task_id}")
    citation = page.locator("#verdicts li[data-test=cited] .citations li")
    expect(citation).to_have_count(1, timeout=WAIT_MS)
    expect(citation).to_contain_text("[1] supported")
    expect(citation).to_contain_text("The Eiffel Tower is 330 metres tall")
    expect(citation).to_contain_text("Source: Tower facts — http://127.0.0.1/tower")
    expect(citation.locator("blockquote")).to_contain_text("330 metres")
    expect(page.locator("#message-interrupt-row")).to_be_hidden()  # an ended task is followed up, not interrupted
    screenshot(page, shots, "task-citations")
    w.check()

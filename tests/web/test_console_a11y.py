"""axe-core (from npm, pinned by package-lock.json, installed by `make install`) checks every
console page in real Chromium; nothing it rates serious or critical may remain. The script
goes in as an init script, so the pages keep their own Content-Security-Policy."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import REPO_ROOT
from tests.web.test_console import WAIT_MS, Watched, browser, shots, sign_in, tenant  # noqa: F401 (fixtures)

pytestmark = pytest.mark.ray

AXE = REPO_ROOT / "node_modules" / "axe-core" / "axe.min.js"
CODE = 'import os\n\n\ndef home() -> str:\n    """Where Troupe keeps its state."""\n    return os.environ.get("TROUPE_HOME", ".troupe")  # 42\n'
PDF = ("%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj 2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj "
       "3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 100]>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")
RULES = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]


@pytest.fixture(scope="module")
def axe_source() -> str:
    if not AXE.is_file():
        pytest.fail(f"{AXE} is missing: run `make install` (it runs `npm ci` for axe-core)")
    return AXE.read_text()


def serious(page: Page, where: str) -> list[str]:
    """What axe rates serious or critical on the page as it is now, one line per node."""
    result = page.evaluate("async (rules) => await axe.run(document, {runOnly: {type: 'tag', values: rules}})",
                           RULES)
    return [f"{where}: {v['id']} ({v['impact']}): {v['help']} at {n['target']}"
            for v in result["violations"] if v["impact"] in ("serious", "critical") for n in v["nodes"]]


@pytest.mark.timeout(600)  # seven pages under axe on a loaded 2-core machine
def test_every_console_page_passes_axe(browser, troupe_app, tenant, axe_source):
    _, member, _ = tenant
    with troupe_app.client(member) as c:
        task_id = c.post("/v1/tasks", json={"goal": "write four files for the accessibility check", "plan": {"nodes": [
            {"id": "notes", "tool": "write_text",
             "args": {"name": "notes.md", "text": "# Notes\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"}},
            {"id": "data", "tool": "write_text", "args": {"name": "data.csv", "text": "city,people\nOslo,700000\n"}},
            {"id": "code", "tool": "write_text", "args": {"name": "tool.py", "text": CODE}},
            {"id": "pdf", "tool": "write_text", "args": {"name": "r.pdf", "text": PDF}}]},
        }).json()["task_id"]
    found: list[str] = []
    member_pages = ["/console/tasks", "/console/new", f"/console/tasks/{task_id}", "/console/collections"]
    for key, pages in ((member, member_pages),
                       (troupe_app.admin_key, ["/console/system", "/console/tasks",
                                               f"/console/tasks/{task_id}"])):  # every tenant's; act for one
        w = Watched(browser, troupe_app.base_url)
        w.context.add_init_script(script=axe_source)
        page = w.page
        if key == member:
            page.goto(troupe_app.base_url + "/console/signin")
            found += serious(page, "sign-in")
        sign_in(page, troupe_app.base_url, key)
        for path in pages:
            page.goto(troupe_app.base_url + path)
            if path.endswith(task_id) and key != member:
                expect(page.get_by_role("button", name="Act for", exact=False)).to_be_visible()
            elif path.endswith(task_id):
                expect(page.locator("#task-status")).to_have_text("done", timeout=WAIT_MS)
                expect(page.locator("#stream-state")).to_contain_text("ended", timeout=WAIT_MS)
                page.get_by_role("button", name="Preview tool.py").click()
                expect(page.locator("#preview-content .highlight .k").first).to_have_text("def")
                found += serious(page, "code preview")
                page.get_by_role("button", name="Preview r.pdf").click()
                pdf = page.locator("#preview-content object.pdf")
                expect(pdf).to_have_attribute("type", "application/pdf")
                served = page.evaluate("async (u) => { const r = await fetch(u); return [r.status, "
                                       "r.headers.get('content-type')]; }", pdf.get_attribute("data"))
                assert served == [200, "application/pdf"]
                page.get_by_role("button", name="Preview notes.md").click()
                expect(page.locator("#preview-content h1")).to_have_text("Notes")
                page.locator("#timeline li details").first.evaluate("(d) => { d.open = true; }")
            found += serious(page, path)
        if key == member:  # the New task form with its errors shown
            page.goto(troupe_app.base_url + "/console/new")
            page.get_by_label("Goal").fill("a plan with a mistake")
            page.get_by_label("Plan").fill("nodes:\n  - id: x\n    tool: no_such_tool\n")
            page.get_by_role("button", name="Submit").click()
            expect(page.get_by_role("alert")).to_be_visible()
            w.errors.clear()  # the 422 of the refused form
            found += serious(page, "new task with errors")
        w.check()
    assert not found, "axe found serious or critical problems:\n" + "\n".join(found)

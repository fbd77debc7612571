"""What the browser saw, on the task page: each page step of the web tools saves a screenshot,
and the timeline shows it with the page's URL and title while the task runs. The screenshots
are served to the task's tenant only, and only those the log names."""

from __future__ import annotations

import uuid

import pytest
from playwright.sync_api import expect

from tests.web.test_console import WAIT_MS, Watched, browser, screenshot, shots, sign_in, tenant  # noqa: F401 (fixtures)

pytestmark = pytest.mark.ray


def test_each_browser_step_shows_its_screenshot_with_url_and_title(browser, troupe_app, tenant, shots, site):
    _, member, _ = tenant
    with troupe_app.client(member) as c:
        task_id = c.post("/v1/tasks", json={"goal": "read two documentation pages", "plan": {"nodes": [
            {"id": "open", "tool": "browse", "args": {"url": f"{site.url}/docs/p1", "settle_s": 0}},
            {"id": "follow", "tool": "click", "args": {"selector": "a[href$='/docs/p3']", "settle_s": 0},
             "deps": ["open"]}]}}).json()["task_id"]
    w = Watched(browser, troupe_app.base_url)
    page = w.page
    sign_in(page, troupe_app.base_url, member)
    page.goto(f"{troupe_app.base_url}/console/tasks/{task_id}")
    expect(page.locator("#task-status")).to_have_text("done", timeout=WAIT_MS)
    shots_on_page = page.locator("#timeline li[data-type='tool.result'] figure.shot")
    expect(shots_on_page).to_have_count(2)
    for i, (title, path) in enumerate([("Doc page 1", "/docs/p1"), ("Doc page 3", "/docs/p3")]):
        fig = shots_on_page.nth(i)
        expect(fig.locator("figcaption")).to_contain_text(title)
        expect(fig.locator("figcaption")).to_contain_text(f"{site.url}{path}")
        img = fig.locator("img")
        img.scroll_into_view_if_needed()
        expect(img).to_have_attribute("alt", f"What the browser saw: {title}")
        page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=img.element_handle(),
                               timeout=WAIT_MS)
    screenshot(page, shots, "task-browser-steps")
    src = shots_on_page.first.locator("img").get_attribute("src")

    # Only what the log names is served, and only to the task's tenant.
    fetch = "async (u) => (await fetch(u)).status"
    assert page.evaluate(fetch, src) == 200
    assert page.evaluate(fetch, src.replace("/shots/web/", "/shots/web/x")) == 404
    assert page.evaluate(fetch, src.rsplit("/shots/", 1)[0] + "/shots/..%2F..%2Fadmin.key") == 404
    w.errors.clear()  # the browser logs the refusals
    w.check()
    other = Watched(browser, troupe_app.base_url)
    sign_in(other.page, troupe_app.base_url, troupe_app.new_key(f"other-{uuid.uuid4().hex[:6]}", "member"))
    assert other.page.evaluate(fetch, src) == 404
    other.errors.clear()
    other.check()

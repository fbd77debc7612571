"""The console's Collections page in real Chromium: upload a folder, follow the ingest job
live, search it and see the passage with its source. Apart from tests/web/test_console.py
because the first ingest of a session loads the embedding model (a minute or more here)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.web.test_console import WAIT_MS, Watched, browser, screenshot, shots, sign_in, tenant  # noqa: F401 (fixtures)

pytestmark = pytest.mark.ray


@pytest.mark.timeout(600)  # the wait below must end before pytest's own, so a slow ingest fails as itself
def test_ingest_a_folder_and_search_it(browser, troupe_app, tenant, shots, tmp_path):
    _, member, _ = tenant
    folder = tmp_path / "handbook"
    (folder / "ops").mkdir(parents=True)
    (folder / "ops" / "oncall.md").write_text(
        "# On-call\n\nThe pager rotation for the Zephyr cluster changes every Tuesday at 09:00.\n")
    (folder / "welcome.txt").write_text("Welcome to the team. Lunch is served on the third floor.\n")
    w = Watched(browser, troupe_app.base_url)
    page = w.page
    sign_in(page, troupe_app.base_url, member)
    page.get_by_role("link", name="Collections").click()
    page.wait_for_load_state("load")  # the page's deferred script attaches the upload handler
    page.get_by_label("Collection").first.fill("handbook")
    page.get_by_label("Or a folder").set_input_files(folder)
    page.get_by_role("button", name="Upload and ingest").click()
    expect(page.locator("#job")).to_have_attribute("data-status", "done", timeout=480_000)  # the first ingest loads the embedder
    expect(page.locator("#job-facts")).to_contain_text("2 of 2 settled")
    page.locator("#search-collection").fill("handbook")
    page.get_by_label("Question or keywords").fill("When does the Zephyr pager rotation change?")
    page.get_by_role("button", name="Search").click()
    first = page.locator("#passages li").first
    expect(first).to_contain_text("every Tuesday", timeout=WAIT_MS)
    expect(first).to_have_attribute("data-source", "oncall.md")
    screenshot(page, shots, "collections")
    w.check()

"""browse, sessions, forms, extraction and screenshots against the loopback test site, in real Chromium."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

import tools.web.tools  # noqa: F401  (registers the tools)
from tests.web.site import HUGE_BYTES
from tools.registry import ToolError, default_registry


async def call(ctx, name: str, **args):
    return await default_registry.get(name)(ctx, args)


async def test_browse_returns_markdown_links_and_evidence(make_ctx, site):
    page = await call(make_ctx(), "browse", url=f"{site.url}/docs/p1", settle_s=0)
    assert page["title"] == "Doc page 1" and page["status"] == 200 and page["complete"]
    assert page["text"].startswith("# Page 1\n\nThis is documentation page number 1")
    assert f"{site.url}/docs/p3" in [link["url"] for link in page["links"]]
    ev = page["evidence"]
    assert ev["url"] == f"{site.url}/docs/p1" and ev["title"] == "Doc page 1"
    assert ev["content_hash"].startswith("sha256:") and ev["fetched_at"].endswith("+00:00")


async def test_javascript_rendered_content_is_read(make_ctx, site):
    page = await call(make_ctx(), "browse", url=f"{site.url}/js")
    assert "- Widget **$9.5**" in page["text"] and "Doohickey" in page["text"]
    assert "loading" not in page["text"]


async def test_extract_fields_by_css_and_xpath_with_types(make_ctx, site):
    ctx = make_ctx()
    out = await call(ctx, "extract", url=f"{site.url}/js", fields={
        "heading": "//h1",
        "items": {"selector": "li.item", "many": True,
                  "fields": {"name": ".name", "price": {"selector": ".price", "type": "number"}}},
        "prices": {"selector": "xpath=//b[@class='price']", "many": True, "type": "integer"},
        "missing": "#nope",
    })
    assert out["data"] == {
        "heading": "Catalog",
        "items": [{"name": "Widget", "price": 9.5}, {"name": "Gadget", "price": 1200.0},
                  {"name": "Doohickey", "price": 3.0}],
        "prices": [9, 1200, 3],
        "missing": None,
    }
    assert out["evidence"]["url"] == f"{site.url}/js"
    # Without a url it reads the session's current page.
    assert (await call(ctx, "extract", fields={"first": "li.item .name"}))["data"] == {"first": "Widget"}
    with pytest.raises(ToolError, match="required field 'table'"):
        await call(ctx, "extract", fields={"table": {"selector": "table td", "required": True}})
    with pytest.raises(ToolError, match="invalid selector"):
        await call(ctx, "extract", fields={"bad": "li[["})


async def test_form_is_filled_and_submitted_within_one_session(make_ctx, site):
    ctx = make_ctx()
    await call(ctx, "browse", url=f"{site.url}/setcookie?v=ada-session", settle_s=0)
    form = await call(ctx, "browse", url=f"{site.url}/form", settle_s=0)
    assert '[input type=text name="name" id="name" label="Name"]' in form["text"]
    filled = await call(ctx, "fill", selector="#name", value="Ada Lovelace")
    assert "Ada" not in str(filled)  # values (maybe passwords) are never echoed
    done = await call(ctx, "submit", selector="form")
    assert done["title"] == "Thanks" and "Thanks Ada Lovelace" in done["text"]
    assert "Cookie: ada-session" in done["text"]  # the session kept its cookie across calls
    assert ("POST", "/form") in site.requests


async def test_click_follows_a_link_in_the_session(make_ctx, site):
    ctx = make_ctx()
    await call(ctx, "browse", url=f"{site.url}/docs/p0", settle_s=0)
    page = await call(ctx, "click", selector="text=child 1", settle_s=0)
    assert page["url"] == f"{site.url}/docs/p1" and page["title"] == "Doc page 1"


async def test_click_without_a_page_says_to_browse_first(make_ctx):
    with pytest.raises(ToolError, match="call browse\\(url\\) first"):
        await call(make_ctx(), "click", selector="a")


async def test_sixteen_concurrent_calls_across_four_sessions_keep_cookies_apart(make_ctx, site):
    ctxs = {name: make_ctx() for name in "ABCD"}
    await asyncio.gather(*(call(c, "browse", url=f"{site.url}/setcookie?v={n}", settle_s=0)
                           for n, c in ctxs.items()))
    order = [n for n in "ABCD" for _ in range(4)]
    pages = await asyncio.gather(*(call(ctxs[n], "browse", url=f"{site.url}/whoami", settle_s=0) for n in order))
    assert [p["text"] for p in pages] == order
    assert (await call(make_ctx(), "browse", url=f"{site.url}/whoami", settle_s=0))["text"] == "nobody"


async def test_slow_page_times_out_cleanly_and_the_session_recovers(make_ctx, site):
    ctx = make_ctx()
    started = time.monotonic()
    with pytest.raises(ToolError, match="timed out after 1.5s") as err:
        await call(ctx, "browse", url=f"{site.url}/slow?s=20", timeout_s=1.5)
    assert err.value.retryable and time.monotonic() - started < 15  # the page takes 20 s
    assert (await call(ctx, "browse", url=f"{site.url}/whoami", settle_s=0))["text"] == "nobody"


async def test_huge_page_is_capped(make_ctx, site, pool):
    page = await call(make_ctx(), "browse", url=f"{site.url}/huge", max_chars=5000)
    assert page["truncated"] and not page["complete"]
    assert page["text"].startswith("# Huge page") and len(page["text"]) <= 5000
    cap = pool.config.max_page_bytes
    assert cap <= page["bytes"] < 4 * cap
    # Loading stopped: the server never got to send it all (how much got into socket
    # buffers first depends on how busy the machine is).
    assert site.huge_sent < HUGE_BYTES


async def test_screenshots_become_workspace_artifacts(make_ctx, site, tmp_path):
    ctx = make_ctx()
    page = await call(ctx, "browse", url=f"{site.url}/docs/p2", settle_s=0, screenshot=True)
    shot = page["evidence"]["screenshot"]
    assert (tmp_path / shot).read_bytes().startswith(b"\x89PNG")
    again = await call(ctx, "screenshot", full_page=True)
    assert again["name"] != shot and (tmp_path / again["name"]).read_bytes().startswith(b"\x89PNG")
    assert again["url"] == f"{site.url}/docs/p2" and again["bytes"] > 1000


async def test_downloads_are_blocked(make_ctx, site, pool):
    with pytest.raises(ToolError, match="downloads are blocked|ERR_ABORTED"):
        await call(make_ctx(), "browse", url=f"{site.url}/download", settle_s=0)


async def test_unreachable_server_is_a_retryable_error(make_ctx):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ToolError, match=f"could not load http://127.0.0.1:{port}/: could not connect") as err:
        await call(make_ctx(), "browse", url=f"http://127.0.0.1:{port}/", settle_s=0)
    assert err.value.retryable

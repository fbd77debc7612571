"""The browser dies while an operation runs: the outcome is unknown, so a read is run again
and a click or a submit (side effects) goes to the user instead of running twice."""

from __future__ import annotations

import asyncio
import os
import signal

import psutil
import pytest

from tests.web.conftest import _require_chromium, pool_config, stub_resolver
from tools.egress import EgressPolicy
from tools.executor import execute_call
from tools.registry import load_registry
from tools.web.errors import BrowserLost, PageError
from troupe.tool_calls import ToolCall


@pytest.fixture
async def pool():
    from tools.web.browser_pool import BrowserPool

    _require_chromium()
    p = await BrowserPool(pool_config(), egress=EgressPolicy(allow_hosts=["127.0.0.1"]),
                          resolver=stub_resolver).start()
    yield p
    await p.close()


async def _kill_when_requested(pool, site, path):
    for _ in range(200):
        if any(p.startswith(path) for p in site.paths()):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"{path} was never requested")
    os.kill(pool.browser_pids()[0], signal.SIGKILL)


async def test_a_click_cut_off_by_the_browser_dying_is_lost_not_failed(pool, site):
    await pool.browse("t", f"{site.url}/link?to=/slow?s=10", settle_s=0, tenant="test")
    click = asyncio.create_task(pool.click("t", "#go", timeout_s=20, settle_s=0, tenant="test"))
    await _kill_when_requested(pool, site, "/slow?s=10")
    with pytest.raises(BrowserLost, match="the browser was lost during click"):
        await click


def _call(tool, args, side_effects):
    return ToolCall(tool=tool, args=args, task_id="t", tenant="test", node_id="n", idempotency_key="t:n:1",
                    side_effects=side_effects)


@pytest.mark.parametrize("tool,side_effects", [("click", True), ("browse", False)])
async def test_a_lost_click_is_in_doubt_and_a_lost_read_is_retried(pool, site, tmp_path, tool, side_effects):
    registry = load_registry(["tools.web.tools"])
    await pool.browse("t", f"{site.url}/link?to=/slow?s=12", settle_s=0, tenant="test")
    args = {"selector": "#go", "timeout_s": 20} if tool == "click" else {"url": f"{site.url}/slow?s=11"}
    run = asyncio.create_task(execute_call(registry, _call(tool, args, side_effects), tmp_path,
                                           extras={"browser": pool}))
    await asyncio.sleep(0.5)
    assert not run.done(), run.result()
    await _kill_when_requested(pool, site, "/slow?s=11" if tool == "browse" else "/slow?s=12")
    outcome = await run
    assert not outcome.ok and "the browser was lost during" in outcome.error
    if side_effects:
        assert outcome.in_doubt  # not retried on its own: the user says whether it ran
    else:
        assert outcome.retryable and not outcome.in_doubt


async def test_a_click_cut_off_by_its_renderer_crashing_is_lost_and_a_read_is_retryable(pool, site):
    """Only the page's renderer dies (the browser lives on): a click's outcome is unknown all the same."""
    async def crash_when_requested(path):
        for _ in range(200):
            if any(p.startswith(path) for p in site.paths()):
                break
            await asyncio.sleep(0.05)
        # CDP's Page.crash refuses while a navigation is pending: kill the renderers themselves.
        renderers = [p for p in psutil.Process(pool.browser_pids()[0]).children(recursive=True)
                     if "--type=renderer" in " ".join(p.cmdline())]
        assert renderers
        for p in renderers:
            p.kill()

    await pool.browse("t", f"{site.url}/link?to=/slow?s=13", settle_s=0, tenant="test")
    click = asyncio.create_task(pool.click("t", "#go", timeout_s=20, settle_s=0, tenant="test"))
    await crash_when_requested("/slow?s=13")
    with pytest.raises(BrowserLost, match="the browser was lost during click: .*Target crashed"):
        await click
    assert pool.browser_pids(), "the browser itself lives on"
    browse = asyncio.create_task(pool.browse("t", f"{site.url}/slow?s=14", settle_s=0, tenant="test"))
    await crash_when_requested("/slow?s=14")
    with pytest.raises(PageError) as lost:  # a read: retried, whatever Chromium calls it
        await browse
    assert lost.value.retryable and not isinstance(lost.value, BrowserLost)


async def test_an_operation_waiting_for_a_busy_session_gives_up_at_its_own_timeout_without_starting(pool, site):
    await pool.browse("t", f"{site.url}/link?to=/slow?s=6", settle_s=0, tenant="test")
    click = asyncio.create_task(pool.click("t", "#go", timeout_s=20, settle_s=0, tenant="test"))
    await asyncio.sleep(0.5)
    with pytest.raises(PageError, match="busy with another operation for 1s, so click did not start") as busy:
        await pool.click("t", "#go", timeout_s=1, settle_s=0, tenant="test")
    assert busy.value.retryable and not isinstance(busy.value, BrowserLost)  # known not to have run
    assert (await click)["url"].endswith("/slow?s=6")

"""The pool's lifecycle: sessions released, reaped and evicted; a crashed or hung browser relaunched."""

from __future__ import annotations

import asyncio
import os
import signal

import psutil
import pytest

from tests.web.conftest import _require_chromium, pool_config, stub_resolver
from tools.egress import EgressPolicy
from tools.registry import ToolError
from tools.web.errors import BrowserUnhealthy, PoolFull


@pytest.fixture
async def own_pool():
    """Pools of a test's own (they get killed, stopped, filled up)."""
    from tools.web.browser_pool import BrowserPool

    _require_chromium()
    made = []

    async def make(**config):
        p = await BrowserPool(pool_config(**config), egress=EgressPolicy(allow_hosts=["127.0.0.1"]),
                              resolver=stub_resolver).start()
        made.append(p)
        return p

    yield make
    for p in made:
        await p.close()


async def test_release_drops_cookies_and_page(own_pool, site):
    pool = await own_pool()
    await pool.browse("t1", f"{site.url}/setcookie?v=kept", settle_s=0, tenant="test")
    assert (await pool.browse("t1", f"{site.url}/whoami", settle_s=0, tenant="test"))["text"] == "kept"
    assert await pool.release("t1") and not await pool.release("t1")
    with pytest.raises(ToolError, match="no page is open"):
        await pool.click("t1", "a", tenant="test")
    assert (await pool.browse("t1", f"{site.url}/whoami", settle_s=0, tenant="test"))["text"] == "nobody"


async def test_idle_sessions_are_reaped(own_pool, site):
    pool = await own_pool(idle_timeout_s=0.4)
    await pool.browse("idle", f"{site.url}/whoami", settle_s=0, tenant="test")
    assert pool.stats()["sessions"] == 1
    for _ in range(40):
        if pool.stats()["sessions"] == 0:
            break
        await asyncio.sleep(0.1)
    assert pool.stats()["sessions"] == 0


async def test_full_pool_evicts_the_idlest_session_and_refuses_when_all_are_busy(own_pool, site):
    pool = await own_pool(max_sessions=2, slot_wait_s=0.5)
    await pool.browse("a", f"{site.url}/setcookie?v=a", settle_s=0, tenant="test")
    await pool.browse("b", f"{site.url}/setcookie?v=b", settle_s=0, tenant="test")
    await pool.browse("c", f"{site.url}/whoami", settle_s=0, tenant="test")  # evicts "a", the least recently used
    assert (await pool.browse("b", f"{site.url}/whoami", settle_s=0, tenant="test"))["text"] == "b"
    assert (await pool.browse("a", f"{site.url}/whoami", settle_s=0, tenant="test"))["new_session"]
    slow = [asyncio.create_task(pool.browse(s, f"{site.url}/slow?s=2", timeout_s=1, tenant="test")) for s in ("a", "b")]
    await asyncio.sleep(0.3)
    with pytest.raises(PoolFull, match="2/2 sessions, all busy") as err:
        await pool.browse("d", f"{site.url}/whoami", settle_s=0, tenant="test")
    assert err.value.retryable
    await asyncio.gather(*slow, return_exceptions=True)


async def test_a_new_session_waits_for_a_busy_one_to_finish_rather_than_failing(own_pool, site):
    pool = await own_pool(max_sessions=1, slot_wait_s=30)
    busy = asyncio.create_task(pool.browse("a", f"{site.url}/slow?s=2", timeout_s=5, settle_s=0, tenant="test"))
    await asyncio.sleep(0.3)
    waiting = await pool.browse("b", f"{site.url}/whoami", settle_s=0, tenant="test")  # queued behind "a"
    assert busy.done() and waiting["new_session"] and waiting["text"] == "nobody"


async def test_the_wait_for_a_slot_ends_before_the_callers_deadline(own_pool, site, tmp_path):
    """The call's budget (its node's timeout) bounds the slot wait: a browse that would wait
    past it fails fast as 'pool full' (retryable, never started) rather than being cut off."""
    from tools.executor import execute_call
    from tools.registry import load_registry
    from troupe.tool_calls import ToolCall

    pool = await own_pool(max_sessions=1, slot_wait_s=60)
    busy = asyncio.create_task(pool.browse("a", f"{site.url}/slow?s=8", timeout_s=10, settle_s=0, tenant="test"))
    await asyncio.sleep(0.3)
    call = ToolCall(tool="browse", args={"url": f"{site.url}/whoami", "timeout_s": 2, "settle_s": 0}, task_id="b",
                    tenant="test", node_id="n", idempotency_key="b:n", budget_s=8)
    started = asyncio.get_running_loop().time()
    outcome = await execute_call(load_registry(["tools.web.tools"]), call, tmp_path, extras={"browser": pool})
    assert not outcome.ok and outcome.retryable and "1/1 sessions, all busy" in outcome.error, outcome
    assert asyncio.get_running_loop().time() - started < 6  # 8 s budget - 2 s timeout - 5 s margin: ~1 s
    await busy


async def test_a_killed_browser_is_relaunched_on_the_next_call(own_pool, site):
    pool = await own_pool()
    await pool.browse("t", f"{site.url}/whoami", settle_s=0, tenant="test")
    main_pid = pool.browser_pids()[0]
    os.kill(main_pid, signal.SIGKILL)
    await asyncio.sleep(0.3)
    with pytest.raises(BrowserUnhealthy):
        await pool.check_health(relaunch=False)
    page = await pool.browse("t", f"{site.url}/whoami", settle_s=0, tenant="test")
    assert page["text"] == "nobody" and page["new_session"] and pool.launches == 2
    assert pool.browser_pids()[0] != main_pid


async def test_a_hung_browser_is_detected_and_replaced(own_pool, site):
    pool = await own_pool(health_timeout_s=1)
    await pool.browse("t", f"{site.url}/whoami", settle_s=0, tenant="test")
    hung = pool.browser_pids()
    for pid in hung:
        os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(BrowserUnhealthy, match="did not answer within 1s"):
            await pool.check_health(relaunch=False)
        await pool.check_health()  # relaunches
        assert pool.launches == 2
        assert (await pool.browse("t", f"{site.url}/whoami", settle_s=0, tenant="test"))["new_session"]
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in hung)
    finally:
        for pid in hung:  # in case the test failed before the relaunch killed them
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


async def test_reconfigure_applies_new_limits(own_pool, site):
    pool = await own_pool()
    await pool.reconfigure(pool_config(max_sessions=1))
    await pool.browse("x", f"{site.url}/whoami", settle_s=0, tenant="test")
    await pool.browse("y", f"{site.url}/whoami", settle_s=0, tenant="test")
    assert pool.stats()["sessions"] == 1 and pool.launches == 1
    with pytest.raises(ValueError,
                       match=r"action_timeout_s \(40\) must be less than or equal to navigation_timeout_s \(30\)"):
        pool_config(action_timeout_s=40, navigation_timeout_s=30)

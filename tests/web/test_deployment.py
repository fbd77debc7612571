"""The BrowserPool Serve deployment, called the way tools call it: through BrowserPoolClient."""

from __future__ import annotations

import asyncio

import pytest

from tests.web.conftest import _require_chromium
from tools.egress import EgressDenied
from tools.web.errors import PageError

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def browser_app(serve_http):
    from ray import serve

    from deployments.browser import BrowserPool, BrowserPoolClient

    _require_chromium()
    app = BrowserPool.options(
        num_replicas=2, autoscaling_config=None, ray_actor_options={"num_cpus": 0},
        user_config={"egress": {"allow_hosts": ["127.0.0.1"]}, "navigation_timeout_s": 10, "action_timeout_s": 5},
    ).bind()
    handle = serve.run(app, name="web-browser-test", route_prefix=None)
    yield handle, BrowserPoolClient(handle)
    serve.delete("web-browser-test")


async def test_sessions_stick_to_a_replica_and_errors_keep_their_fields(browser_app, site):
    handle, client = browser_app
    for task in ("task-a", "task-b"):
        await client.browse(task, f"{site.url}/setcookie?v={task}", settle_s=0, tenant="test")
    pages = await asyncio.gather(*(client.browse(t, f"{site.url}/whoami", settle_s=0, tenant="test")
                                   for t in ["task-a", "task-b"] * 4))
    assert [p["text"] for p in pages] == ["task-a", "task-b"] * 4
    assert not any(p["new_session"] for p in pages)

    with pytest.raises(EgressDenied) as denied:
        await client.browse("task-a", "http://127.0.0.2:9/", tenant="test")
    assert denied.value.address == "127.0.0.2" and not denied.value.retryable
    with pytest.raises(PageError) as slow:
        await client.browse("task-a", f"{site.url}/slow?s=20", timeout_s=1, tenant="test")
    assert slow.value.retryable and slow.value.trace  # the failed step's Playwright trace came along

    found = await client.search_local("task-a", "whoami", tenant="test")
    assert "indexed_pages" in found
    assert await client.release("task-a") in (True, False)
    await handle.check_health.remote()

"""SSRF through the browser, without a packet leaving loopback: every refusal is clear, and the
refused servers never see a request."""

from __future__ import annotations

import pytest

import tools.web.tools  # noqa: F401  (registers the tools)
from tests.web.conftest import pool_config, stub_resolver
from tests.web.site import Site
from tools.egress import EgressDenied, EgressPolicy
from tools.registry import default_registry


async def call(ctx, name: str, **args):
    return await default_registry.get(name)(ctx, args)


async def test_file_urls_are_refused(make_ctx):
    with pytest.raises(EgressDenied, match="scheme file: is not fetched"):
        await call(make_ctx(), "browse", url="file:///etc/passwd")


async def test_own_loopback_site_is_refused_unless_allowed(make_ctx, tmp_path):
    from tools.web.browser_pool import BrowserPool

    with Site("127.0.0.1") as own:
        async with BrowserPool(pool_config(), egress=EgressPolicy(), resolver=stub_resolver) as strict:
            ctx = make_ctx(browser=strict)
            for tool, args in [("browse", {"url": f"{own.url}/docs/"}), ("crawl", {"url": f"{own.url}/docs/"}),
                               ("extract", {"url": f"{own.url}/js", "fields": {"h": "h1"}})]:
                with pytest.raises(EgressDenied) as err:
                    await call(ctx, tool, **args)
                assert "127.0.0.1 is a loopback address" in err.value.message
                assert "set TROUPE_EGRESS_ALLOW_HOSTS=127.0.0.1" in err.value.message
        assert own.requests == []


async def test_redirect_from_an_allowed_page_to_a_refused_address(make_ctx, site, refused_site):
    with pytest.raises(EgressDenied) as err:
        await call(make_ctx(), "browse", url=f"{site.url}/redirect?to={refused_site.url}/admin")
    assert f"{refused_site.url}/admin" in err.value.message and "127.0.0.2 is a loopback" in err.value.message
    assert ("GET", f"/redirect?to={refused_site.url}/admin") in site.requests
    assert refused_site.requests == []


@pytest.mark.parametrize("name, says", [
    ("metadata.test", "metadata.test resolves to 169.254.169.254, a link-local address"),
    ("intranet.test", "intranet.test resolves to 10.1.2.3, a private address"),
    ("mapped.test", "private (IPv4 192.168.0.1 inside IPv6)"),
])
async def test_names_resolving_to_private_addresses_are_refused(make_ctx, site, name, says):
    with pytest.raises(EgressDenied, match=says.replace("(", r"\(").replace(")", r"\)")):
        await call(make_ctx(), "browse", url=f"http://{name}/latest/meta-data/")
    # ...also when a page redirects there: the redirect is checked at the connection.
    with pytest.raises(EgressDenied, match=name):
        await call(make_ctx(), "browse", url=f"{site.url}/redirect?to=http://{name}/x")


async def test_refused_subresources_are_blocked_and_reported(make_ctx, site, refused_site):
    page = await call(make_ctx(), "browse", url=f"{site.url}/mixed?img={refused_site.url}/pixel.png", settle_s=0)
    assert page["text"].startswith("hello")
    assert page["blocked"] == [f"{refused_site.url}/pixel.png"]
    assert refused_site.requests == []


async def test_a_task_can_narrow_but_not_widen_egress(make_ctx, site, refused_site):
    narrowed = make_ctx(egress={"deny_hosts": ["127.0.0.1"]})
    with pytest.raises(EgressDenied, match="in denied network 127.0.0.1/32"):
        await call(narrowed, "browse", url=f"{site.url}/docs/")
    widened = make_ctx(egress={"allow_hosts": ["127.0.0.2"]})
    with pytest.raises(Exception, match="a task cannot add allow_hosts"):
        await call(widened, "browse", url=f"{refused_site.url}/")
    assert refused_site.requests == []


async def test_websockets_and_webrtc_cannot_reach_refused_addresses(make_ctx, pool, site, refused_site):
    ctx = make_ctx()
    target = refused_site.url.replace("http://", "ws://") + "/socket"
    page = await call(ctx, "browse", url=f"{site.url}/ws?to={target}", wait_for="text=ws failed", settle_s=0)
    assert "ws failed" in page["text"] and refused_site.requests == []
    assert page["blocked"] == [refused_site.url.replace("http://", "https://") + "/"]  # its CONNECT, refused
    tab = await pool._sessions[ctx.task_id].current(create=False)
    assert await tab.page.evaluate("typeof RTCPeerConnection") == "undefined"

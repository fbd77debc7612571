"""The `http_fetch` tool against a real local HTTP server."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from aiohttp import web

import tools.builtin  # noqa: F401  (registers the tools)
from tools.registry import ToolArgumentError, ToolContext, ToolError, default_registry

PAGE = """<!doctype html><html><head><title>The  Title</title>
<style>body { color: red }</style><script>var secret = "not text";</script></head>
<body><h1>Heading</h1><p>First   paragraph.</p><noscript>enable js</noscript>
<p>Caf\u00e9 &amp; more</p></body></html>"""
BLOB = bytes(range(256)) * 40


STATIC = {
    "/page": {"text": PAGE, "content_type": "text/html", "charset": "utf-8"},
    "/data": {"text": '{"answer": 42, "name": "caf\u00e9"}', "content_type": "application/json"},
    "/latin1": {"body": "gar\u00e7on".encode("latin-1"), "headers": {"Content-Type": "text/plain; charset=iso-8859-1"}},
    "/big": {"text": "x" * 50_000, "content_type": "text/plain"},
    "/blob": {"body": BLOB, "content_type": "application/octet-stream"},
    "/gone": {"status": 404, "text": "nope"},
    "/busy": {"status": 503, "text": "later"},
    "/slow": {"text": "late"},
}
REDIRECTS = {"/redirect": "/page", "/loop": "/loop", "/to-ftp": "ftp://example.com/file",
             "/to-private": "http://10.0.0.1/secret"}
SEEN: list[str] = []


async def handle(request: web.Request) -> web.StreamResponse:
    SEEN.append(request.path)
    if request.path in REDIRECTS:
        raise web.HTTPFound(REDIRECTS[request.path])
    if request.path == "/headers":
        return web.json_response({"x-test": request.headers.get("X-Test")})
    if request.path == "/slow":
        await asyncio.sleep(5)
    return web.Response(**STATIC[request.path])


@pytest.fixture(scope="module")
async def site():
    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, handler_cancellation=True)  # /slow ends when the client goes
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture(autouse=True)
def allow_loopback(monkeypatch):
    """The test site is on 127.0.0.1, which the egress policy refuses unless allowed."""
    monkeypatch.setenv("TROUPE_EGRESS_ALLOW_HOSTS", "127.0.0.1")


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return ToolContext(task_id="t1", tenant="test", node_id="n1", idempotency_key="k1", workspace=tmp_path)


async def fetch(ctx: ToolContext, url: str, **args):
    return await default_registry.get("http_fetch")(ctx, {"url": url, **args})


async def test_html_becomes_readable_text(ctx, site):
    result = await fetch(ctx, f"{site}/page")
    assert result["status"] == 200
    assert result["content_type"] == "text/html"
    assert result["title"] == "The Title"
    assert result["text"] == "Heading\nFirst paragraph.\nCaf\u00e9 & more"
    assert result["truncated"] is False
    body = PAGE.encode()
    assert result["bytes"] == len(body)
    assert result["sha256"] == hashlib.sha256(body).hexdigest()


async def test_json_and_charsets_are_decoded(ctx, site):
    data = await fetch(ctx, f"{site}/data")
    assert data["content_type"] == "application/json"
    assert data["title"] is None
    assert data["text"] == '{"answer": 42, "name": "caf\u00e9"}'
    latin = await fetch(ctx, f"{site}/latin1")
    assert latin["text"] == "gar\u00e7on"


async def test_binary_gives_size_and_hash_only(ctx, site):
    result = await fetch(ctx, f"{site}/blob")
    assert result["text"] is None
    assert result["bytes"] == len(BLOB)
    assert result["sha256"] == hashlib.sha256(BLOB).hexdigest()


async def test_size_cap_truncates(ctx, site):
    result = await fetch(ctx, f"{site}/big", max_bytes=1000)
    assert result["truncated"] is True
    assert result["bytes"] == 1000
    assert result["text"] == "x" * 1000


async def test_redirects_are_followed_and_checked(ctx, site):
    result = await fetch(ctx, f"{site}/redirect")
    assert result["url"] == f"{site}/redirect"
    assert result["final_url"] == f"{site}/page"
    with pytest.raises(ToolError, match="redirected more than 5 times"):
        await fetch(ctx, f"{site}/loop")
    with pytest.raises(ToolError, match="only http and https URLs"):
        await fetch(ctx, f"{site}/to-ftp")


async def test_egress_policy_refuses_loopback_and_private_redirects(ctx, site, monkeypatch):
    SEEN.clear()
    with pytest.raises(ToolError, match="10.0.0.1"):  # allowed page, redirect to a private address
        await fetch(ctx, f"{site}/to-private")
    assert SEEN == ["/to-private"]
    monkeypatch.delenv("TROUPE_EGRESS_ALLOW_HOSTS")
    SEEN.clear()
    with pytest.raises(ToolError, match="TROUPE_EGRESS_ALLOW_HOSTS"):
        await fetch(ctx, f"{site}/page")
    assert SEEN == []  # refused before any packet was sent


async def test_connects_only_to_the_address_the_policy_checked(ctx, site, monkeypatch):
    """DNS rebinding: the name is resolved once, by the policy; the connection goes to that
    address (real DNS has never heard of rebind.test, so a second lookup would fail)."""
    import tools.egress

    async def stub(host: str, port: int) -> list[str]:
        assert host == "rebind.test"
        return ["127.0.0.1"]

    monkeypatch.setattr(tools.egress, "system_resolver", stub)
    port = site.rsplit(":", 1)[1]
    result = await fetch(ctx, f"http://rebind.test:{port}/headers", headers={"X-Test": "pinned"})
    assert result["final_url"] == f"http://rebind.test:{port}/headers"
    assert '"pinned"' in result["text"]


async def test_headers_are_sent(ctx, site):
    result = await fetch(ctx, f"{site}/headers", headers={"X-Test": "yes"})
    assert result["text"] == '{"x-test": "yes"}'


async def test_slow_endpoint_times_out(ctx, site):
    with pytest.raises(ToolError) as exc:
        await fetch(ctx, f"{site}/slow", timeout_s=0.5)
    assert "longer than 0.5 s" in exc.value.message
    assert exc.value.retryable


async def test_http_errors(ctx, site):
    with pytest.raises(ToolError) as exc:
        await fetch(ctx, f"{site}/gone")
    assert "HTTP 404" in exc.value.message
    assert not exc.value.retryable
    with pytest.raises(ToolError) as exc:
        await fetch(ctx, f"{site}/busy")
    assert "HTTP 503" in exc.value.message
    assert exc.value.retryable


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "javascript:alert(1)", "/relative"])
async def test_non_http_urls_are_refused(ctx, url):
    with pytest.raises(ToolError, match="only http and https URLs"):
        await fetch(ctx, url)


async def test_unreachable_host_is_retryable(ctx):
    with pytest.raises(ToolError) as exc:
        await fetch(ctx, "http://127.0.0.1:9/", timeout_s=5)  # the discard port: nothing listens
    assert exc.value.retryable


async def test_bad_arguments_name_the_field(ctx):
    with pytest.raises(ToolArgumentError) as exc:
        await fetch(ctx, "http://x", max_bytes=-1)
    assert exc.value.problems[0].startswith("max_bytes:")

"""crawl (limits, robots.txt, dedupe, per-host concurrency) and web_search over crawled pages or SearxNG."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

import tools.web.tools  # noqa: F401  (registers the tools)
from tests.web.site import Site
from tools.registry import ToolError, default_registry


async def call(ctx, name: str, **args):
    return await default_registry.get(name)(ctx, args)


def doc_fetches(site: Site, since: int) -> list[str]:
    return [p for m, p in site.requests[since:] if p.startswith("/docs/")]


async def test_crawl_is_breadth_first_bounded_and_honors_robots(make_ctx, site):
    since = len(site.requests)
    out = await call(make_ctx(), "crawl", url=f"{site.url}/docs/", max_pages=12, max_depth=3)
    pages = out["pages"]
    assert len(pages) == 12 and out["stats"]["stopped_by"] == "max_pages"
    assert [p["depth"] for p in pages] == sorted(p["depth"] for p in pages)  # breadth-first
    assert max(p["depth"] for p in pages) <= 3
    fetched = doc_fetches(site, since)
    assert not any(p.startswith("/docs/private/") for p in fetched)  # robots.txt: Disallow
    assert out["skipped"]["robots"] and all("/docs/private/" in u for u in out["skipped"]["robots"])
    assert len(fetched) == len(set(fetched)) == 12  # #top, ./ and utm_source spellings fetched once
    assert ("GET", "/robots.txt") in site.requests[since:]
    assert all(p["evidence"]["content_hash"].startswith("sha256:") for p in pages)
    assert not any("127.0.0.2" in p["url"] for p in pages)  # off-site links are not followed


async def test_crawl_depth_zero_reads_only_the_start_pages(make_ctx, site):
    out = await call(make_ctx(), "crawl", url=[f"{site.url}/docs/p5", f"{site.url}/docs/p6"], max_depth=0)
    assert [p["url"] for p in out["pages"]] == [f"{site.url}/docs/p5", f"{site.url}/docs/p6"]


async def test_per_host_concurrency_is_respected(make_ctx):
    with Site("127.0.0.1") as slow_site:
        slow_site.delay_s = 0.15
        out = await call(make_ctx(), "crawl", url=f"{slow_site.url}/docs/", max_pages=10, max_depth=4,
                         concurrency=4, per_host_concurrency=2)
        assert len(out["pages"]) == 10
        assert slow_site.max_inflight == 2


async def test_web_search_without_searxng_searches_crawled_pages(make_ctx, site, monkeypatch):
    monkeypatch.delenv("TROUPE_SEARXNG_URL", raising=False)
    ctx = make_ctx()
    await call(ctx, "crawl", url=f"{site.url}/docs/", max_pages=8, max_depth=3)
    found = await call(ctx, "web_search", query="zebra5 documentation", max_results=3)
    assert found["source"] == "local_index" and "TROUPE_SEARXNG_URL is not set" in found["note"]
    # The index is the pool's (the process's), so other tests' copies of the site may rank too.
    assert found["results"][0]["url"].endswith("/docs/p5")
    assert "zebra5" in found["results"][0]["snippet"]
    assert found["urls"][0] == found["results"][0]["url"]
    assert (await call(ctx, "web_search", query="zebra5", sites=["example.org"]))["results"] == []


@pytest.fixture
def searxng():
    """A stand-in SearxNG answering /search?format=json; records the queries it got."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            q = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
            seen.append(q)
            if q.get("format") != "json":
                self.send_response(403)
                self.end_headers()
                return
            body = json.dumps({"results": [
                {"url": f"https://example.org/{i}", "title": f"Result {i}", "content": f"about {q['q']}",
                 "engines": ["ddg"]} for i in range(5)]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


async def test_web_search_uses_searxng_when_configured(make_ctx, searxng, monkeypatch):
    url, seen = searxng
    monkeypatch.setenv("TROUPE_SEARXNG_URL", url)
    found = await call(make_ctx(), "web_search", query="ray serve", max_results=3, sites=["docs.ray.io"])
    assert found["source"] == "searxng" and len(found["results"]) == 3
    assert found["results"][0] == {"url": "https://example.org/0", "title": "Result 0",
                                   "snippet": "about ray serve site:docs.ray.io", "engines": ["ddg"],
                                   "published": None}
    assert seen == [{"q": "ray serve site:docs.ray.io", "format": "json"}]


async def test_web_search_explains_an_unreachable_searxng(make_ctx, monkeypatch):
    monkeypatch.setenv("TROUPE_SEARXNG_URL", "http://127.0.0.1:9")
    with pytest.raises(ToolError, match="SearxNG at TROUPE_SEARXNG_URL is unreachable") as err:
        await call(make_ctx(), "web_search", query="anything")
    assert err.value.retryable

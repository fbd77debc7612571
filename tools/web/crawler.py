"""Bounded breadth-first crawl within the seeds' domains, honoring robots.txt (RFC 9309)."""

from __future__ import annotations

import asyncio
import time
import urllib.robotparser
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tools.egress import _redact
from tools.registry import ToolError
from tools.web.page import Tab
from tools.web.urls import host_of, in_scope, looks_like_file, normalize_url, scope_host

if TYPE_CHECKING:
    from tools.web.session import Session

__all__ = ["ROBOTS_AGENT", "crawl"]

ROBOTS_AGENT = "TroupeBot"
_MAX_CRAWL_DELAY_S = 10.0  # a robots.txt asking for more would stall a task for minutes
_INDEX_CHARS = 50_000  # text kept per page for web_search; results carry max_chars of it


class _Robots:
    """One robots.txt per origin, fetched once through the session (so through the egress checks)."""

    def __init__(self, timeout_s: float):
        self._timeout_s = timeout_s
        self._rules: dict[str, urllib.robotparser.RobotFileParser | str] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def check(self, tab: Tab, url: str) -> tuple[bool, float]:
        """(allowed, crawl delay in seconds) for `url`."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        async with self._locks.setdefault(origin, asyncio.Lock()):
            if origin not in self._rules:
                self._rules[origin] = await self._fetch(tab, origin)
        rules = self._rules[origin]
        if rules == "allow":
            return True, 0.0
        if rules == "deny":
            return False, 0.0
        assert isinstance(rules, urllib.robotparser.RobotFileParser)
        delay = float(rules.crawl_delay(ROBOTS_AGENT) or 0)
        return rules.can_fetch(ROBOTS_AGENT, url), min(delay, _MAX_CRAWL_DELAY_S)

    async def _fetch(self, tab: Tab, origin: str) -> urllib.robotparser.RobotFileParser | str:
        try:
            await tab.goto(origin + "/robots.txt", timeout_s=self._timeout_s, settle_s=0, wait_for=None)
            status = tab.status or 0
            text = await tab.plain_text(max_chars=512_000, timeout_s=self._timeout_s)
        except ToolError:
            return "deny"  # RFC 9309: unreachable robots.txt means a complete disallow
        if 400 <= status < 500:
            return "allow"  # RFC 9309: "unavailable" (404 etc.) means no rules
        if not 200 <= status < 300:
            return "deny"
        parser = urllib.robotparser.RobotFileParser()
        parser.parse(text.splitlines())
        return parser


async def crawl(
    session: Session,
    index_page: Callable[[str, str, str, str], None],
    url: str | list[str],
    *,
    max_pages: int = 20,
    max_depth: int = 2,
    allow_subdomains: bool = False,
    concurrency: int = 4,
    per_host_concurrency: int = 2,
    timeout_s: float = 15.0,
    settle_s: float = 0.0,
    max_chars: int = 1000,
    max_time_s: float = 300.0,
) -> dict[str, Any]:
    starts = []
    for seed in [url] if isinstance(url, str) else url:
        await session.policy.check_url(seed, resolver=session.resolver)  # refuse up front, clearly
        normalized = normalize_url(seed)
        if normalized is None:
            raise ToolError(f"cannot crawl {_redact(seed)}: pass an absolute http(s) URL")
        starts.append(normalized)
    scopes = {scope_host(s) for s in starts}
    loop = asyncio.get_running_loop()
    began = loop.time()
    deadline = began + max_time_s
    robots = _Robots(min(timeout_s, 10.0))
    seen: set[str] = set(starts)
    frontier = list(dict.fromkeys(starts))
    pages: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    robots_skipped: list[str] = []
    host_slots: dict[str, asyncio.Semaphore] = {}
    host_next: dict[str, float] = {}
    state: dict[str, Any] = {"started": 0, "not_fetched": 0, "stopped": None}

    async def fetch(tab: Tab, target: str, depth: int, order: int, found: list[tuple[int, str]]) -> None:
        if state["started"] >= max_pages or loop.time() >= deadline:
            state["not_fetched"] += 1
            return
        allowed, delay = await robots.check(tab, target)
        if not allowed:
            robots_skipped.append(target)
            return
        state["started"] += 1
        host = host_of(target)
        async with host_slots.setdefault(host, asyncio.Semaphore(per_host_concurrency)):
            wait = host_next.get(host, 0.0) - loop.time()
            host_next[host] = max(loop.time(), host_next.get(host, 0.0)) + delay
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                remaining = max(1.0, min(timeout_s, deadline - loop.time()))
                await tab.goto(target, timeout_s=remaining, settle_s=settle_s, wait_for=None)
                page = await tab.read(max_chars=_INDEX_CHARS, max_links=1000, timeout_s=remaining)
            except ToolError as exc:
                errors.append({"url": _redact(target), "error": exc.message})
                return
        final = normalize_url(page["url"]) or target
        seen.add(final)
        index_page(page["url"], page["title"], page["text"], page["evidence"]["fetched_at"])
        pages.append({
            "url": page["url"], "title": page["title"], "depth": depth, "status": page["status"],
            "text": page["text"][:max_chars], "truncated": page["truncated"] or len(page["text"]) > max_chars,
            "evidence": page["evidence"], "_order": order,
        })
        if depth < max_depth and in_scope(final, scopes, subdomains=allow_subdomains):
            found.extend((order, link["url"]) for link in page["links"])

    # Level by level: with several pages in flight a deep page could finish before a shallow
    # one, and which pages fit in max_pages would then depend on timing.
    async with session.tabs(min(concurrency, max_pages)) as tabs:
        for depth in range(max_depth + 1):
            if not frontier:
                break
            found: list[tuple[int, str]] = []

            async def run(order: int, target: str, depth: int, found: list[tuple[int, str]]) -> None:
                tab = await tabs.get()
                try:
                    await fetch(tab, target, depth, order, found)
                finally:
                    tabs.put_nowait(tab)

            await asyncio.gather(*(run(i, t, depth, found) for i, t in enumerate(frontier)))
            frontier = []
            for _, link in sorted(found, key=lambda f: f[0]):  # the parents' order, not completion order
                n = normalize_url(link)
                if n and n not in seen and in_scope(n, scopes, subdomains=allow_subdomains) and not looks_like_file(n):
                    seen.add(n)
                    frontier.append(n)
    state["not_fetched"] += len(frontier)
    if loop.time() >= deadline:
        state["stopped"] = "max_time_s"
    elif state["started"] >= max_pages:
        state["stopped"] = "max_pages"
    elapsed = loop.time() - began
    pages.sort(key=lambda p: (p["depth"], p.pop("_order")))
    return {
        "start_urls": starts,
        "pages": pages,
        "skipped": {"robots": sorted(robots_skipped), "errors": errors, "not_fetched": state["not_fetched"]},
        "stats": {"fetched": len(pages), "elapsed_s": round(elapsed, 3),
                  "pages_per_s": round(len(pages) / elapsed, 2) if elapsed else None,
                  "stopped_by": state["stopped"], "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }

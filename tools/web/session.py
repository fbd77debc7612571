"""A browsing session: one task's isolated context (cookies, storage, open page) across calls."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, BrowserContext
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeout
from playwright._impl._errors import TargetClosedError  # not re-exported by playwright.async_api

from tools.egress import EgressDenied, EgressPolicy, Resolver, _redact, playwright_route_handler
from tools.web import _js
from tools.web.config import BrowserPoolConfig
from tools.web.errors import BrowserLost, PageError
from tools.web.extract import compile_fields, shape
from tools.web.page import Tab
from tools.web.proxy import EgressProxy

__all__ = ["Session"]


EFFECTFUL_OPS = frozenset({"click", "fill", "submit"})
"""Operations that may change something outside the page: cut off, their outcome is unknown."""


class Session:
    """Operations on the session's current page run one at a time (they share that page);
    crawls use extra tabs (`tabs()`), up to `max_pages_per_session` in all."""

    def __init__(self, session_id: str, policy: EgressPolicy, config: BrowserPoolConfig, resolver: Resolver, *,
                 tenant: str):
        self.id = session_id
        self.tenant = tenant
        self.policy = policy
        self.config = config
        self.refusals: list[EgressDenied] = []
        self.last_used = time.monotonic()
        self.busy = 0
        self.lock = asyncio.Lock()
        self.resolver = resolver
        self._tabs = asyncio.Semaphore(config.max_pages_per_session)
        self._proxy = EgressProxy(lambda: self.policy, resolver, on_refused=self._refused,
                                  connect_timeout_s=config.navigation_timeout_s)
        self._context: BrowserContext | None = None
        self._current: Tab | None = None
        self._op_refusals = 0
        self.closed = False

    def _refused(self, exc: EgressDenied) -> None:
        self.refusals.append(exc)

    def _browser_connected(self) -> bool:
        browser = self._context.browser if self._context is not None else None
        return browser is not None and browser.is_connected()

    async def open(self, browser: Browser) -> Session:
        c = self.config
        proxy = await self._proxy.start()
        self._context = await browser.new_context(
            proxy={"server": proxy},
            accept_downloads=False,
            service_workers="block",  # workers' own fetches would skip the route check
            user_agent=c.user_agent,
            viewport={"width": c.viewport_width, "height": c.viewport_height},
        )
        self._context.set_default_timeout(c.action_timeout_s * 1000)
        self._context.set_default_navigation_timeout(c.navigation_timeout_s * 1000)
        await self._context.add_init_script(_js.NO_WEBRTC)
        await self._context.route("**/*", playwright_route_handler(
            lambda: self.policy, resolver=self.resolver, on_refused=self._refused))
        return self

    async def abandon(self) -> None:
        """The browser is gone (and the context with it): just stop the proxy."""
        self.closed = True
        await self._proxy.close()

    async def close(self) -> None:
        self.closed = True
        if self._context is not None:
            with contextlib.suppress(PlaywrightError, asyncio.TimeoutError):
                await asyncio.wait_for(self._context.close(), 5)
        await self._proxy.close()

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[Session]:
        """Mark the session busy (not evictable) for the duration of a call."""
        self.busy += 1
        self.last_used = time.monotonic()
        try:
            yield self
        finally:
            self.busy -= 1
            self.last_used = time.monotonic()

    @contextlib.asynccontextmanager
    async def tabs(self, want: int) -> AsyncIterator[asyncio.Queue[Tab]]:
        """Up to `want` scratch tabs (crawl workers) as a queue to take from and give back; at
        least one, waiting for it if the session's tab slots are all taken."""
        got = 0
        await self._tabs.acquire()
        got += 1
        while got < want and not self._tabs.locked():
            await self._tabs.acquire()
            got += 1
        opened: list[Tab] = []
        try:
            for _ in range(got):
                opened.append(await self._new_tab())
            queue: asyncio.Queue[Tab] = asyncio.Queue()
            for tab in opened:
                queue.put_nowait(tab)
            yield queue
        finally:
            await asyncio.gather(*(t.close() for t in opened))
            for _ in range(got):
                self._tabs.release()

    async def _new_tab(self) -> Tab:
        lost = PageError("this browsing session was closed (released, expired or the browser restarted); "
                         "call again to get a new one", retryable=True)
        if self._context is None or self.closed:
            raise lost
        try:
            page = await self._context.new_page()
            return await Tab(page, max_bytes=self.config.max_page_bytes, refusals=self.refusals).attach()
        except PlaywrightError:
            raise lost from None

    async def current(self, *, create: bool) -> Tab:
        if self._current is not None and not self._current.page.is_closed():
            return self._current
        if not create:
            raise PageError(
                "no page is open in this browsing session (it may have expired after "
                f"idle_timeout_s={self.config.idle_timeout_s:g}s or the browser restarted); call browse(url) first"
            )
        await self._tabs.acquire()  # the current page holds one tab slot for the session's life
        try:
            self._current = await self._new_tab()
        except BaseException:
            self._tabs.release()
            raise
        return self._current

    async def drop_current(self) -> None:
        """Close a page that stopped responding so the next call starts from a fresh one."""
        if self._current is not None:
            tab, self._current = self._current, None
            self._tabs.release()
            await tab.close()

    # -- operations on the current page ---------------------------------------------------------

    async def browse(self, url: str, *, timeout_s: float, settle_s: float, wait_for: str | None,
                     max_chars: int, max_links: int, screenshot: bool) -> dict[str, Any]:
        await self.policy.check_url(url, resolver=self.resolver)  # a clear error, nothing sent
        async with self._on_current("browse", create=True, wait_s=timeout_s) as tab:
            nav = await tab.goto(url, timeout_s=timeout_s, settle_s=settle_s, wait_for=wait_for)
            return await self._snapshot(tab, nav, max_chars, max_links, screenshot, timeout_s)

    async def click(self, selector: str, *, timeout_s: float, settle_s: float, max_chars: int,
                    max_links: int, screenshot: bool = False) -> dict[str, Any]:
        async with self._on_current("click", create=False, wait_s=timeout_s) as tab:
            nav = await tab.act(lambda: tab.page.click(selector, timeout=timeout_s * 1000),
                                what=f"click {selector!r}", timeout_s=timeout_s, settle_s=settle_s)
            return await self._snapshot(tab, nav, max_chars, max_links, screenshot, timeout_s)

    async def fill(self, selector: str, value: str, *, timeout_s: float) -> dict[str, Any]:
        async with self._on_current("fill", create=False, wait_s=timeout_s) as tab:
            try:
                await tab.page.fill(selector, value, timeout=timeout_s * 1000)
            except PlaywrightTimeout:
                raise PageError(f"fill {selector!r}: no editable field matched within {timeout_s:g}s; check the "
                                'selector (browse shows inputs as [input type=text name="..."])') from None
            return {"filled": selector, "url": tab.page.url}  # never echo the value: it may be a password

    async def submit(self, selector: str, *, timeout_s: float, settle_s: float, max_chars: int,
                     max_links: int, screenshot: bool = False) -> dict[str, Any]:
        async with self._on_current("submit", create=False, wait_s=timeout_s) as tab:
            target = tab.page.locator(selector).first
            try:
                await target.wait_for(state="attached", timeout=timeout_s * 1000)
            except PlaywrightTimeout:
                raise PageError(f"submit {selector!r}: nothing matched within {timeout_s:g}s; name the form "
                                "or its submit button") from None
            nav = await tab.act(lambda: target.evaluate(_SUBMIT), what=f"submit {selector!r}",
                                timeout_s=timeout_s, settle_s=settle_s)
            return await self._snapshot(tab, nav, max_chars, max_links, screenshot, timeout_s)

    async def screenshot(self, *, full_page: bool, timeout_s: float) -> tuple[bytes, str]:
        async with self._on_current("screenshot", create=False, wait_s=timeout_s) as tab:
            return await tab.screenshot(full_page=full_page, timeout_s=timeout_s), tab.page.url

    async def extract(self, fields: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        compiled = compile_fields(fields)
        async with self._on_current("extract", create=False, wait_s=timeout_s) as tab:
            raw = await tab.extract({k: v.js() for k, v in compiled.items()}, timeout_s=timeout_s)
            return {"url": tab.page.url, "data": shape(compiled, raw, tab.page.url)}

    @contextlib.asynccontextmanager
    async def _on_current(self, op: str, *, create: bool, wait_s: float) -> AsyncIterator[Tab]:
        """The session's current tab, for one operation at a time. Waiting for another
        operation to finish is bounded by this one's own timeout, and ends in an error that
        says the operation never started (safe to retry, even a click): a wait cut off by
        the node's timeout instead would leave a click's outcome unknown."""
        try:
            await asyncio.wait_for(self.lock.acquire(), wait_s)
        except asyncio.TimeoutError:
            raise PageError(f"this browsing session was busy with another operation for {wait_s:g}s, so {op} "
                            "did not start; retry", retryable=True) from None
        try:
            if len(self.refusals) > 200:  # trimmed only here, so indexes hold during a call
                del self.refusals[:-20]
            self._op_refusals = len(self.refusals)
            tracing = False
            try:
                tab = await self.current(create=create)
                if self.config.trace_failures and self._context is not None:
                    # Traced per step rather than for the context's life: a trace running
                    # through a crawl costs it about 40% of its pages/s.
                    with contextlib.suppress(PlaywrightError):
                        await self._context.tracing.start(snapshots=True, screenshots=False)
                        tracing = True
                yield tab
            except PageError as exc:
                if not self._browser_connected():  # the browser died under the operation
                    raise BrowserLost(op, exc.message) from None
                if "stopped responding" in exc.message or "crashed" in exc.message:
                    await self.drop_current()
                    if op in EFFECTFUL_OPS:  # the page died mid-action: whether it took effect is unknown
                        raise BrowserLost(op, exc.message) from None
                exc.trace = await self._stop_trace(keep=True) if tracing else None
                tracing = False
                raise
            except PlaywrightError as exc:
                if isinstance(exc, TargetClosedError) or not self._browser_connected():
                    # The browser died under the operation: whether it took effect is unknown.
                    raise BrowserLost(op, str(exc).splitlines()[0]) from None
                trace = await self._stop_trace(keep=True) if tracing else None
                tracing = False
                raise PageError(f"browser operation failed: {str(exc).splitlines()[0]}",
                                retryable=True, trace=trace) from None
            finally:
                if tracing:
                    await self._stop_trace(keep=False)
        finally:
            self.lock.release()

    async def _stop_trace(self, *, keep: bool) -> bytes | None:
        assert self._context is not None
        try:
            if not keep:
                await self._context.tracing.stop()
                return None
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "trace.zip"
                await self._context.tracing.stop(path=path)
                return path.read_bytes()
        except PlaywrightError:
            return None

    async def _snapshot(self, tab: Tab, nav: dict[str, Any], max_chars: int, max_links: int,
                        screenshot: bool, timeout_s: float) -> dict[str, Any]:
        page = await tab.read(max_chars=max_chars, max_links=max_links, timeout_s=timeout_s)
        page["complete"] = nav["complete"]
        blocked = sorted({_redact(e.url) for e in self.refusals[self._op_refusals:]} - {page["url"]})
        if blocked:
            page["blocked"] = blocked
        if screenshot:
            page["screenshot_png"] = await tab.screenshot(full_page=False, timeout_s=timeout_s)
        return page


# Submit like a user would: press the form's submit button when the selector names one,
# else requestSubmit() so validation and submit handlers run.
_SUBMIT = """(el) => {
  const form = el.tagName === "FORM" ? el : el.form;
  if (!form) throw new Error("the selector matches neither a form nor a control inside one");
  if (el !== form && (el.type === "submit" || el.tagName === "BUTTON")) { el.click(); return; }
  form.requestSubmit();
}"""

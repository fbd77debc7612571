"""One Playwright Chromium, handing out an isolated session per task.

Plain async Python (the Serve deployment in `deployments/browser.py` wraps it). Sessions are
created on first use, kept across calls, and closed on `release`, after `idle_timeout_s`, or
(least recently used, idle ones only) when `max_sessions` is reached. `check_health` finds a
crashed or hung browser and relaunches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import psutil
from playwright.async_api import Browser, CDPSession, Playwright, async_playwright
from playwright.async_api import Error as PlaywrightError

from tools.egress import (
    CachingResolver,
    EgressConfigError,
    EgressOverrides,
    EgressPolicy,
    Resolver,
    system_resolver,
)
from tools.registry import ToolError
from tools.web.config import LAUNCH_ARGS, BrowserPoolConfig, find_chromium
from tools.web.crawler import crawl
from tools.web.errors import BrowserLaunchError, BrowserUnhealthy, PageError, PoolFull
from tools.web.search import TenantIndexes
from tools.web.session import Session

__all__ = ["BrowserPool"]

log = logging.getLogger("troupe.web.pool")


class BrowserPool:
    """`async with BrowserPool(config, egress=policy) as pool: await pool.browse(task_id, url)`."""

    def __init__(
        self,
        config: BrowserPoolConfig | None = None,
        *,
        egress: EgressPolicy | None = None,
        resolver: Resolver | None = None,
        indexes: TenantIndexes | None = None,
    ):
        self.config = config or BrowserPoolConfig()
        self._base_egress = egress or EgressPolicy.from_env()
        self.resolver = CachingResolver(resolver or system_resolver)
        self.indexes = indexes or TenantIndexes()  # web_search: each tenant's pages only
        self._marker = f"--troupe-pool={uuid.uuid4().hex}"  # finds our processes among others'
        self._pw: Playwright | None = None
        self._browser: Browser | None = None
        self._cdp: CDPSession | None = None
        self._sessions: dict[str, Session] = {}
        self._launch_lock = asyncio.Lock()
        self._sessions_lock = asyncio.Lock()
        self._slot_freed = asyncio.Event()
        """Set whenever a call on a session ends or a session is released: a slot may be free."""
        self._reaper: asyncio.Task | None = None
        self.launches = 0

    @property
    def egress(self) -> EgressPolicy:
        return self._base_egress.extended(self.config.egress)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> BrowserPool:
        await self._ensure_browser()
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_forever(), name="browser-pool-reaper")
        return self

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        await self._shutdown_browser()

    async def __aenter__(self) -> BrowserPool:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def reconfigure(self, config: BrowserPoolConfig) -> None:
        """New limits apply at once; a new executable or launch args on the next relaunch."""
        relaunch = (config.executable_path, config.extra_args) != (self.config.executable_path, self.config.extra_args)
        self.config = config
        for s in self._sessions.values():
            s.config = config
        if relaunch and self._browser is not None:
            async with self._launch_lock:
                await self._shutdown_browser()
                await self._launch()

    async def _ensure_browser(self) -> Browser:
        if self._browser is not None and self._browser.is_connected():
            return self._browser
        async with self._launch_lock:
            if self._browser is None or not self._browser.is_connected():
                await self._shutdown_browser()
                await self._launch()
        assert self._browser is not None
        return self._browser

    async def _launch(self) -> None:
        path = find_chromium(self.config.executable_path)
        try:
            self._pw = await async_playwright().start()
            self._browser = await self._pw.chromium.launch(
                executable_path=path,
                headless=True,
                args=[*LAUNCH_ARGS, *self.config.extra_args, self._marker],
                timeout=self.config.launch_timeout_s * 1000,
            )
            self._cdp = await self._browser.new_browser_cdp_session()
        except PlaywrightError as exc:
            await self._shutdown_browser()
            raise BrowserLaunchError(
                f"could not start Chromium ({path or 'Playwright bundled'}): {str(exc).splitlines()[0]}; set "
                "TROUPE_BROWSER_PATH to a Chromium binary, or install Debian's `chromium-headless-shell`"
            ) from None
        self.launches += 1
        log.info("browser launched: %s %s", path or "playwright-chromium", self._browser.version)

    async def _shutdown_browser(self, *, kill_first: bool = False) -> None:
        """Close everything; kill what does not close in time. A hung browser never closes,
        so after a failed probe (`kill_first`) it is killed straight away."""
        pids = self.browser_pids()
        if kill_first:
            self._kill(pids)
        sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            await s.abandon()
        browser, pw, self._browser, self._pw, self._cdp = self._browser, self._pw, None, None, None
        if browser is not None:
            with contextlib.suppress(PlaywrightError, asyncio.TimeoutError):
                await asyncio.wait_for(browser.close(), 5)
        if pw is not None:
            with contextlib.suppress(PlaywrightError, asyncio.TimeoutError):
                await asyncio.wait_for(pw.stop(), 5)
        self._kill(pids)

    @staticmethod
    def _kill(pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).send_signal(signal.SIGKILL)

    async def check_health(self, *, relaunch: bool = True) -> None:
        """Raise BrowserUnhealthy unless the browser answers within health_timeout_s (after
        one relaunch when `relaunch`). Sessions do not survive a relaunch."""
        try:
            await self._probe()
            return
        except BrowserUnhealthy as exc:
            if not relaunch:
                raise
            log.warning("relaunching the browser: %s", exc)
        async with self._launch_lock:
            await self._shutdown_browser(kill_first=True)
            try:
                await self._launch()
            except BrowserLaunchError as exc:
                raise BrowserUnhealthy(str(exc)) from None
        await self._probe()

    async def _probe(self) -> None:
        if self._browser is None or self._cdp is None or not self._browser.is_connected():
            raise BrowserUnhealthy("the browser is not running (it crashed, was killed or never started)")
        try:
            await asyncio.wait_for(self._cdp.send("Browser.getVersion"), self.config.health_timeout_s)
        except TimeoutError:
            raise BrowserUnhealthy(
                f"the browser did not answer within {self.config.health_timeout_s:g}s (hung)") from None
        except PlaywrightError as exc:
            raise BrowserUnhealthy(f"the browser is gone: {str(exc).splitlines()[0]}") from None

    def browser_pids(self) -> list[int]:
        """This pool's browser processes (the main one and its renderers and helpers)."""
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if self._marker in (proc.info["cmdline"] or []):
                    return [proc.pid] + [c.pid for c in proc.children(recursive=True)]
        return []

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    def stats(self) -> dict[str, Any]:
        rss = 0
        for pid in self.browser_pids():
            with contextlib.suppress(psutil.Error):
                rss += psutil.Process(pid).memory_info().rss
        return {
            "sessions": len(self._sessions),
            "busy": sum(1 for s in self._sessions.values() if s.busy),
            "max_sessions": self.config.max_sessions,
            "launches": self.launches,
            "browser_rss_bytes": rss,
            "indexed_pages": len(self.indexes),
        }

    # -- sessions --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def session(self, session_id: str, egress: EgressOverrides | Mapping[str, Any] | None = None, *,
                      tenant: str, slot_wait_s: float | None = None) -> AsyncIterator[tuple[Session, bool]]:
        """The task's session (created when missing) and whether it is new, held busy. A new
        session waits for a slot up to slot_wait_s (the caller's, when shorter than the pool's).

        A session belongs to the tenant that opened it: another tenant naming the same id is
        refused rather than handed its cookies and pages."""
        try:
            policy = self.egress.restricted(egress)
        except EgressConfigError as exc:
            raise ToolError(f"bad egress settings for this task: {exc}") from None
        try:
            await self._ensure_browser()  # after a crash this relaunches and drops the dead sessions
        except BrowserLaunchError as exc:
            raise PageError(f"the browser is unavailable: {exc}", retryable=True) from None
        # Every slot busy is backpressure, not a failure: wait for a call to end (bounded by
        # slot_wait_s), so that a burst of tasks queues here instead of spending their retries.
        wait_s = self.config.slot_wait_s if slot_wait_s is None else min(self.config.slot_wait_s, slot_wait_s)
        deadline = time.monotonic() + wait_s
        while True:
            self._slot_freed.clear()
            async with self._sessions_lock:  # one creation at a time, so racing calls share a session
                session = self._sessions.get(session_id)
                created = session is None or session.closed
                if created:
                    session = await self._open_session(session_id, policy, tenant,
                                                       wait=time.monotonic() < deadline)
            if session is not None:
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(), max(0.0, deadline - time.monotonic()))
        if session.tenant != tenant:
            raise ToolError(f"browser session {session_id!r} belongs to another tenant; use your own task's id")
        session.policy = policy
        try:
            async with session.use():
                yield session, created
        finally:
            self._slot_freed.set()

    async def _open_session(self, session_id: str, policy: EgressPolicy, tenant: str, *,
                            wait: bool = False) -> Session | None:
        """A new session; None when every slot is busy and the caller may `wait` for one."""
        browser = await self._ensure_browser()
        if len(self._sessions) >= self.config.max_sessions:
            idle = [s for s in self._sessions.values() if not s.busy]
            if not idle:
                if wait:
                    return None
                raise PoolFull(len(self._sessions), self.config.max_sessions)
            await self.release(min(idle, key=lambda s: s.last_used).id)
        session = Session(session_id, policy, self.config, self.resolver, tenant=tenant)
        try:
            await session.open(browser)
        except BaseException:
            await session.close()
            raise
        self._sessions[session_id] = session
        return session

    async def release(self, session_id: str) -> bool:
        """Close a task's session (its cookies, storage and pages); False when there was none."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        await session.close()
        self._slot_freed.set()
        return True

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(min(30.0, self.config.idle_timeout_s / 4))
            now = time.monotonic()
            for s in list(self._sessions.values()):
                if not s.busy and now - s.last_used > self.config.idle_timeout_s:
                    log.info("closing idle browser session %s", s.id)
                    await self.release(s.id)

    # -- operations (what tools call; arguments and results are plain data) -------------------------

    def _clamp(self, timeout_s: float | None) -> float:
        return min(timeout_s or self.config.navigation_timeout_s, self.config.navigation_timeout_s)

    async def browse(self, session_id: str, url: str, *, tenant: str, egress: Any = None, slot_wait_s: float | None = None,
                     timeout_s: float | None = None, settle_s: float = 2.0, wait_for: str | None = None,
                     max_chars: int = 20_000, max_links: int = 100, screenshot: bool = False) -> dict[str, Any]:
        async with self.session(session_id, egress, tenant=tenant, slot_wait_s=slot_wait_s) as (s, new):
            page = await s.browse(url, timeout_s=self._clamp(timeout_s), settle_s=settle_s, wait_for=wait_for,
                                  max_chars=max_chars, max_links=max_links, screenshot=screenshot)
        self.indexes.add(tenant, page["url"], page["title"], page["text"], page["evidence"]["fetched_at"])
        return {**page, "new_session": new}

    async def click(self, session_id: str, selector: str, *, tenant: str, egress: Any = None, slot_wait_s: float | None = None,
                    timeout_s: float | None = None, settle_s: float = 2.0, max_chars: int = 20_000,
                    max_links: int = 100, screenshot: bool = False) -> dict[str, Any]:
        async with self.session(session_id, egress, tenant=tenant, slot_wait_s=slot_wait_s) as (s, new):
            page = await s.click(selector, timeout_s=self._clamp(timeout_s), settle_s=settle_s,
                                 max_chars=max_chars, max_links=max_links, screenshot=screenshot)
        return {**page, "new_session": new}

    async def fill(self, session_id: str, selector: str, value: str, *, tenant: str, egress: Any = None, slot_wait_s: float | None = None,
                   timeout_s: float | None = None) -> dict[str, Any]:
        async with self.session(session_id, egress, tenant=tenant, slot_wait_s=slot_wait_s) as (s, new):
            return {**await s.fill(selector, value, timeout_s=self._clamp(timeout_s or self.config.action_timeout_s)),
                    "new_session": new}

    async def submit(self, session_id: str, selector: str = "form", *, tenant: str, egress: Any = None, slot_wait_s: float | None = None,
                     timeout_s: float | None = None, settle_s: float = 2.0, max_chars: int = 20_000,
                     max_links: int = 100, screenshot: bool = False) -> dict[str, Any]:
        async with self.session(session_id, egress, tenant=tenant, slot_wait_s=slot_wait_s) as (s, new):
            page = await s.submit(selector, timeout_s=self._clamp(timeout_s), settle_s=settle_s,
                                  max_chars=max_chars, max_links=max_links, screenshot=screenshot)
        return {**page, "new_session": new}

    async def screenshot(self, session_id: str, *, tenant: str, egress: Any = None, slot_wait_s: float | None = None, full_page: bool = False,
                         timeout_s: float | None = None) -> dict[str, Any]:
        async with self.session(session_id, egress, tenant=tenant, slot_wait_s=slot_wait_s) as (s, _):
            png, url = await s.screenshot(full_page=full_page, timeout_s=self._clamp(timeout_s))
        return {"png": png, "url": url}

    async def extract(self, session_id: str, fields: dict[str, Any], *, tenant: str, egress: Any = None, slot_wait_s: float | None = None,
                      url: str | None = None, timeout_s: float | None = None, settle_s: float = 2.0) -> dict[str, Any]:
        async with self.session(session_id, egress, tenant=tenant, slot_wait_s=slot_wait_s) as (s, _):
            page = None
            if url:
                page = await s.browse(url, timeout_s=self._clamp(timeout_s), settle_s=settle_s, wait_for=None,
                                      max_chars=50_000, max_links=0, screenshot=False)
                self.indexes.add(tenant, page["url"], page["title"], page["text"], page["evidence"]["fetched_at"])
            result = await s.extract(fields, timeout_s=self._clamp(timeout_s))
        return {**result, "evidence": page["evidence"] if page else None}

    async def crawl(self, session_id: str, url: str | list[str], *, tenant: str, egress: Any = None, slot_wait_s: float | None = None,
                    **options: Any) -> dict[str, Any]:
        async with self.session(session_id, egress, tenant=tenant, slot_wait_s=slot_wait_s) as (s, _):
            options["timeout_s"] = self._clamp(options.get("timeout_s"))
            return await crawl(s, functools.partial(self.indexes.add, tenant), url, **options)

    async def search_local(self, session_id: str | None, query: str, *, tenant: str, max_results: int = 10,
                           sites: list[str] | None = None) -> dict[str, Any]:
        """Search the pages `tenant` has read so far (`session_id` only routes the call to the
        task's replica)."""
        return {"results": self.indexes.search(tenant, query, max_results=max_results, sites=sites),
                "indexed_pages": self.indexes.pages(tenant)}

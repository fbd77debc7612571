"""One browser tab: navigation with a byte cap and clean timeouts, readable text, extraction."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page
from playwright.async_api import TimeoutError as PlaywrightTimeout

from tools.egress import EgressDenied, _redact
from tools.web import _js
from tools.web.errors import PageError

__all__ = ["Tab", "evidence"]

# After a click or submit, how long a navigation may take to start before we treat the
# action as in-page (JS) and only let the network settle.
_NAV_START_GRACE_S = 0.5


def evidence(url: str, title: str, text: str, status: int | None) -> dict[str, Any]:
    """What a report cites for a page: where, when, and a hash of exactly what was read."""
    return {
        "url": url,
        "title": title,
        "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "content_hash": "sha256:" + hashlib.sha256(text.encode()).hexdigest(),
        "status": status,
        "screenshot": None,
    }


class Tab:
    """A page plus a CDP byte counter: once a navigation has pulled `max_bytes`, loading stops
    and what has been parsed is what we read (`truncated`)."""

    def __init__(self, page: Page, *, max_bytes: int, refusals: list[EgressDenied]):
        self.page = page
        self.max_bytes = max_bytes
        self.refusals = refusals  # shared with the session; the proxy and route append
        self.bytes_in = 0
        self.capped = asyncio.Event()
        self.status: int | None = None
        self._cdp: Any = None
        self._pending: set[asyncio.Future] = set()

    async def attach(self) -> Tab:
        self._cdp = await self.page.context.new_cdp_session(self.page)
        self._cdp.on("Network.dataReceived", self._on_data)
        self._cdp.on("Network.responseReceived", self._on_response)
        await self._cdp.send("Network.enable")
        return self

    def _on_data(self, params: dict[str, Any]) -> None:
        self.bytes_in += int(params.get("encodedDataLength") or params.get("dataLength") or 0)
        if self.bytes_in > self.max_bytes:
            self._cap()

    def _on_response(self, params: dict[str, Any]) -> None:
        headers = {k.lower(): v for k, v in (params.get("response", {}).get("headers") or {}).items()}
        try:
            declared = int(headers.get("content-length", "0"))
        except ValueError:
            declared = 0
        if declared > self.max_bytes:  # refuse before the body arrives
            self._cap()

    def _cap(self) -> None:
        if not self.capped.is_set():
            self.capped.set()
            self._spawn(self._cdp.send("Page.stopLoading"))

    def _spawn(self, aw: Awaitable[Any]) -> None:
        # Fire-and-forget work whose failure (page gone) is expected; keep a reference so
        # it is not collected mid-flight, and retrieve its exception so none is logged.
        fut = asyncio.ensure_future(aw)
        self._pending.add(fut)
        fut.add_done_callback(lambda f: (self._pending.discard(f), f.cancelled() or f.exception()))

    async def close(self) -> None:
        with contextlib.suppress(PlaywrightError, asyncio.TimeoutError):
            await asyncio.wait_for(self.page.close(), 5)

    # -- navigation ----------------------------------------------------------------------------

    async def goto(self, url: str, *, timeout_s: float, settle_s: float, wait_for: str | None) -> dict[str, Any]:
        async def start() -> None:
            response = await self.page.goto(url, wait_until="commit", timeout=timeout_s * 1000)
            self.status = response.status if response else None
            verdict = response.headers.get("x-troupe-egress") if response else None
            if verdict == "refused":
                raise self._refusal(url) or PageError(f"egress refused for {_redact(url)}")
            if verdict == "failed":  # the proxy could not resolve or connect: no page to read
                raise PageError(f"could not load {_redact(url)}: {await response.text()}; check the URL or "
                                "retry later", retryable=True)

        return await self._navigate(url, start, timeout_s=timeout_s, settle_s=settle_s,
                                    wait_for=wait_for, expect_navigation=True)

    async def act(self, action: Callable[[], Awaitable[Any]], *, what: str, timeout_s: float,
                  settle_s: float) -> dict[str, Any]:
        """Run a click/submit and follow the navigation it may start."""
        return await self._navigate(what, action, timeout_s=timeout_s, settle_s=settle_s,
                                    wait_for=None, expect_navigation=False)

    async def _navigate(self, what: str, trigger: Callable[[], Awaitable[Any]], *, timeout_s: float,
                        settle_s: float, wait_for: str | None, expect_navigation: bool) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self.bytes_in = 0
        if expect_navigation:
            self.status = None  # a click that stays on the page keeps the page's status
        self.capped.clear()
        refusals_before = len(self.refusals)
        started, loaded = asyncio.Event(), asyncio.Event()

        def on_request(request: Any) -> None:
            if request.is_navigation_request() and request.frame == self.page.main_frame:
                started.set()

        def on_response(response: Any) -> None:
            if response.request.is_navigation_request() and response.frame == self.page.main_frame:
                self.status = response.status

        handlers = {"request": on_request, "response": on_response, "load": lambda _: loaded.set()}
        for event, fn in handlers.items():
            self.page.on(event, fn)
        phase = "trigger"
        try:
            await trigger()
            phase = "load"
            if not expect_navigation:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(started.wait(), _NAV_START_GRACE_S)
            complete = True
            if (expect_navigation or started.is_set()) and not self.capped.is_set():
                complete = await self._first(loaded, self.capped, until=deadline) is loaded
            if wait_for and not self.capped.is_set():
                phase = "wait_for"
                await self.page.wait_for_selector(wait_for, timeout=max(0.1, deadline - loop.time()) * 1000)
            elif settle_s > 0 and not self.capped.is_set():
                # JS-rendered pages fetch their content after `load`; give them until the
                # network is quiet, but never longer than settle_s.
                with contextlib.suppress(PlaywrightTimeout):
                    budget = min(settle_s, max(0.0, deadline - loop.time()))
                    await self.page.wait_for_load_state("networkidle", timeout=max(1, budget * 1000))
        except PlaywrightTimeout:
            if phase == "wait_for":
                raise PageError(f"{wait_for!r} did not appear within {timeout_s:g}s on {_redact(self.page.url)}; "
                                "check the selector or raise timeout_s", retryable=True) from None
            if phase == "trigger" and not expect_navigation:
                raise PageError(f"{what}: no element matched, or it never became visible and enabled, within "
                                f"{timeout_s:g}s; check the selector against the text and links browse returned"
                                ) from None
            raise PageError(f"timed out after {timeout_s:g}s loading {_redact(what)}; the server is slow or "
                            "unreachable; retry later or raise timeout_s", retryable=True) from None
        except PlaywrightError as exc:
            raise self._refusal(what, since=refusals_before) or self._nav_error(what, exc) from None
        finally:
            for event, fn in handlers.items():
                self.page.remove_listener(event, fn)
        return {"complete": complete and not self.capped.is_set(), "capped": self.capped.is_set()}

    async def _first(self, *events: asyncio.Event, until: float) -> asyncio.Event | None:
        waits = {asyncio.ensure_future(e.wait()): e for e in events}
        timeout = max(0.0, until - asyncio.get_running_loop().time())
        done, pending = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for fut in pending:
            fut.cancel()
        return waits[next(iter(done))] if done else None

    def _refusal(self, what: str, since: int = 0) -> EgressDenied | None:
        return self.refusals[-1] if len(self.refusals) > since else None

    def _nav_error(self, what: str, exc: PlaywrightError) -> PageError:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Download is starting" in text:
            return PageError(f"{_redact(what)} is a file download, and downloads are blocked; "
                             "fetch it with http_fetch instead")
        if "has been closed" in text or "Target crashed" in text:
            return PageError(f"the page crashed or was closed while loading {_redact(what)}; retry",
                             retryable=True)
        net = next((w for w in text.split() if w.startswith("net::ERR_")), None)
        if net:
            return PageError(f"could not load {_redact(what)}: {net}; check the URL or retry later",
                             retryable=net not in ("net::ERR_INVALID_URL", "net::ERR_UNSAFE_PORT"))
        return PageError(f"could not load {_redact(what)}: {text}", retryable=True)

    # -- reading -----------------------------------------------------------------------------------

    async def read(self, *, max_chars: int, max_links: int, timeout_s: float) -> dict[str, Any]:
        data = await self._eval(_js.READ, {"maxChars": max_chars, "maxLinks": max_links}, timeout_s)
        url = self.page.url
        return {
            "title": data["title"],
            "url": url,
            "status": self.status,
            "text": data["text"],
            "truncated": bool(data["truncated"] or self.capped.is_set()),
            "links": data["links"],
            "links_total": data["links_total"],
            "bytes": self.bytes_in,
            "evidence": evidence(url, data["title"], data["text"], self.status),
        }

    async def plain_text(self, *, max_chars: int, timeout_s: float) -> str:
        return await self._eval("(n) => document.body ? document.body.innerText.slice(0, n) : ''", max_chars, timeout_s)

    async def extract(self, spec: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        return await self._eval(_js.EXTRACT, spec, timeout_s)

    async def screenshot(self, *, full_page: bool, timeout_s: float, max_height: int = 8000) -> bytes:
        if full_page:
            height = await self._eval("() => document.documentElement.scrollHeight", None, timeout_s)
            width = self.page.viewport_size["width"] if self.page.viewport_size else 1280
            clip = {"x": 0, "y": 0, "width": width, "height": min(int(height or 1), max_height)}
            return await self.page.screenshot(full_page=True, clip=clip, timeout=timeout_s * 1000)
        return await self.page.screenshot(timeout=timeout_s * 1000)

    async def _eval(self, script: str, arg: Any, timeout_s: float) -> Any:
        # page.evaluate has no timeout of its own; a renderer stuck in a script loop would
        # hold the call forever.
        try:
            return await asyncio.wait_for(self.page.evaluate(script, arg), timeout_s)
        except TimeoutError:
            raise PageError(f"the page at {_redact(self.page.url)} stopped responding (a script is busy); "
                            "it will be reopened on the next call", retryable=True) from None
        except PlaywrightError as exc:
            msg = str(exc).splitlines()[0]
            if "SyntaxError" in msg or "is not a valid" in msg:
                raise PageError(f"invalid selector: {msg}; use CSS, or XPath starting with / or xpath=") from None
            raise PageError(f"reading {_redact(self.page.url)} failed: {msg}", retryable=True) from None

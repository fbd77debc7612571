"""Browser spans: one per pool operation (`browser.browse`, `browser.click`, ...), a child of the
tool call that asked for it when its carrier came along, else of its task's trace.

A span names the page's host, never its URL: a query string can hold a token or a session id,
and a span leaves the cluster. Errors are recorded by type for the same reason (a navigation
error quotes the URL)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry.trace import Span, StatusCode

from tools.web.urls import host_of
from troupe.tracing import span

__all__ = ["traced_op"]

# Operations whose first positional argument is the URL they open.
_URL_FIRST = ("browse", "crawl")


def _host(op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    url = args[0] if op in _URL_FIRST and args else kwargs.get("url")
    if isinstance(url, list):
        url = url[0] if url else None
    return host_of(url) or None if isinstance(url, str) else None


def _describe(s: Span, result: Any) -> None:
    """What came back, in attributes a trace viewer filters on."""
    if not isinstance(result, dict):
        return
    if isinstance(result.get("url"), str) and (host := host_of(result["url"])):
        s.set_attribute("server.address", host)  # after redirects: the host that answered
    if isinstance(result.get("status"), int):
        s.set_attribute("http.response.status_code", result["status"])
    if "new_session" in result:
        s.set_attribute("troupe.browser.new_session", bool(result["new_session"]))
    if isinstance(result.get("bytes"), int):
        s.set_attribute("troupe.browser.bytes", result["bytes"])
    if isinstance(result.get("pages"), list):  # crawl
        s.set_attribute("troupe.browser.pages", len(result["pages"]))
    if isinstance(result.get("results"), list):  # search_local
        s.set_attribute("troupe.browser.results", len(result["results"]))


async def traced_op(run: Callable[[], Awaitable[Any]], op: str, session_id: str, args: tuple[Any, ...],
                    kwargs: dict[str, Any], *, trace: dict[str, str] | None = None) -> Any:
    """`await run()` (the pool operation `op` on `session_id`, which is the task id) in its span."""
    with span(f"browser.{op}", parent=trace or None, task_id=session_id, record_exception=False,
              **{"troupe.browser.op": op, "troupe.tenant": kwargs.get("tenant"),
                 "server.address": _host(op, args, kwargs)}) as s:
        try:
            result = await run()
        except BaseException as exc:
            s.set_attribute("error.type", type(exc).__name__)
            s.set_status(StatusCode.ERROR, type(exc).__name__)
            raise
        _describe(s, result)
        return result

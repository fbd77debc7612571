"""Web research tools. They run wherever the tool runner is; the browser work happens in the pool
handed over as `ctx.extras["browser"]` (a `BrowserPool`, or a client of the BrowserPool
deployment), in the session named by the task id, on behalf of the task's tenant (whose own
search index alone `web_search` reads). `ctx.extras["egress"]`, when set, holds the
task's egress overrides, which may only narrow the deployment's policy.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import Field

from tools.registry import ToolContext, ToolError, tool
from tools.web.errors import PageError
from tools.web.extract import FieldSpec
from tools.web.search import ENV_SEARXNG_URL, searxng_search
from tools.workspace import resolve_inside

__all__ = ["browse", "click", "crawl", "extract", "fill", "screenshot", "submit", "web_search"]

Timeout = Annotated[float, Field(gt=0, le=120)]
Settle = Annotated[float, Field(ge=0, le=30)]
MaxChars = Annotated[int, Field(ge=0, le=200_000)]
MaxLinks = Annotated[int, Field(ge=0, le=1000)]


SLOT_MARGIN_S = 5.0
"""Room left after a slot wait and the operation's own timeout, for the result to travel back."""


def _pool(ctx: ToolContext) -> Any:
    pool = ctx.extras.get("browser")
    if pool is None:
        raise ToolError("no browser pool is available to this tool runner; compose the BrowserPool deployment "
                        "(deployments/browser.py) into the app and hand it to tools as extras['browser']")
    return pool


async def _call(ctx: ToolContext, op: str, *args: Any, **kwargs: Any) -> Any:
    """Run a pool operation for this task; a failure's Playwright trace becomes an artifact.
    Waiting for a browser slot ends in time for the operation to run before the caller's
    deadline: a wait cut off by the caller would leave a click in doubt though it never ran."""
    remaining = ctx.remaining_s()
    if remaining is not None:
        kwargs["slot_wait_s"] = max(0.0, remaining - float(kwargs.get("timeout_s") or 30.0) - SLOT_MARGIN_S)
    try:
        return await getattr(_pool(ctx), op)(ctx.task_id, *args, tenant=ctx.tenant, egress=ctx.extras.get("egress"),
                                              **kwargs)
    except PageError as exc:
        if not exc.trace:
            raise
        name = _artifact(ctx, f"trace-{ctx.node_id}", "zip", exc.trace)
        raise PageError(f"{exc.message} (Playwright trace saved as {name}; open it with "
                        f"`playwright show-trace {name}`)", retryable=exc.retryable) from None


def _artifact(ctx: ToolContext, stem: str, ext: str, data: bytes) -> str:
    """Write bytes into the task workspace under a fresh name; returns the relative name."""
    for n in range(1000):
        name = f"web/{stem}-a{ctx.attempt}{f'-{n}' if n else ''}.{ext}"
        path = resolve_inside(ctx.workspace, name)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return name
    raise ToolError(f"too many {stem} artifacts in the workspace; remove old ones from web/")


def _with_screenshot(ctx: ToolContext, page: dict[str, Any]) -> dict[str, Any]:
    png = page.pop("screenshot_png", None)
    if png:
        page["evidence"]["screenshot"] = _artifact(ctx, f"page-{ctx.node_id}", "png", png)
    return page


@tool(holds_session=True)
async def browse(
    ctx: ToolContext,
    url: str,
    wait_for: str | None = None,
    settle_s: Settle = 2.0,
    timeout_s: Timeout = 30.0,
    max_chars: MaxChars = 20_000,
    max_links: MaxLinks = 100,
    screenshot: bool = True,
) -> dict[str, Any]:
    """Open a URL in this task's browser session and return its title, readable text as Markdown, links and evidence.

    Args:
        url: Absolute http(s) URL.
        wait_for: CSS selector to wait for before reading (for pages that render late).
        settle_s: Longest wait after load for the network to go quiet so scripts can render.
        timeout_s: Longest wait for the page to load.
        max_chars: Most characters of text to return; `truncated` says when there was more.
        max_links: Most links to return.
        screenshot: Save a PNG of the viewport as an artifact (named in evidence.screenshot), so the console
            shows what the browser saw.
    """
    page = await _call(ctx, "browse", url, wait_for=wait_for, settle_s=settle_s, timeout_s=timeout_s,
                       max_chars=max_chars, max_links=max_links, screenshot=screenshot)
    return _with_screenshot(ctx, page)


@tool(side_effects=True, holds_session=True)
async def click(ctx: ToolContext, selector: str, settle_s: Settle = 2.0, timeout_s: Timeout = 10.0,
                max_chars: MaxChars = 20_000, screenshot: bool = True) -> dict[str, Any]:
    """Click an element on the session's current page and return the page as it is afterwards.

    Args:
        selector: CSS selector, `text=Sign in`, or XPath starting with //.
        settle_s: Longest wait for the network to go quiet after the click.
        timeout_s: Longest wait for the element and for any navigation it starts.
        max_chars: Most characters of text to return.
        screenshot: Save a PNG of the viewport afterwards as an artifact (named in evidence.screenshot).
    """
    return _with_screenshot(ctx, await _call(ctx, "click", selector, settle_s=settle_s, timeout_s=timeout_s,
                                             max_chars=max_chars, screenshot=screenshot))


@tool(holds_session=True)
async def fill(ctx: ToolContext, selector: str, value: str, timeout_s: Timeout = 10.0) -> dict[str, Any]:
    """Type a value into an input on the session's current page (the value is not echoed back).

    Args:
        selector: CSS selector of the input, e.g. `input[name=q]` (browse shows inputs as [input ... name="q"]).
        value: Text to enter; it replaces what the field held.
        timeout_s: Longest wait for the input to appear.
    """
    return await _call(ctx, "fill", selector, value, timeout_s=timeout_s)


@tool(side_effects=True, holds_session=True)
async def submit(ctx: ToolContext, selector: str = "form", settle_s: Settle = 2.0, timeout_s: Timeout = 30.0,
                 max_chars: MaxChars = 20_000, screenshot: bool = True) -> dict[str, Any]:
    """Submit a form on the session's current page and return the page that results.

    Args:
        selector: The form, or its submit button (which is then pressed).
        settle_s: Longest wait for the network to go quiet afterwards.
        timeout_s: Longest wait for the resulting page to load.
        max_chars: Most characters of text to return.
        screenshot: Save a PNG of the resulting viewport as an artifact (named in evidence.screenshot).
    """
    return _with_screenshot(ctx, await _call(ctx, "submit", selector, settle_s=settle_s, timeout_s=timeout_s,
                                             max_chars=max_chars, screenshot=screenshot))


@tool(holds_session=True)
async def screenshot(ctx: ToolContext, full_page: bool = False, timeout_s: Timeout = 20.0) -> dict[str, Any]:
    """Save a PNG of the session's current page as an artifact and return its name.

    Args:
        full_page: The whole page (up to 8000 px tall) instead of the viewport.
        timeout_s: Longest wait for the capture.
    """
    shot = await _call(ctx, "screenshot", full_page=full_page, timeout_s=timeout_s)
    name = _artifact(ctx, f"screenshot-{ctx.node_id}", "png", shot["png"])
    return {"name": name, "url": shot["url"], "bytes": len(shot["png"])}


@tool(holds_session=True)
async def extract(ctx: ToolContext, fields: dict[str, FieldSpec | str], url: str | None = None,
                  timeout_s: Timeout = 30.0) -> dict[str, Any]:
    """Extract named fields as JSON from a page, by CSS or XPath selectors.

    Args:
        fields: Name -> selector (`"h1"`, `"a.next @href"` for an attribute, `"//td[2]"`) or a spec
            {selector, attr, type: string|number|integer|boolean|object, many, fields, required}.
            With `fields`, each match yields an object of sub-fields read inside it.
        url: Open this URL first; default: the session's current page.
        timeout_s: Longest wait for the page and the extraction.
    """
    plain = {k: v.model_dump(exclude_none=True) if isinstance(v, FieldSpec) else v for k, v in fields.items()}
    return await _call(ctx, "extract", plain, url=url, timeout_s=timeout_s)


@tool(holds_session=True)
async def crawl(
    ctx: ToolContext,
    url: str | list[str],
    max_pages: Annotated[int, Field(ge=1, le=500)] = 20,
    max_depth: Annotated[int, Field(ge=0, le=10)] = 2,
    allow_subdomains: bool = False,
    concurrency: Annotated[int, Field(ge=1, le=8)] = 4,
    per_host_concurrency: Annotated[int, Field(ge=1, le=8)] = 2,
    timeout_s: Timeout = 15.0,
    settle_s: Settle = 0.0,
    max_chars: MaxChars = 1000,
) -> dict[str, Any]:
    """Crawl breadth-first from one or more URLs, staying within their domains and honoring robots.txt.

    Every page read is indexed for web_search and returned with its evidence.

    Args:
        url: Start URL, or a list of them (each site is crawled within its own domain).
        max_pages: Most pages to fetch in all.
        max_depth: Most links to follow away from a start URL (0 = only the start pages).
        allow_subdomains: Also follow links to subdomains (docs.example.com from example.com).
        concurrency: Pages loaded at once.
        per_host_concurrency: Pages loaded at once from one host.
        timeout_s: Longest wait for each page.
        settle_s: Wait after load for script-rendered content (0 = static pages, fastest).
        max_chars: Characters of each page's text to return (the index keeps more).
    """
    return await _call(ctx, "crawl", url, max_pages=max_pages, max_depth=max_depth,
                       allow_subdomains=allow_subdomains, concurrency=concurrency,
                       per_host_concurrency=per_host_concurrency, timeout_s=timeout_s, settle_s=settle_s,
                       max_chars=max_chars)


@tool(holds_session=True)
async def web_search(
    ctx: ToolContext,
    query: str,
    max_results: Annotated[int, Field(ge=1, le=50)] = 10,
    sites: list[str] | None = None,
    language: str | None = None,
    time_range: Literal["day", "week", "month", "year"] | None = None,
) -> dict[str, Any]:
    """Search the web (SearxNG) or, without a search engine configured, the pages already crawled or browsed.

    The result's `source` says which was searched.

    Args:
        query: What to search for.
        max_results: Most results to return.
        sites: Only results from these domains.
        language: Language code such as `en` (SearxNG only).
        time_range: Only recent results (SearxNG only).
    """
    base = os.environ.get(ENV_SEARXNG_URL, "").strip()
    if base:
        results = await searxng_search(base, query, max_results=max_results, sites=sites, language=language,
                                       time_range=time_range, timeout_s=15.0)
        return {"source": "searxng", "query": query, "results": results, "urls": [r["url"] for r in results]}
    found = await _pool(ctx).search_local(ctx.task_id, query, tenant=ctx.tenant, max_results=max_results,
                                          sites=sites)
    return {
        "source": "local_index",
        "note": f"{ENV_SEARXNG_URL} is not set, so this searched only the {found['indexed_pages']} pages your tasks "
                f"crawled or browsed here, not the web; crawl the relevant sites first, or set {ENV_SEARXNG_URL}",
        "query": query,
        "results": found["results"],
        "urls": [r["url"] for r in found["results"]],
    }

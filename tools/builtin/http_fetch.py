"""The `http_fetch` tool: GET a URL and return its readable text.

HTML is reduced to text with BeautifulSoup (pure Python, well kept) on lxml when it is
installed, else on the standard library's html.parser.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
from typing import Annotated, Any

import httpx
from pydantic import Field

from tools.egress import EgressPolicy
from tools.registry import ToolContext, ToolError, tool

__all__ = ["http_fetch"]

MAX_REDIRECTS = 5
USER_AGENT = "Troupe/0.1 (http_fetch tool)"
_HTML_PARSER = "lxml" if importlib.util.find_spec("lxml") else "html.parser"
_HTML_TYPES = {"text/html", "application/xhtml+xml"}
_TEXT_TYPES = {"application/json", "application/xml", "application/javascript", "application/x-ndjson"}


async def check_url(url: httpx.URL, policy: EgressPolicy) -> list[str]:
    """Refuse a URL before it is requested (first URL and every redirect); returns the
    addresses the policy checked, which are the only ones we connect to."""
    if url.scheme not in ("http", "https"):
        got = f"scheme {url.scheme!r}" if url.scheme else "no scheme"
        raise ToolError(f"only http and https URLs can be fetched; {str(url)!r} has {got}")
    if not url.host:
        raise ToolError(f"URL {str(url)!r} has no host; pass a full URL such as 'https://example.com/page'")
    return await policy.check_url(str(url))


def _pinned(client: httpx.AsyncClient, url: httpx.URL, address: str, headers: dict[str, str]) -> httpx.Request:
    """A request to `url` sent to `address`: the Host header and TLS name stay the URL's,
    so a second DNS answer (rebinding) cannot swap the checked address for another."""
    host_header = url.netloc.decode("ascii")
    return client.build_request("GET", url.copy_with(host=address), headers={**headers, "Host": host_header},
                                extensions={"sni_hostname": url.host})


async def _open(client: httpx.AsyncClient, url: str, headers: dict[str, str],
                policy: EgressPolicy) -> tuple[httpx.Response, httpx.URL]:
    """GET, following redirects by hand so that every hop passes `check_url`; returns the
    response and the URL it came from."""
    try:
        current = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ToolError(f"URL {url!r} is not valid ({exc}); pass a full http(s) URL") from None
    for _ in range(MAX_REDIRECTS + 1):
        addresses = await check_url(current, policy)
        response = await client.send(_pinned(client, current, addresses[0], headers), stream=True)
        location = response.headers.get("location")
        if not (response.is_redirect and location):
            return response, current
        await response.aclose()
        current = current.join(location)
    raise ToolError(f"{url} redirected more than {MAX_REDIRECTS} times; fetch the final URL directly")


async def _read_capped(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            return bytes(body[:max_bytes]), True
    return bytes(body), False


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset name Python does not know
        return body.decode("utf-8", errors="replace")


def _html_to_text(body: bytes, charset: str | None) -> tuple[str | None, str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(body, _HTML_PARSER, from_encoding=charset)
    title = " ".join(soup.title.get_text(" ").split()) if soup.title else None
    for tag in soup(["script", "style", "noscript", "template", "svg", "title"]):
        tag.decompose()
    lines = (" ".join(line.split()) for line in soup.get_text("\n").splitlines())
    return title or None, "\n".join(line for line in lines if line)


@tool
async def http_fetch(
    ctx: ToolContext,
    url: str,
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 20,
    max_bytes: Annotated[int, Field(gt=0, le=50_000_000)] = 2_000_000,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Fetch a web page or file over HTTP(S) and return its text and metadata.

    HTML comes back as readable text (scripts and styles removed) with its title; other
    text and JSON come back decoded; binary content comes back as size and sha256 only.

    Args:
        url: The http or https URL to GET.
        timeout_s: Limit in seconds for the whole fetch, redirects and body included.
        max_bytes: Read at most this many bytes of the body; more sets `truncated`.
        headers: Extra request headers, e.g. {"Accept": "application/json"}.
    """
    request_headers = {"User-Agent": USER_AGENT, **(headers or {})}
    # The deployment's policy (TROUPE_EGRESS_*), narrowed by the task's own overrides.
    policy = EgressPolicy.from_env().restricted(ctx.extras.get("egress"))
    try:
        async with asyncio.timeout(timeout_s), httpx.AsyncClient(timeout=timeout_s) as client:
            response, final_url = await _open(client, url, request_headers, policy)
            try:
                if response.status_code >= 400:
                    code = response.status_code
                    raise ToolError(
                        f"GET {final_url} returned HTTP {code} {response.reason_phrase}",
                        retryable=code == 429 or code >= 500,
                    )
                body, truncated = await _read_capped(response, max_bytes)
            finally:
                await response.aclose()
    except (TimeoutError, httpx.TimeoutException):
        raise ToolError(
            f"GET {url} took longer than {timeout_s:g} s; try again or pass a larger timeout_s", retryable=True
        ) from None
    except httpx.HTTPError as exc:
        raise ToolError(f"GET {url} failed: {type(exc).__name__}: {exc}", retryable=True) from None

    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    charset = response.charset_encoding
    title = text = None
    if media_type in _HTML_TYPES:
        title, text = await asyncio.to_thread(_html_to_text, body, charset)
    elif media_type.startswith("text/") or media_type in _TEXT_TYPES or media_type.endswith(("+json", "+xml")):
        text = _decode(body, charset)
    return {
        "url": url,
        "final_url": str(final_url),
        "status": response.status_code,
        "content_type": media_type or None,
        "title": title,
        "text": text,
        "bytes": len(body),
        "truncated": truncated,
        "sha256": hashlib.sha256(body).hexdigest(),
    }

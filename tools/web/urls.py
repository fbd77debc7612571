"""URL normalization for crawl dedupe, and the crawl scope."""

from __future__ import annotations

import posixpath
import re
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

__all__ = ["host_of", "in_scope", "looks_like_file", "normalize_url", "scope_host"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Query parameters that only track clicks; two URLs differing in them are the same page.
_TRACKING = re.compile(r"^(utm_[a-z]+|fbclid|gclid|msclkid|mc_cid|mc_eid|_ga|ref_src)$", re.I)
# Links to files the browser would download (downloads are blocked) or can't read as text.
_FILE_EXT = re.compile(
    r"\.(pdf|zip|gz|tgz|bz2|xz|7z|rar|tar|exe|msi|dmg|iso|bin|apk|deb|rpm|png|jpe?g|gif|webp|svg|ico|bmp|tiff?"
    r"|mp[34]|m4a|wav|ogg|webm|avi|mov|mkv|flac|woff2?|ttf|otf|eot|css|js|mjs|wasm|docx?|xlsx?|pptx?|csv)$",
    re.I,
)
_SAFE_PATH = "/:@!$&'()*+,;=-._~"


def normalize_url(url: str) -> str | None:
    """A canonical form for dedupe (None when not http(s)): lower-case scheme and host, no
    default port, no fragment, dot segments resolved, escapes normalized, tracking
    parameters dropped and the query sorted."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname.rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = parts.path or "/"
    trailing = path.endswith("/")
    path = posixpath.normpath(path)
    if path.startswith("//"):  # normpath keeps a leading double slash (POSIX allows it)
        path = "/" + path.lstrip("/")
    if trailing and path != "/":
        path += "/"
    path = quote(unquote(path), safe=_SAFE_PATH)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _TRACKING.match(k)]
    return urlunsplit((scheme, netloc, path, urlencode(sorted(query)), ""))


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").rstrip(".").lower()


def scope_host(url: str) -> str:
    """The domain a crawl from `url` stays in: its host without a leading `www.`."""
    return host_of(url).removeprefix("www.")


def in_scope(url: str, scopes: set[str], *, subdomains: bool) -> bool:
    host = host_of(url).removeprefix("www.")
    return host in scopes or (subdomains and any(host.endswith("." + s) for s in scopes))


def looks_like_file(url: str) -> bool:
    return bool(_FILE_EXT.search(urlsplit(url).path))

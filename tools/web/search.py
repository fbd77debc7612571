"""Search: SearxNG's JSON API when configured, else BM25 over the pages this process has read
for the same tenant (each tenant has an index of its own; none ever sees another's pages)."""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from tools.registry import ToolError
from tools.web.urls import host_of

__all__ = ["ENV_SEARXNG_URL", "PageIndex", "TenantIndexes", "searxng_search"]

ENV_SEARXNG_URL = "TROUPE_SEARXNG_URL"

_WORD = re.compile(r"\w+", re.UNICODE)
_STOP = frozenset("a an and are as at be by for from has have in is it its of on or that the this to was were "
                  "will with what which who how why when where".split())


def _terms(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1]


@dataclass
class _Doc:
    url: str
    title: str
    text: str
    fetched_at: str
    tf: Counter
    length: int


class PageIndex:
    """In-memory BM25 over read pages, newest `max_docs` kept; re-reading a URL replaces it."""

    def __init__(self, max_docs: int = 5000, *, k1: float = 1.5, b: float = 0.75):
        self._docs: OrderedDict[str, _Doc] = OrderedDict()
        self._df: Counter = Counter()
        self._total_len = 0
        self._max = max_docs
        self._k1, self._b = k1, b

    def __len__(self) -> int:
        return len(self._docs)

    def __contains__(self, url: object) -> bool:
        return url in self._docs

    def add(self, url: str, title: str, text: str, fetched_at: str) -> None:
        if not text and not title:
            return
        self._remove(url)
        terms = _terms(title) * 3 + _terms(text)  # a title word says more than a body word
        doc = _Doc(url, title, text, fetched_at, Counter(terms), len(terms))
        self._docs[url] = doc
        self._df.update(doc.tf.keys())
        self._total_len += doc.length
        while len(self._docs) > self._max:
            self._remove(next(iter(self._docs)))

    def _remove(self, url: str) -> None:
        doc = self._docs.pop(url, None)
        if doc is not None:
            self._df.subtract(doc.tf.keys())
            self._total_len -= doc.length

    def search(self, query: str, *, max_results: int = 10, sites: list[str] | None = None) -> list[dict[str, Any]]:
        q = list(dict.fromkeys(_terms(query)))
        if not q or not self._docs:
            return []
        n = len(self._docs)
        avg = self._total_len / n or 1
        idf = {t: math.log(1 + (n - self._df[t] + 0.5) / (self._df[t] + 0.5)) for t in q}
        scored = []
        for doc in self._docs.values():
            if sites and not _on_sites(doc.url, sites):
                continue
            score = 0.0
            for t in q:
                f = doc.tf.get(t, 0)
                if f:
                    score += idf[t] * f * (self._k1 + 1) / (f + self._k1 * (1 - self._b + self._b * doc.length / avg))
            if score > 0:
                scored.append((score, doc))
        scored.sort(key=lambda x: -x[0])
        return [{"url": d.url, "title": d.title, "snippet": _snippet(d.text, q), "score": round(s, 3),
                 "fetched_at": d.fetched_at} for s, d in scored[:max_results]]


class TenantIndexes:
    """One `PageIndex` per tenant, with `max_docs` pages in all: past it, the page read
    longest ago (whichever tenant read it) goes first, so memory stays bounded."""

    def __init__(self, max_docs: int = 5000):
        self._max = max_docs
        self._indexes: dict[str, PageIndex] = {}
        self._order: OrderedDict[tuple[str, str], None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._order)

    def pages(self, tenant: str) -> int:
        return len(self._indexes.get(tenant, ()))

    def add(self, tenant: str, url: str, title: str, text: str, fetched_at: str) -> None:
        index = self._indexes.setdefault(tenant, PageIndex(self._max))
        index.add(url, title, text, fetched_at)
        key = (tenant, url)
        self._order.pop(key, None)
        if url in index:  # an empty page is not indexed
            self._order[key] = None
        while len(self._order) > self._max:
            old_tenant, old_url = self._order.popitem(last=False)[0]
            self._indexes[old_tenant]._remove(old_url)
            if not self._indexes[old_tenant]:
                del self._indexes[old_tenant]

    def search(self, tenant: str, query: str, *, max_results: int = 10,
               sites: list[str] | None = None) -> list[dict[str, Any]]:
        index = self._indexes.get(tenant)
        return index.search(query, max_results=max_results, sites=sites) if index is not None else []


def _on_sites(url: str, sites: list[str]) -> bool:
    """Whether `url` is on one of `sites` (domains, subdomains included; a port, when given, must match)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").removeprefix("www.")
    for site in sites:
        spec = urlsplit(site if "://" in site else f"http://{site}")
        s = (spec.hostname or "").removeprefix("www.")
        if (host == s or host.endswith("." + s)) and (spec.port is None or spec.port == parts.port):
            return True
    return False


def _snippet(text: str, terms: list[str], width: int = 240) -> str:
    low = text.lower()
    hits = [i for t in terms if (i := low.find(t)) >= 0]
    start = max(0, min(hits) - width // 4) if hits else 0
    body = " ".join(text[start:start + width].split())
    return ("…" if start else "") + body + ("…" if start + width < len(text) else "")


async def searxng_search(base_url: str, query: str, *, max_results: int, sites: list[str] | None,
                         language: str | None, time_range: str | None, timeout_s: float) -> list[dict[str, Any]]:
    """Query SearxNG (one request per site when sites are given, merged by rank)."""
    queries = [f"{query} site:{host_of(s if '://' in s else 'http://' + s)}" for s in sites] if sites else [query]
    # The SearxNG endpoint is operator configuration, not a model's choice, so it is not
    # subject to the egress policy (it usually lives on a private address).
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
        batches = await asyncio.gather(*(
            _searx_one(client, base_url, q, language, time_range) for q in queries))
    merged: list[dict[str, Any]] = []
    seen: set[str] = set()
    for rank in range(max(map(len, batches), default=0)):  # interleave so every site gets a say
        for batch in batches:
            if rank < len(batch) and batch[rank]["url"] not in seen:
                seen.add(batch[rank]["url"])
                merged.append(batch[rank])
    return merged[:max_results]


async def _searx_one(client: httpx.AsyncClient, base_url: str, query: str, language: str | None,
                     time_range: str | None) -> list[dict[str, Any]]:
    params = {"q": query, "format": "json"}
    if language:
        params["language"] = language
    if time_range:
        params["time_range"] = time_range
    try:
        resp = await client.get(base_url.rstrip("/") + "/search", params=params)
    except httpx.HTTPError as exc:
        raise ToolError(f"SearxNG at {ENV_SEARXNG_URL} is unreachable ({type(exc).__name__}); "
                        "check that it runs, or unset it to search crawled pages", retryable=True) from None
    if resp.status_code == 403:
        raise ToolError("SearxNG refused format=json; add `json` to search.formats in its settings.yml")
    if resp.status_code != 200:
        raise ToolError(f"SearxNG answered HTTP {resp.status_code}; retry later", retryable=resp.status_code >= 500)
    try:
        results = resp.json().get("results", [])
    except ValueError:
        raise ToolError(f"SearxNG did not return JSON; check that {ENV_SEARXNG_URL} points at its base URL") from None
    return [{"url": r.get("url"), "title": r.get("title", ""), "snippet": r.get("content", ""),
             "engines": r.get("engines", []), "published": r.get("publishedDate")}
            for r in results if r.get("url")]

"""The `summarize` tool: an extractive, cited summary of fetched pages (the offline writer).

Deterministic: the same pages and focus always give the same summary. Each page's sentences
are scored by how central their words are to the page, how well they match the focus, and how
early they come; the best are kept (every page gets a say before any page gets a second),
near-repeats dropped, and written in page order, each with the `[n]` of its page.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Annotated, Any

from pydantic import Field

from tools.registry import ToolContext, ToolError, tool
from troupe.text import markdown_to_plain, split_sentences, strip_citations

__all__ = ["summarize", "summarize_pages"]

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_STOP = frozenset(
    "a about above after again all also am an and any are as at be because been before being below between "
    "both but by can could did do does doing down during each few for from further had has have having he her "
    "here hers him his how i if in into is it its itself just me more most my no nor not now of off on once "
    "only or other our ours out over own same she should so some such than that the their theirs them then "
    "there these they this those through to too under until up very was we were what when where which while "
    "who whom why will with would you your yours page pages site website".split()
)
_END = re.compile(r"([.!?][\"')\]]*)$")
_MIN_WORDS, _MAX_WORDS = 5, 60
_REDUNDANT = 0.6  # Jaccard overlap of content words above which a sentence repeats one already kept
_PASSAGE_CHARS = 1200


def _terms(text: str) -> list[str]:
    out = []
    for w in _WORD.findall(text.lower()):
        if w in _STOP or len(w) < 2:
            continue
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]  # a plural and its singular count as one word
        out.append(w)
    return out


def _source(page: Any) -> dict[str, Any]:
    """One source from the output of crawl (a page), browse or http_fetch."""
    if not isinstance(page, dict):
        raise ToolError(f"each page must be an object with url and text (a crawl page, or a browse or "
                        f"http_fetch output); got {type(page).__name__}")
    evidence = page.get("evidence") or {}
    url = evidence.get("url") or page.get("final_url") or page.get("url")
    if not url:
        raise ToolError("a page has no url; pass crawl's `pages`, or browse / http_fetch outputs")
    content_hash = evidence.get("content_hash") or (f"sha256:{page['sha256']}" if page.get("sha256") else None)
    return {"url": url, "title": (evidence.get("title") or page.get("title") or "").strip() or url,
            "fetched_at": evidence.get("fetched_at") or page.get("fetched_at"), "content_hash": content_hash,
            "text": page.get("text") or ""}


def _candidates(text: str) -> list[tuple[str, str]]:
    """(sentence, its paragraph) pairs worth quoting; headings and fragments are left out."""
    found, loose = [], []
    for paragraph in markdown_to_plain(text).splitlines():
        if not paragraph or paragraph.startswith("#"):
            continue
        for sentence in split_sentences(paragraph):
            sentence = strip_citations(sentence)  # a page's own footnote markers would read as ours
            words = len(sentence.split())
            if not _MIN_WORDS <= words <= _MAX_WORDS or len(_terms(sentence)) < 3:
                continue
            (found if _END.search(sentence) else loose).append((sentence, paragraph[:_PASSAGE_CHARS]))
    return found or loose  # a page of bare list items still gets summarized


def _with_marker(sentence: str, n: int) -> str:
    m = _END.search(sentence)
    return f"{sentence[:m.start()]} [{n}]{m.group(1)}" if m else f"{sentence} [{n}]"


def _source_line(s: dict[str, Any]) -> str:
    details = [f"fetched {s['fetched_at']}" if s["fetched_at"] else "", s["content_hash"] or ""]
    details = [d for d in details if d]
    return f"[{s['n']}] {s['title']} — {s['url']}" + (f" ({', '.join(details)})" if details else "")


def summarize_pages(pages: list[Any], focus: str = "", max_sentences: int = 8) -> dict[str, Any]:
    """The summary as `summarize` returns it; plain Python for tests and other writers."""
    sources, skipped, seen_urls = [], [], set()
    for page in pages:
        s = _source(page)
        if s["url"] in seen_urls:
            continue
        seen_urls.add(s["url"])
        (sources if s["text"].strip() else skipped).append(s)
    for n, s in enumerate(sources, start=1):
        s["n"] = n

    # Score every candidate sentence: centrality in its page + focus match + an early-position bonus.
    focus_terms = set(_terms(focus))
    scored: list[dict[str, Any]] = []
    for s in sources:
        cands = _candidates(s["text"])
        if not cands:
            skipped.append(s)
            continue
        tf = Counter(t for sentence, _ in cands for t in set(_terms(sentence)))
        top = max(tf.values())
        for pos, (sentence, passage) in enumerate(cands):
            terms = set(_terms(sentence))
            centrality = sum(tf[t] / top for t in terms) / math.sqrt(len(terms))
            hit = len(terms & focus_terms) / len(focus_terms) if focus_terms else 0.0
            scored.append({"source": s, "pos": pos, "sentence": sentence, "passage": passage, "terms": terms,
                           "score": centrality + 3.0 * hit + 0.5 / (1 + pos)})
    ranked = sorted(scored, key=lambda c: (-round(c["score"], 9), c["source"]["n"], c["pos"]))

    # Round-robin over the pages, best sentence first within each page, so every page gets a
    # say before any page gets a second; with a focus, sentences that match it go first.
    kept: list[dict[str, Any]] = []
    groups = [[c for c in ranked if c["terms"] & focus_terms], [c for c in ranked if not c["terms"] & focus_terms]]
    for group in groups if focus_terms else [ranked]:
        queues = [[c for c in group if c["source"] is s] for s in sources]
        while len(kept) < max_sentences and any(queues):
            for queue in queues:
                while queue and len(kept) < max_sentences:
                    c = queue.pop(0)
                    if not any(len(c["terms"] & k["terms"]) / len(c["terms"] | k["terms"]) > _REDUNDANT
                               for k in kept):
                        kept.append(c)
                        break
    kept.sort(key=lambda c: (c["source"]["n"], c["pos"]))

    cited = [s for s in sources if any(c["source"] is s for c in kept)]
    blocks = []
    for s in cited:  # a heading per page when there are several; the Sources list names a single one
        sentences = " ".join(_with_marker(c["sentence"], s["n"]) for c in kept if c["source"] is s)
        blocks.append(f"## {s['title']}\n\n{sentences}" if len(cited) > 1 else sentences)
    body = "\n\n".join(blocks) or "The pages hold no sentences to summarize."
    source_list = "\n".join(_source_line(s) for s in cited)
    markdown = body + (f"\n\n## Sources\n\n{source_list}" if cited else "")
    return {
        "focus": focus,
        "markdown": markdown,
        "body": body,
        "evidence": [{"n": c["source"]["n"], "sentence": c["sentence"], "url": c["source"]["url"],
                      "passage": c["passage"]} for c in kept],
        "sources": [{k: s[k] for k in ("n", "url", "title", "fetched_at", "content_hash")} for s in cited],
        "skipped": [{"url": s["url"], "reason": "no readable sentences"} for s in skipped],
    }


@tool
async def summarize(
    ctx: ToolContext,
    pages: list[dict[str, Any]] | dict[str, Any],
    focus: str = "",
    max_sentences: Annotated[int, Field(ge=1, le=50)] = 8,
) -> dict[str, Any]:
    """Write an extractive summary of fetched pages in which every sentence cites its page as [n].

    Deterministic and model-free: sentences are quoted from the pages, never rewritten. Returns
    `markdown` (the summary and its Sources list: URL, title, fetch time, content hash),
    `evidence` (n, sentence, url, and the passage it was quoted from) and `sources`.

    Args:
        pages: The pages to summarize: crawl's `pages`, or one or a list of browse / http_fetch outputs.
        focus: What the summary should favour, in a few words; empty for a general summary.
        max_sentences: Sentences in the summary, across all pages.
    """
    return summarize_pages([pages] if isinstance(pages, dict) else pages, focus, max_sentences)

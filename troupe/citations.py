"""The `citations_supported` check: every cited sentence of a report is supported by its source.

A report is Markdown whose sentences carry `[n]` markers and whose lines starting with `[n]`
(usually under a "Sources" heading) say what each `[n]` is. The sources' text comes from node
outputs, never from the writer's own account of them: a record is a dict with `text` (or
`passage` / `content`) identified by `url`, `final_url`, `evidence.url` or `doc_id`; `[n]`
resolves to the records whose URL or doc id appears on its source line (or, for a report
without source lines, whose `n` is n).

A cited sentence is supported by source n when it occurs in n's text word for word, or when
some sentence (or pair of adjacent sentences) of n's text is close in meaning: cosine similarity
of their embeddings at least `threshold`. Numbers matter more than embeddings notice ("4.2
million" and "9 million" read alike), so every number in the sentence must also occur in the
source passages that match it. A sentence citing several sources must be supported by each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from troupe.embeddings import Embedder
from troupe.text import CITATION, markdown_to_plain, numbers, split_sentences, strip_citations

__all__ = ["DEFAULT_THRESHOLD", "Claim", "Support", "check_support", "cited_claims", "resolve", "source_lines"]

DEFAULT_THRESHOLD = 0.6
_SOURCE_LINE = re.compile(r"^\s*(?:[-*]\s+)?\[(\d{1,4})\]:?\s+(\S.*)$")
_FENCE = re.compile(r"^(```|~~~).*?^\1[~`]*\s*$", re.MULTILINE | re.DOTALL)
_URL = re.compile(r"https?://[^\s<>\"'`]+")
_WORDS = re.compile(r"\w+")
_CLAUSE = re.compile(r"[,;:]\s+(?:and|but|while|whereas|so|which)?\s*|\s+(?:and|but|while|whereas)\s+")
_SHORTLIST = 64  # source windows embedded per claim, picked by shared words first


@dataclass
class Claim:
    text: str
    """The sentence without its markers."""
    markers: list[int]


@dataclass
class Support:
    """How well one source supports one claim."""

    n: int
    score: float
    verbatim: bool = False
    best: str = ""
    missing_numbers: list[str] = field(default_factory=list)


def source_lines(report: str) -> dict[int, str]:
    """`[n] ...` lines: what each marker stands for."""
    out: dict[int, str] = {}
    for line in _FENCE.sub("", report).splitlines():
        m = _SOURCE_LINE.match(line)
        if m:
            out.setdefault(int(m.group(1)), m.group(2).strip())
    return out


def cited_claims(report: str) -> list[Claim]:
    """Sentences of the report that carry `[n]` markers; headings and source lines are not claims."""
    claims = []
    for line in _FENCE.sub("", report).splitlines():
        if line.lstrip().startswith("#") or _SOURCE_LINE.match(line):
            continue
        for paragraph in markdown_to_plain(line).splitlines():
            for sentence in split_sentences(paragraph):
                markers = [int(n) for n in CITATION.findall(sentence)]
                text = strip_citations(sentence)
                if markers and _WORDS.search(text):
                    claims.append(Claim(text, list(dict.fromkeys(markers))))
    return claims


def _canon(text: str) -> str:
    return " ".join(_WORDS.findall(text.lower()))


def _clean_url(url: str) -> str:
    return url.rstrip(".,;:)]}").rstrip("/")


def _record_ids(record: dict[str, Any]) -> tuple[set[str], set[str]]:
    evidence = record.get("evidence") if isinstance(record.get("evidence"), dict) else {}
    urls = {_clean_url(str(u)) for u in (record.get("url"), record.get("final_url"), evidence.get("url")) if u}
    docs = {str(record["doc_id"])} if record.get("doc_id") else set()
    return urls, docs


def _cites(record: dict[str, Any], line_urls: set[str], line_words: set[str]) -> bool:
    urls, docs = _record_ids(record)
    return bool(urls & line_urls or docs & line_words)


def _record_text(record: dict[str, Any]) -> str:
    for key in ("text", "passage", "content"):
        if isinstance(record.get(key), str) and record[key].strip():
            return record[key]
    return ""


def resolve(markers: set[int], lines: dict[int, str],
            records: list[dict[str, Any]]) -> tuple[dict[int, str], list[str]]:
    """Each marker's source text, and a problem for each marker that cannot be resolved."""
    texts: dict[int, str] = {}
    problems = []
    for n in sorted(markers):
        if n in lines:
            line = lines[n]
            line_urls = {_clean_url(u) for u in _URL.findall(line)}
            line_words = set(_WORDS.findall(line))
            matched = [r for r in records if _cites(r, line_urls, line_words)]
            if not matched:
                problems.append(f"[{n}] cites {line[:120]!r}, but no source record has that URL or doc id")
                continue
        else:
            matched = [r for r in records if str(r.get("n")) == str(n)]
            if not matched:
                problems.append(f"[{n}] is cited but the report lists no source [{n}]")
                continue
        text = "\n\n".join(t for t in map(_record_text, matched) if t)
        if not text:
            problems.append(f"[{n}]'s source has no text to check against")
            continue
        texts[n] = text
    return texts, problems


def _clauses(sentence: str) -> list[str]:
    """The clauses of a long sentence ("X starts in May, and results come in autumn"), so a claim
    that restates one of them is compared with it rather than with the whole sentence."""
    parts = [p.strip() for p in _CLAUSE.split(sentence)]
    return [p for p in parts if len(p.split()) >= 4] if len(parts) > 1 else []


class _Source:
    """One source's text cut into windows (sentences and adjacent pairs), embedded on demand."""

    def __init__(self, text: str):
        plain = markdown_to_plain(text)
        self.canon = _canon(strip_citations(plain))
        windows: list[str] = []
        for paragraph in plain.splitlines():
            if not paragraph or paragraph.startswith("#"):
                continue
            sentences = [strip_citations(s) for s in split_sentences(paragraph)]
            windows += sentences + [f"{a} {b}" for a, b in zip(sentences, sentences[1:])]
            windows += [c for s in sentences for c in _clauses(s)]
        self.windows = list(dict.fromkeys(w for w in windows if _WORDS.search(w)))
        self.words = [set(_canon(w).split()) for w in self.windows]
        self.vectors: dict[int, np.ndarray] = {}

    def shortlist(self, claim: str) -> list[int]:
        words = set(_canon(claim).split())
        order = sorted(range(len(self.windows)), key=lambda i: (-len(words & self.words[i]), i))
        return order[:_SHORTLIST]

    def embed(self, embedder: Embedder, indexes: list[int]) -> np.ndarray:
        todo = [i for i in indexes if i not in self.vectors]
        if todo:
            for i, v in zip(todo, embedder.embed([self.windows[i] for i in todo])):
                self.vectors[i] = v
        return np.vstack([self.vectors[i] for i in indexes])


def _support(claim: Claim, n: int, source: _Source, embedder: Embedder, threshold: float,
             check_numbers: bool) -> Support:
    canon = _canon(claim.text)
    if len(canon.split()) >= 3 and f" {canon} " in f" {source.canon} ":
        return Support(n, 1.0, verbatim=True)
    if not source.windows:
        return Support(n, 0.0)
    indexes = source.shortlist(claim.text)
    sims = source.embed(embedder, indexes) @ embedder.embed([claim.text])[0]
    best = int(np.argmax(sims))
    result = Support(n, float(sims[best]), best=source.windows[indexes[best]])
    if check_numbers and result.score >= threshold:
        matching = " ".join(source.windows[i] for i, s in zip(indexes, sims) if s >= threshold)
        result.missing_numbers = sorted(numbers(claim.text) - numbers(matching))
    return result


def check_support(report: str, records: list[dict[str, Any]], embedder: Embedder, *,
                  threshold: float = DEFAULT_THRESHOLD, check_numbers: bool = True,
                  min_citations: int = 1, found: list[dict[str, Any]] | None = None) -> tuple[bool, str]:
    """(passed, reason) for the report's cited sentences against the source records; each
    citation checked is added to `found` (claim, its source line, the best passage, score)."""
    claims = cited_claims(report)
    if len(claims) < min_citations:
        return False, (f"the report has {len(claims)} cited sentences, need at least {min_citations}: "
                       "no sentence carries an [n] marker")
    lines = source_lines(report)
    texts, problems = resolve({n for c in claims for n in c.markers}, lines, records)
    sources = {n: _Source(t) for n, t in texts.items()}
    supports: list[Support] = []
    for claim in claims:
        for n in claim.markers:
            if n not in sources:
                continue
            s = _support(claim, n, sources[n], embedder, threshold, check_numbers)
            supports.append(s)
            if found is not None:
                found.append({"n": n, "claim": claim.text[:300], "source": lines.get(n, "")[:300],
                              "passage": (claim.text if s.verbatim else s.best)[:300], "verbatim": s.verbatim,
                              "score": round(float(s.score), 3),
                              "supported": s.score >= threshold and not s.missing_numbers})
            if s.score < threshold:
                problems.append(f"[{n}] does not support {claim.text[:160]!r} (best match {s.score:.2f} < "
                                f"{threshold:.2f}: {s.best[:120]!r})")
            elif s.missing_numbers:
                problems.append(f"[{n}] does not support {claim.text[:160]!r}: its numbers "
                                f"{', '.join(s.missing_numbers)} are not in the passages of [{n}] that match it")
    if problems:
        return False, f"{len(problems)} unsupported: " + "; ".join(problems)
    verbatim = sum(s.verbatim for s in supports)
    weakest = min((s for s in supports if not s.verbatim), key=lambda s: s.score, default=None)
    detail = f"; lowest similarity {weakest.score:.2f} ([{weakest.n}])" if weakest else ""
    return True, (f"{len(claims)} cited sentences, each supported by its source "
                  f"({verbatim} of {len(supports)} citations verbatim{detail})")

"""Plain text out of Markdown, sentences, and `[n]` citation markers.

The extractive writer (`tools/builtin/summarize.py`) and the `citations_supported` check both
use these, so the writer and its checker agree on what a sentence is.
"""

from __future__ import annotations

import re

__all__ = ["CITATION", "markdown_to_plain", "normalise", "numbers", "split_sentences", "strip_citations"]

CITATION = re.compile(r"\[(\d{1,4})\]")
"""A citation marker such as `[3]`."""

_FENCE = re.compile(r"^(```|~~~).*?^\1[~`]*\s*$", re.MULTILINE | re.DOTALL)
_IMAGE = re.compile(r"!\[([^\]]*)\](\([^)]*\))?")
_LINK = re.compile(r"\[([^\]]+)\]\((?:[^()\s]|\([^()]*\))+\)")
_EMPHASIS = re.compile(r"\*\*(.+?)\*\*|__(.+?)__|(?<![\w*])\*(?=\S)([^*]+?)\*|(?<!\w)_(?=\S)([^_]+?)_(?!\w)")
_BULLET = re.compile(r"^\s*(?:[-*+]|\d{1,3}[.)])\s+")
_CODE = re.compile(r"`([^`]*)`")
# A sentence ends at . ! or ? (optionally closed by a quote or bracket, or followed by citation
# markers) before whitespace and an opening capital, digit, quote or bracket.
_BOUNDARY = re.compile(r"(?<=[.!?])((?:\s*\[\d{1,4}\])*)[\"')\]]?\s+(?=[A-Z0-9\"'(]|\[(?!\d{1,4}\]))")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "Mr.", "Mrs.", "Ms.", "Dr.", "St.", "No.", "Fig.", "cf.", "approx.")
_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")


def normalise(text: str) -> str:
    """Whitespace collapsed, so text can be compared across line breaks."""
    return " ".join(text.split())


def markdown_to_plain(text: str) -> str:
    """Readable text from Markdown (as the browser tools return pages): code blocks, tables,
    images and rules dropped; links, emphasis and inline code reduced to their text. Lines
    are kept, so paragraphs stay apart."""
    text = _FENCE.sub("", text)
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|") or stripped in ("---", "***", "___"):
            lines.append("")
            continue
        line = _IMAGE.sub(lambda m: m.group(1), line)
        line = _LINK.sub(lambda m: m.group(1), line)
        line = _CODE.sub(lambda m: m.group(1), line)
        line = _EMPHASIS.sub(lambda m: next(g for g in m.groups() if g is not None), line)
        line = _BULLET.sub("", line).lstrip("> ").strip()
        lines.append(" ".join(line.split()))
    return "\n".join(lines)


def split_sentences(text: str) -> list[str]:
    """Sentences of one paragraph of plain text; citation markers after a full stop stay with
    the sentence they follow ("Claim. [1] Next." gives "Claim. [1]" and "Next.")."""
    text = normalise(text)
    if not text:
        return []
    pieces, start = [], 0
    for m in _BOUNDARY.finditer(text):
        head = text[start:m.start()]
        if head.endswith(_ABBREVIATIONS) or re.search(r"(?:^|\s)[A-Z]\.$", head):
            continue  # "e.g. Foo" or an initial ("J. Smith"): not the end of a sentence
        end = m.end(1) if m.group(1) else m.start()
        pieces.append(text[start:end + (1 if text[end:end + 1] in "\"')]" else 0)].strip())
        start = m.end()
    pieces.append(text[start:].strip())
    return [p for p in pieces if p]


def strip_citations(sentence: str) -> str:
    """The sentence without its `[n]` markers (and the spaces they leave)."""
    text = CITATION.sub("", sentence)
    return normalise(re.sub(r"\s+([.,;:!?])", r"\1", text))


def numbers(text: str) -> set[str]:
    """The numbers written in a text, thousands separators removed ("4,200" -> "4200")."""
    return {m.group(0).rstrip(",").replace(",", "") for m in _NUMBER.finditer(text)} - {""}

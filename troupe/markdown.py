"""Markdown to HTML for pages and documents that show text Troupe did not write (artifacts,
model output, report sections). Raw HTML is disabled (markdown-it escapes it) and links are
limited to safe schemes, so nothing in the text becomes script or a request elsewhere."""

from __future__ import annotations

from markdown_it import MarkdownIt

__all__ = ["render_markdown"]

_SAFE_LINK = ("http://", "https://", "mailto:", "#", "/")
_md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
_md.validateLink = lambda url: url.strip().lower().startswith(_SAFE_LINK)  # no javascript:, data:, file:


def render_markdown(text: str) -> str:
    return _md.render(text)

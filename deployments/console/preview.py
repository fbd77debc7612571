"""Artifact previews as HTML fragments. Nothing from an artifact reaches the page unescaped:
Markdown is rendered with raw HTML disabled (markdown-it escapes it) and links limited to
safe schemes; JSON and text are escaped by Jinja's autoescaping."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

__all__ = ["MAX_PREVIEW_BYTES", "preview"]

MAX_PREVIEW_BYTES = 512 * 1024
_SAFE_LINK = ("http://", "https://", "mailto:", "#", "/")
_md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
_md.validateLink = lambda url: url.strip().lower().startswith(_SAFE_LINK)  # no javascript:, data:, file:


def preview(path: Path, media_type: str) -> dict[str, Any]:
    """What the preview template shows: a kind and its content, or why there is none."""
    name = path.name.lower()
    if media_type.startswith("image/") and media_type != "image/svg+xml":
        return {"kind": "image"}  # the page points <img> at the artifact route
    size = path.stat().st_size
    if size > MAX_PREVIEW_BYTES:
        return {"kind": "none", "why": f"{size} bytes: too large to preview; download it"}
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"kind": "none", "why": f"binary ({media_type}); download it"}
    if name.endswith((".md", ".markdown")) or media_type == "text/markdown":
        return {"kind": "markdown", "html": _md.render(text)}
    if name.endswith(".json") or media_type == "application/json":
        try:
            return {"kind": "json", "text": json.dumps(json.loads(text), indent=2, ensure_ascii=False)}
        except ValueError:
            return {"kind": "text", "text": text}
    if name.endswith(".csv") or media_type == "text/csv":
        rows = list(csv.reader(io.StringIO(text)))[:201]
        return {"kind": "table", "head": rows[0] if rows else [], "rows": rows[1:]}
    return {"kind": "text", "text": text}

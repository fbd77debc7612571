"""Artifact previews as HTML fragments. Nothing from an artifact reaches the page unescaped:
Markdown is rendered with raw HTML disabled (markdown-it escapes it) and links limited to
safe schemes; code is tokenised by Pygments, which escapes every token; JSON, text and table
cells are escaped by Jinja's autoescaping. PDFs are shown by the browser's own viewer."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_for_filename
from pygments.util import ClassNotFound

from troupe.markdown import render_markdown

__all__ = ["MAX_PREVIEW_BYTES", "MAX_TABLE_COLUMNS", "MAX_TABLE_ROWS", "preview"]

MAX_PREVIEW_BYTES = 512 * 1024
MAX_TABLE_ROWS = 200
MAX_TABLE_COLUMNS = 50
# Parquet is read by its footer and first row group, never whole: a large file previews cheaply.
MAX_PARQUET_BYTES = 256 * 2**20
_CODE = (".py", ".js", ".mjs", ".ts", ".tsx", ".jsx", ".sh", ".bash", ".yaml", ".yml", ".toml", ".sql", ".go",
         ".rs", ".java", ".kt", ".c", ".h", ".cpp", ".hpp", ".cs", ".rb", ".php", ".css", ".html", ".xml", ".r",
         ".swift", ".scala", ".lua", ".ini", ".cfg", ".dockerfile", ".tf", ".ipynb")
_formatter = HtmlFormatter(cssclass="highlight", wrapcode=True)


def preview(path: Path, media_type: str) -> dict[str, Any]:
    """What the preview template shows: a kind and its content, or why there is none."""
    name = path.name.lower()
    if media_type.startswith("image/") and media_type != "image/svg+xml":
        return {"kind": "image"}  # the page points <img> at the artifact route
    if media_type == "application/pdf" or name.endswith(".pdf"):
        return {"kind": "pdf"}  # the page points <object> at the artifact route (same origin)
    size = path.stat().st_size
    if name.endswith(".parquet"):
        return _parquet(path, size)
    if size > MAX_PREVIEW_BYTES:
        return {"kind": "none", "why": f"{size} bytes: too large to preview; download it"}
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"kind": "none", "why": f"binary ({media_type}); download it"}
    if name.endswith((".md", ".markdown")) or media_type == "text/markdown":
        return {"kind": "markdown", "html": render_markdown(text)}
    if name.endswith(".json") or media_type == "application/json":
        try:
            return {"kind": "json", "text": json.dumps(json.loads(text), indent=2, ensure_ascii=False)}
        except ValueError:
            return {"kind": "text", "text": text}
    if name.endswith(".csv") or media_type == "text/csv":
        rows = [r[:MAX_TABLE_COLUMNS] for r in list(csv.reader(io.StringIO(text)))[:MAX_TABLE_ROWS + 1]]
        return {"kind": "table", "head": rows[0] if rows else [], "rows": rows[1:]}
    if name.endswith(_CODE) or name in ("dockerfile", "makefile"):
        try:
            lexer = get_lexer_for_filename(name, text)
        except ClassNotFound:
            return {"kind": "text", "text": text}
        return {"kind": "code", "html": highlight(text, lexer, _formatter), "language": lexer.name}
    return {"kind": "text", "text": text}


def _parquet(path: Path, size: int) -> dict[str, Any]:
    """The first rows and columns of a Parquet file, as strings, and how many there are in all."""
    if size > MAX_PARQUET_BYTES:
        return {"kind": "none", "why": f"{size} bytes: too large to preview; download it"}
    import pyarrow.parquet as pq  # only a Parquet preview pays for importing pyarrow

    try:
        table = pq.ParquetFile(path)
        meta = table.metadata
        columns = table.schema_arrow.names[:MAX_TABLE_COLUMNS]
        batch = next(table.iter_batches(batch_size=MAX_TABLE_ROWS, columns=columns), None)
    except Exception as exc:  # pyarrow raises several types for a damaged file; all mean "no preview"
        return {"kind": "none", "why": f"not a readable Parquet file ({type(exc).__name__}); download it"}
    rows = batch.to_pylist() if batch is not None else []
    return {"kind": "table", "head": columns,
            "rows": [["" if r[c] is None else str(r[c]) for c in columns] for r in rows],
            "note": f"{min(len(rows), meta.num_rows)} of {meta.num_rows} rows, {len(columns)} of "
                    f"{meta.num_columns} columns"}

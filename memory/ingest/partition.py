"""Bytes of one file to cleaned unstructured elements, chosen by the file's extension.

The format-specific partitioners are called directly (no content sniffing, no language
detection): both cost more than the partitioning itself for small documents.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from memory.ingest.offline import ensure_offline_nlp

__all__ = ["SUPPORTED", "ParseError", "extension", "partition_bytes"]

SUPPORTED = ("txt", "text", "md", "markdown", "html", "htm", "eml", "docx", "pptx", "xlsx", "csv", "pdf")

_LANG = {"languages": ["eng"]}  # skips per-element language detection (langdetect is slow)
_DROP = {"PageBreak", "Header", "Footer", "PageNumber"}  # layout furniture, not content


class ParseError(Exception):
    """A file that yields no usable text; the message is the reason recorded for it."""


def extension(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _partitioner(ext: str, pdf_strategy: str) -> Callable[[bytes], list[Any]]:
    if ext in ("txt", "text"):
        from unstructured.partition.text import partition_text

        return lambda data: partition_text(text=_decode(data), **_LANG)
    if ext in ("md", "markdown"):
        from unstructured.partition.md import partition_md

        return lambda data: partition_md(text=_decode(data), **_LANG)
    if ext in ("html", "htm"):
        from unstructured.partition.html import partition_html

        return lambda data: partition_html(text=_decode(data), **_LANG)
    if ext == "eml":
        from unstructured.partition.email import partition_email

        return lambda data: partition_email(file=io.BytesIO(data), **_LANG)
    if ext == "docx":
        from unstructured.partition.docx import partition_docx

        return lambda data: partition_docx(file=io.BytesIO(data), **_LANG)
    if ext == "pptx":
        from unstructured.partition.pptx import partition_pptx

        return lambda data: partition_pptx(file=io.BytesIO(data), **_LANG)
    if ext == "xlsx":
        from unstructured.partition.xlsx import partition_xlsx

        return lambda data: partition_xlsx(file=io.BytesIO(data), **_LANG)
    if ext == "csv":
        from unstructured.partition.csv import partition_csv

        return lambda data: partition_csv(file=io.BytesIO(data), **_LANG)
    if ext == "pdf":
        return _partition_pdf_fast if pdf_strategy == "fast" else _partition_pdf_pypdf
    raise ParseError(f"unsupported file type {ext or '(none)'!r}; supported: {', '.join(SUPPORTED)}")


def _decode(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    if data.count(0) > len(data) // 100:
        raise ParseError("binary content in a text file (NUL bytes); is the extension right?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # maps every byte, so legacy 8-bit text still parses


def _partition_pdf_pypdf(data: bytes) -> list[Any]:
    """Page by page with pypdf (layout mode keeps blank lines between paragraphs), then the
    text partitioner so titles and paragraphs are told apart as for any other text."""
    import pypdf
    from unstructured.partition.text import partition_text

    reader = pypdf.PdfReader(io.BytesIO(data))
    if reader.is_encrypted:
        raise ParseError("the PDF is encrypted; decrypt it before ingesting")
    elements: list[Any] = []
    for number, page in enumerate(reader.pages, start=1):
        text = page.extract_text(extraction_mode="layout")
        if not text.strip():
            continue
        for element in partition_text(text=text, **_LANG):
            element.metadata.page_number = number
            elements.append(element)
    return elements


def _partition_pdf_fast(data: bytes) -> list[Any]:
    try:
        from unstructured.partition.pdf import partition_pdf
    except ImportError as exc:
        raise ParseError(
            f"pdf_strategy='fast' needs unstructured's PDF extra ({exc.name} is missing): "
            "pip install 'unstructured[pdf]', or use pdf_strategy='pypdf'"
        ) from None
    return partition_pdf(file=io.BytesIO(data), strategy="fast", **_LANG)


def _clean(elements: list[Any]) -> list[Any]:
    from unstructured.cleaners.core import clean_extra_whitespace, replace_unicode_quotes

    kept = []
    for element in elements:
        if type(element).__name__ in _DROP:
            continue
        # Tables keep their line structure; prose is normalised so hashes and chunks are stable.
        if type(element).__name__ != "Table":
            element.text = replace_unicode_quotes(clean_extra_whitespace(element.text))
        if element.text.strip():
            kept.append(element)
    return kept


def partition_bytes(data: bytes, ext: str, *, pdf_strategy: str = "pypdf") -> list[Any]:
    """Cleaned elements of one file; raises ParseError (or the parser's own error) on failure."""
    ensure_offline_nlp()
    if not data:
        raise ParseError("the file is empty")
    elements = _clean(_partitioner(ext, pdf_strategy)(data))
    if not elements:
        raise ParseError("no text could be extracted (a scanned PDF or image needs OCR, which is off)")
    return elements

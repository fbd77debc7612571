"""Elements to chunks (unstructured's chunk_by_title) with the location a citation needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memory.ingest.config import IngestConfig

__all__ = ["Chunk", "Page", "chunk_elements", "pages_of"]


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    element_type: str
    """CompositeElement (prose), Table, or TableChunk (a piece of a large table)."""
    page: int | None
    section: str | None
    location: str
    """Human-readable place in the source, e.g. "page 3", "slide 2", "sheet Sales", a heading."""


@dataclass(frozen=True)
class Page:
    """One page (slide, sheet) of parsed text; documents without pages are a single page 1."""

    page: int
    text: str


def _location(ext: str, page: int | None, page_name: str | None, section: str | None, index: int) -> str:
    if ext == "xlsx" and page_name:
        return f"sheet {page_name}"
    if page is not None and ext in ("pdf", "docx", "pptx", "xlsx"):
        return f"{'slide' if ext == 'pptx' else 'page'} {page}"
    if section:
        return f"section {section!r}"
    return f"chunk {index + 1}"


def chunk_elements(elements: list[Any], ext: str, config: IngestConfig) -> list[Chunk]:
    from unstructured.chunking.title import chunk_by_title

    pieces = chunk_by_title(
        elements,
        max_characters=config.max_characters,
        new_after_n_chars=config.new_after_n_chars,
        overlap=config.overlap,
        overlap_all=config.overlap_all,
        combine_text_under_n_chars=config.combine_text_under_n_chars,
        multipage_sections=True,
    )
    chunks: list[Chunk] = []
    section: str | None = None
    for index, piece in enumerate(pieces):
        originals = piece.metadata.orig_elements or []
        # chunk_by_title opens a chunk at every title, so a leading Title names the section
        # that this and the following chunks belong to.
        if originals and type(originals[0]).__name__ == "Title":
            section = originals[0].text[:200]
        page = piece.metadata.page_number
        chunks.append(
            Chunk(
                index=index,
                text=piece.text,
                element_type=type(piece).__name__,
                page=page,
                section=section,
                location=_location(ext, page, piece.metadata.page_name, section, index),
            )
        )
    return chunks


def pages_of(elements: list[Any]) -> list[Page]:
    """The document's text grouped by page, for `read_document`."""
    by_page: dict[int, list[str]] = {}
    for element in elements:
        by_page.setdefault(element.metadata.page_number or 1, []).append(element.text)
    return [Page(n, "\n\n".join(texts)) for n, texts in sorted(by_page.items())]

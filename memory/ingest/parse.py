"""The Ray Data stage: a block of files in, chunk rows and document rows out.

A parse task emits two kinds of rows in one table: one `doc` row per file (its outcome, parsed
pages and MinHash signature, as JSON in `record`), then that file's `chunk` rows (text, place,
BM25 vector). The driver decides near-duplicates from the doc rows before it has the chunks
embedded, and writes a document's records only once all of its chunks are stored: a crash in
between leaves the file looking new, never falsely done.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pyarrow as pa

from memory.ingest.chunking import chunk_elements, pages_of
from memory.ingest.config import IngestConfig
from memory.ingest.dedupe import content_hash, signature
from memory.ingest.encoders import SparseEncoder
from memory.ingest.partition import partition_bytes

__all__ = ["parse_block", "read_bytes", "short_reason"]

log = logging.getLogger(__name__)

_MAX_REASON = 300


def short_reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


def read_bytes(source: str) -> bytes:
    import fsspec

    with fsspec.open(source, "rb") as f:
        return f.read()


class _Rows:
    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {
            name: []
            for name in (
                "kind", "source", "doc_hash", "chunk_index", "text", "element_type",
                "page", "section", "location", "sparse_indices", "sparse_values", "record",
            )
        }

    def doc(self, source: str, doc_hash: str, **record: Any) -> None:
        self._add("doc", source, doc_hash, -1, "", "", -1, "", "", [], [], json.dumps(record))

    def chunk(self, source: str, doc_hash: str, chunk: Any, sparse: Any) -> None:
        self._add(
            "chunk", source, doc_hash, chunk.index, chunk.text, chunk.element_type,
            chunk.page if chunk.page is not None else -1, chunk.section or "", chunk.location,
            sparse.indices, sparse.values, "",
        )

    def _add(self, *values: Any) -> None:
        for column, value in zip(self.columns.values(), values, strict=True):
            column.append(value)

    def table(self) -> pa.Table:
        types = {"chunk_index": pa.int64(), "page": pa.int64(), "sparse_indices": pa.list_(pa.int64()),
                 "sparse_values": pa.list_(pa.float32())}
        # Explicit types: a block of failures only must have the same schema as any other block.
        return pa.table({k: pa.array(v, type=types.get(k, pa.string())) for k, v in self.columns.items()})


def parse_block(batch: dict[str, np.ndarray], *, config: str) -> pa.Table:
    """Read, partition, chunk and sparse-encode a block of files. Never raises for a bad file."""
    cfg = IngestConfig.model_validate_json(config)
    rows = _Rows()
    sparse = SparseEncoder()
    for source, ext, expected in zip(batch["source"], batch["ext"], batch["doc_hash"], strict=True):
        source, ext, expected = str(source), str(ext), str(expected)
        try:
            data = read_bytes(source)
            if content_hash(data) != expected:
                raise RuntimeError("the file changed while it was being ingested; ingest it again")
            elements = partition_bytes(data, ext, pdf_strategy=cfg.pdf_strategy)
            chunks = chunk_elements(elements, ext, cfg)
            vectors = sparse.encode_documents([c.text for c in chunks])
        except Exception as exc:  # any parser error is this file's outcome, not the batch's
            log.info("failed to parse %s: %s", source, short_reason(exc))
            rows.doc(source, expected, status="failed", reason=short_reason(exc))
            continue
        pages = [{"page": p.page, "text": p.text} for p in pages_of(elements)]
        sig = signature("\n".join(e.text for e in elements))
        rows.doc(source, expected, status="stored", chunks=len(chunks), pages=pages, signature=sig, format=ext)
        for chunk, vector in zip(chunks, vectors, strict=True):
            rows.chunk(source, expected, chunk, vector)
    return rows.table()

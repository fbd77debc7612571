"""Deciding, before anything is parsed, what each file needs: the idempotency rules.

Pure functions over what is already stored and what the files hash to now, so the rules are
tested without Ray or Qdrant:

- a file whose bytes hash as last time is unchanged: nothing is written;
- a file with the bytes of a document already stored (or of another file in this run, the
  first by name) is a duplicate: it points at that document instead of being stored again;
- a document that no file maps to any more (its only file changed) is stale: its chunks go;
- a file recorded as a near-duplicate of a stale document is parsed again, since the
  document that stood for it is going away.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memory.ingest.partition import SUPPORTED, extension
from memory.ingest.progress import FileOutcome, FileStatus

__all__ = ["DocRecord", "FileRecord", "Fingerprint", "RunPlan", "plan_run"]


@dataclass(frozen=True)
class Fingerprint:
    source: str
    doc_hash: str | None = None
    size: int = 0
    error: str | None = None

    @property
    def ext(self) -> str:
        return extension(self.source)


@dataclass(frozen=True)
class FileRecord:
    """What the store remembers about a source file (the `_files` collection)."""

    source: str
    doc_hash: str | None
    status: FileStatus
    duplicate_of: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class DocRecord:
    """What planning needs of a stored document (the `_documents` collection)."""

    doc_hash: str
    source: str
    signature: str | None = None


@dataclass
class RunPlan:
    to_parse: list[Fingerprint] = field(default_factory=list)
    """One file per distinct new content, the first by name."""
    decided: dict[str, FileOutcome] = field(default_factory=dict)
    """Files settled without parsing: unchanged, unreadable, unsupported, duplicates of stored docs."""
    followers: dict[str, list[str]] = field(default_factory=dict)
    """doc_hash -> other files in this run with the same bytes as the one being parsed."""
    stale: set[str] = field(default_factory=set)
    """Stored documents no file maps to any more: delete their chunks."""
    reconcile: set[str] = field(default_factory=set)
    """Stored documents whose set of files changed: their canonical source may move."""
    lsh_seed: dict[str, str] = field(default_factory=dict)
    """doc_hash -> signature of stored documents that stay, for near-duplicate checks."""
    hashes: dict[str, str] = field(default_factory=dict)
    """source -> content hash, for every file that could be read."""


def _doc_id(doc_hash: str) -> str:
    from memory.semantic import doc_id_of

    return doc_id_of(doc_hash)


def plan_run(
    fingerprints: list[Fingerprint],
    files: dict[str, FileRecord],
    docs: dict[str, DocRecord],
) -> RunPlan:
    plan = RunPlan()
    mapping = {source: rec.doc_hash for source, rec in files.items() if rec.doc_hash}
    for fp in fingerprints:
        if fp.doc_hash:
            mapping[fp.source] = plan.hashes[fp.source] = fp.doc_hash
    referenced = set(mapping.values())
    plan.stale = {h for h in docs if h not in referenced}
    plan.lsh_seed = {h: d.signature for h, d in docs.items() if h not in plan.stale and d.signature}

    canonical: dict[str, Fingerprint] = {}
    for fp in sorted(fingerprints, key=lambda f: f.source):
        old = files.get(fp.source)
        if old and old.doc_hash and old.doc_hash != fp.doc_hash and old.doc_hash in docs:
            plan.reconcile.add(old.doc_hash)
        if fp.error:
            plan.decided[fp.source] = FileOutcome(source=fp.source, status=FileStatus.failed, reason=fp.error)
            continue
        if fp.ext not in SUPPORTED:
            reason = f"unsupported file type {fp.ext or '(none)'!r}; supported: {', '.join(SUPPORTED)}"
            plan.decided[fp.source] = FileOutcome(source=fp.source, status=FileStatus.failed, reason=reason)
            continue
        assert fp.doc_hash is not None
        orphaned = old is not None and old.status == FileStatus.near_duplicate and old.duplicate_of in plan.stale
        if old and old.doc_hash == fp.doc_hash and not orphaned:
            plan.decided[fp.source] = FileOutcome(
                source=fp.source,
                status=FileStatus.unchanged,
                doc_id=_doc_id(fp.doc_hash),
                duplicate_of=_doc_id(old.duplicate_of) if old.duplicate_of else None,
                reason=old.reason,
            )
        elif fp.doc_hash in docs:
            plan.reconcile.add(fp.doc_hash)
            plan.decided[fp.source] = FileOutcome(
                source=fp.source,
                status=FileStatus.duplicate,
                doc_id=_doc_id(fp.doc_hash),
                duplicate_of=_doc_id(fp.doc_hash),
            )
        elif fp.doc_hash in canonical:
            plan.followers.setdefault(fp.doc_hash, []).append(fp.source)
        else:
            canonical[fp.doc_hash] = fp
            plan.to_parse.append(fp)
    return plan

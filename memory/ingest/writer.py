"""The driver side of a run: stored state in, batched upserts out, records committed last."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from memory.ingest.dedupe import NearDuplicateIndex
from memory.ingest.planning import DocRecord, FileRecord, RunPlan
from memory.ingest.progress import FileOutcome, FileStatus, IngestProgress
from memory.semantic import DENSE, SPARSE, QdrantSettings, Scope, base_filter, doc_id_of, point_id

__all__ = ["Writer", "load_state"]


def _scroll(client: Any, collection: str, flt: Any, fields: list[str]) -> list[dict[str, Any]]:
    out, offset = [], None
    while True:
        records, offset = client.scroll(collection, scroll_filter=flt, limit=2048, offset=offset, with_payload=fields)
        out += [r.payload or {} for r in records]
        if offset is None:
            return out


def load_state(
    client: Any, settings: QdrantSettings, tenant: str, scope: Scope, collection: str
) -> tuple[dict[str, FileRecord], dict[str, DocRecord]]:
    from qdrant_client import models

    flt = models.Filter(must=base_filter(tenant, collection, [scope]))
    files = {
        p["source"]: FileRecord(
            p["source"], p.get("doc_hash"), FileStatus(p["status"]), p.get("duplicate_of"), p.get("reason")
        )
        for p in _scroll(client, settings.files, flt, ["source", "doc_hash", "status", "duplicate_of", "reason"])
    }
    docs = {
        p["doc_hash"]: DocRecord(p["doc_hash"], p["source"], p.get("signature"))
        for p in _scroll(client, settings.documents, flt, ["doc_hash", "source", "signature"])
    }
    return files, docs


class Writer:
    """Turns pipeline rows into Qdrant points; a document's records follow its last chunk."""

    def __init__(
        self,
        client: Any,
        settings: QdrantSettings,
        *,
        tenant: str,
        scope: Scope,
        collection: str,
        files: dict[str, FileRecord],
        docs: dict[str, DocRecord],
        plan: RunPlan,
        progress: IngestProgress,
        batch_size: int,
        near_duplicates: NearDuplicateIndex | None = None,
    ):
        self.client, self.settings, self.plan, self.progress = client, settings, plan, progress
        self.near_duplicates = near_duplicates
        self.tenant, self.scope, self.collection = tenant, scope, collection
        self.files, self.docs = files, docs
        self.batch_size = batch_size
        self.now = datetime.now(timezone.utc).isoformat()
        self.outcomes: dict[str, FileOutcome] = dict(plan.decided)
        self._chunks: list[Any] = []
        self._records: list[tuple[str, Any]] = []  # (qdrant collection, point)
        self._pending: dict[str, tuple[str, dict[str, Any]]] = {}  # doc_hash -> (source, doc row record)
        self._stored: Counter[str] = Counter()
        self._in_batch: Counter[str] = Counter()
        self.chunks_deleted = 0
        for outcome in plan.decided.values():
            if outcome.status != FileStatus.unchanged:
                self._file_record(outcome, doc_hash=plan.hashes.get(outcome.source))
            self._count(outcome.status, 1)

    # -- payloads -------------------------------------------------------------------------

    def _base(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "scope": self.scope.key, "collection": self.collection, "ingested_at": self.now}

    def _id(self, *parts: Any) -> str:
        return point_id(self.tenant, self.scope.key, self.collection, *parts)

    def _file_record(self, outcome: FileOutcome, *, doc_hash: str | None, duplicate_of: str | None = None) -> None:
        from qdrant_client import models

        self.outcomes[outcome.source] = outcome
        old = self.files.get(outcome.source)
        if outcome.status == FileStatus.duplicate:
            duplicate_of = doc_hash
        new = FileRecord(outcome.source, doc_hash, outcome.status, duplicate_of, outcome.reason)
        self.files[outcome.source] = new
        if old == new:
            return  # e.g. the same unsupported file again: nothing to write
        payload = self._base() | {
            "source": new.source, "doc_hash": new.doc_hash, "doc_id": outcome.doc_id, "status": new.status.value,
            "duplicate_of": new.duplicate_of, "reason": new.reason,
        }
        point = models.PointStruct(id=self._id("file", new.source), vector={}, payload=payload)
        self._records.append((self.settings.files, point))

    # -- pipeline rows --------------------------------------------------------------------

    def accept(self, block: pa.Table) -> list[dict[str, Any]]:
        """Take a parsed block: settle its documents (near-duplicates are dropped here, before
        any embedding) and return the chunk rows that still need vectors."""
        rows = block.to_pylist()
        docs = [r for r in rows if r["kind"] == "doc"]
        records = {r["doc_hash"]: (r["source"], json.loads(r["record"])) for r in docs}
        if self.near_duplicates is not None:
            fresh = [(h, rec["signature"]) for h, (_, rec) in records.items() if rec["status"] == "stored"]
            for (doc_hash, _), original in zip(fresh, self.near_duplicates.claim(fresh), strict=True):
                if original is not None:
                    source = records[doc_hash][0]
                    records[doc_hash] = (source, {"status": "near_duplicate", "duplicate_of": original})
        # A parse task writes a file's doc row and its chunk rows into the same block.
        keep = {h for h, (_, rec) in records.items() if rec["status"] == "stored"}
        self.progress.files_parsed += sum(rec["status"] != "failed" for _, rec in records.values())
        self._pending.update(records)
        self._commit_ready()
        return [r for r in rows if r["kind"] == "chunk" and r["doc_hash"] in keep]

    def store(self, rows: list[dict[str, Any]], dense: Any) -> None:
        """Queue embedded chunks as points; they are written in batches of `batch_size`."""
        from qdrant_client import models

        for row, vector in zip(rows, dense, strict=True):
            page = row["page"] if row["page"] >= 0 else None
            payload = self._base() | {
                "source": row["source"], "doc_id": doc_id_of(row["doc_hash"]), "doc_hash": row["doc_hash"],
                "chunk_index": row["chunk_index"], "page": page, "section": row["section"] or None,
                "location": row["location"], "element_type": row["element_type"],
                "format": row["source"].rsplit(".", 1)[-1].lower(), "text": row["text"],
            }
            vectors = {
                DENSE: vector.tolist(),
                SPARSE: models.SparseVector(indices=row["sparse_indices"], values=row["sparse_values"]),
            }
            point_id = self._id("chunk", row["doc_hash"], row["chunk_index"])
            self._chunks.append(models.PointStruct(id=point_id, vector=vectors, payload=payload))
            self._in_batch[row["doc_hash"]] += 1
        self.progress.chunks_embedded += len(rows)
        if len(self._chunks) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        for start in range(0, len(self._chunks), self.batch_size):
            part = self._chunks[start : start + self.batch_size]
            self.client.upsert(self.settings.chunks, points=part, wait=True)
            self.progress.chunks_stored += len(part)
        self._chunks.clear()
        self._stored.update(self._in_batch)
        self._in_batch.clear()
        self._commit_ready()
        self._write_records()

    def _commit_ready(self) -> None:
        for doc_hash, (source, record) in list(self._pending.items()):
            if record["status"] == "stored" and self._stored[doc_hash] < record["chunks"]:
                continue
            del self._pending[doc_hash]
            self._commit(source, doc_hash, record)
        if len(self._records) >= self.batch_size:
            self._write_records()

    def _commit(self, source: str, doc_hash: str, record: dict[str, Any]) -> None:
        from qdrant_client import models

        followers = self.plan.followers.get(doc_hash, [])
        doc_id = doc_id_of(doc_hash)
        status = FileStatus(record["status"])
        if status == FileStatus.stored:
            payload = self._base() | {
                "doc_id": doc_id, "doc_hash": doc_hash, "source": source, "format": record["format"],
                "chunks": record["chunks"], "pages": record["pages"], "signature": record["signature"],
            }
            point = models.PointStruct(id=self._id("doc", doc_hash), vector={}, payload=payload)
            self._records.append((self.settings.documents, point))
            self.docs[doc_hash] = DocRecord(doc_hash, source, record["signature"])
            outcome = FileOutcome(source=source, status=status, doc_id=doc_id, chunks=record["chunks"])
            self._file_record(outcome, doc_hash=doc_hash)
            for other in followers:
                outcome = FileOutcome(source=other, status=FileStatus.duplicate, doc_id=doc_id, duplicate_of=doc_id)
                self._file_record(outcome, doc_hash=doc_hash)
        elif status == FileStatus.near_duplicate:
            original = record["duplicate_of"]
            for src in [source, *followers]:
                outcome = FileOutcome(source=src, status=status, doc_id=doc_id, duplicate_of=doc_id_of(original))
                self._file_record(outcome, doc_hash=doc_hash, duplicate_of=original)
        else:
            outcome = FileOutcome(source=source, status=status, doc_id=doc_id, reason=record["reason"])
            self._file_record(outcome, doc_hash=doc_hash)
            for other in followers:
                reason = f"same content as {source}, which failed: {record['reason']}"
                outcome = FileOutcome(source=other, status=status, doc_id=doc_id, reason=reason)
                self._file_record(outcome, doc_hash=doc_hash)
        self._count(status, 1)
        self._count(FileStatus.duplicate if status == FileStatus.stored else status, len(followers))

    def _count(self, status: FileStatus, n: int) -> None:
        """Settled files, by outcome (`files_parsed` counts parse successes as they arrive)."""
        self.progress.files_done += n
        if status == FileStatus.failed:
            self.progress.files_failed += n
        elif status == FileStatus.unchanged:
            self.progress.files_unchanged += n
        elif status in (FileStatus.duplicate, FileStatus.near_duplicate):
            self.progress.files_duplicate += n

    def _write_records(self) -> None:
        by_collection: dict[str, list[Any]] = {}
        for name, point in self._records:
            by_collection.setdefault(name, []).append(point)
        self._records.clear()
        # Documents before files: a file record is what marks a file done.
        for name in (self.settings.documents, self.settings.files):
            points = by_collection.get(name, [])
            for start in range(0, len(points), self.batch_size):
                self.client.upsert(name, points=points[start : start + self.batch_size], wait=True)

    # -- end of run -----------------------------------------------------------------------

    def finish(self) -> list[FileOutcome]:
        from qdrant_client import models

        self.flush()
        if self._pending:  # only possible if the pipeline lost rows: say so rather than guess
            raise RuntimeError(f"{len(self._pending)} documents ended with chunks missing: {sorted(self._pending)[:5]}")
        if self.plan.stale:
            flt = models.Filter(
                must=base_filter(self.tenant, self.collection, [self.scope])
                + [models.FieldCondition(key="doc_hash", match=models.MatchAny(any=sorted(self.plan.stale)))]
            )
            self.chunks_deleted = self.client.count(self.settings.chunks, count_filter=flt, exact=True).count
            self.client.delete(self.settings.chunks, points_selector=models.FilterSelector(filter=flt), wait=True)
            self.client.delete(self.settings.documents, points_selector=models.FilterSelector(filter=flt), wait=True)
        for doc_hash in sorted(self.plan.reconcile - self.plan.stale):
            self._promote(doc_hash)
        self._write_records()
        return sorted(self.outcomes.values(), key=lambda o: o.source)

    def _promote(self, doc_hash: str) -> None:
        """Point a document at a file that still has its content, if its own file changed."""
        from qdrant_client import models

        holding = (FileStatus.stored, FileStatus.duplicate)
        refs = sorted(s for s, r in self.files.items() if r.doc_hash == doc_hash and r.status in holding)
        doc = self.docs.get(doc_hash)
        if not refs or doc is None or doc.source in refs:
            return
        new = refs[0]
        flt = models.Filter(
            must=base_filter(self.tenant, self.collection, [self.scope])
            + [models.FieldCondition(key="doc_hash", match=models.MatchValue(value=doc_hash))]
        )
        for name in (self.settings.chunks, self.settings.documents):
            self.client.set_payload(name, payload={"source": new}, points=flt, wait=True)
        self.docs[doc_hash] = DocRecord(doc_hash, new, doc.signature)
        outcome = self.outcomes.get(new) or FileOutcome(source=new, status=FileStatus.stored)
        update = {"status": FileStatus.stored, "doc_id": doc_id_of(doc_hash), "duplicate_of": None}
        self._file_record(outcome.model_copy(update=update), doc_hash=doc_hash)

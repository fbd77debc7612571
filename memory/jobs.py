"""Ingestion jobs: one row per `POST /v1/collections/{name}/ingest`, in the SQL store.

The row is written before the job is handed to the jobs actor (actors/ingest_jobs.py) and holds
everything needed to run it again: a Gateway restart loses nothing, and an actor that restarts
mid-job re-runs it (ingestion is idempotent). Running jobs save their counters every fraction of
a second, so `GET /v1/ingest/{job}` and its SSE stream read progress from here, from any
Gateway replica. Same store as the event log: SQLite by default, PostgreSQL on a cluster.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, Integer, String, Table, Text, select, update

from memory.ingest.progress import FileStatus, IngestProgress, IngestReport
from memory.schema import metadata
from memory.semantic import Scope
from memory.store import SideStore
from troupe.models import utcnow
from troupe.paths import uploads_dir

__all__ = ["IngestJob", "JobStatus", "JobStore", "ingest_jobs", "upload_dirs"]

# Revision 0003 of memory/migrations creates it.
ingest_jobs = Table(
    "ingest_jobs",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("collection", String(128), nullable=False),
    Column("scope", JSON, nullable=False),
    Column("sources", JSON, nullable=False),
    Column("source_root", Text),
    Column("config", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("progress", JSON),
    Column("report", JSON),
    Column("error", Text),
    Column("rev", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Index("ix_ingest_jobs_status", "status", "created_at"),
    Index("ix_ingest_jobs_tenant", "tenant", "created_at"),
)


def upload_dirs(home: Path, tenant: str, collection: str, scope: Scope, job_id: str) -> tuple[Path, Path]:
    """Where an upload waits (one folder per job) and where it is ingested from.

    The second is the same for every upload to a collection and scope, so a file uploaded again
    has the same source and replaces its old version, as a re-ingested path does. The jobs actor
    moves the upload there under that collection's lock, and removes it once the job ends.
    """
    base = uploads_dir(home, tenant)  # 0700, the tenant's alone
    return base / ".staging" / job_id, base / collection / scope.key.replace(":", "-")


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.done, JobStatus.failed)


class IngestJob(BaseModel):
    job_id: str
    tenant: str
    collection: str
    scope: Scope = Field(default_factory=Scope.org)
    sources: list[str]
    source_root: str | None = Field(
        None, description="For uploads: the folder the upload was unpacked into (removed when the job ends).")
    config: dict[str, Any] = Field(default_factory=dict, description="IngestConfig fields.")
    status: JobStatus = JobStatus.queued
    attempts: int = Field(0, description="Times a worker started the job; more than one after a restart.")
    progress: IngestProgress | None = None
    report: IngestReport | None = None
    error: str | None = None
    rev: int = Field(0, description="Bumped on every change; the SSE stream's event id.")
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None

    def display(self, source: str) -> str:
        """A source as the user knows it: relative to the upload for uploads, else the path."""
        if self.source_root:
            try:
                return Path(source).relative_to(self.source_root).as_posix()
            except ValueError:
                pass
        return source

    def view(self, *, files: bool = False) -> dict[str, Any]:
        """The job as the API shows it: status, counters and, once ended, the report."""
        body: dict[str, Any] = {
            "job_id": self.job_id, "tenant": self.tenant, "collection": self.collection, "scope": self.scope.key,
            "status": self.status.value, "attempts": self.attempts, "error": self.error,
            "progress": (self.progress or IngestProgress(started_at=self.created_at.timestamp())).model_dump(),
            "created_at": self.created_at.isoformat(), "updated_at": self.updated_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "report": None,
            "links": {"self": f"/v1/ingest/{self.job_id}", "events": f"/v1/ingest/{self.job_id}/events"},
        }
        if self.report is not None:
            r = self.report
            body["report"] = {
                "files": len(r.files),
                "by_status": {s.value: r.count(s) for s in FileStatus if r.count(s)},
                "chunks_stored": r.progress.chunks_stored,
                "chunks_deleted": r.chunks_deleted,
                "docs_per_s": round(r.progress.docs_per_s, 3),
                "elapsed_s": round(r.progress.elapsed_s, 3),
                "failures": [{"source": self.display(f.source), "reason": f.reason} for f in r.failures],
            }
            if files:
                body["report"]["outcomes"] = [
                    f.model_dump(exclude_none=True) | {"source": self.display(f.source)} for f in r.files
                ]
        return body


def _utc(ts: datetime | None) -> datetime | None:
    from datetime import timezone

    return ts if ts is None or ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def _job(r: Any) -> IngestJob:
    m = dict(r._mapping)
    for key in ("created_at", "updated_at", "started_at", "finished_at"):
        m[key] = _utc(m[key])
    return IngestJob.model_validate(m)


class JobStore(SideStore):
    """Async access to the `ingest_jobs` table; one per process."""

    async def create(self, job: IngestJob) -> IngestJob:
        row = job.model_dump(mode="json", exclude={"created_at", "updated_at", "started_at", "finished_at"})
        row |= {"created_at": job.created_at, "updated_at": job.updated_at}
        async with self._writer.begin() as conn:
            await conn.execute(ingest_jobs.insert().values(**row))
        return job

    async def get(self, job_id: str, *, tenant: str | None = None) -> IngestJob | None:
        q = select(ingest_jobs).where(ingest_jobs.c.job_id == job_id)
        if tenant is not None:
            q = q.where(ingest_jobs.c.tenant == tenant)
        async with self._reader.connect() as conn:
            r = (await conn.execute(q)).first()
        return _job(r) if r else None

    async def unfinished(self, limit: int = 1000) -> list[IngestJob]:
        """Queued and running jobs, oldest first: after a restart, "running" means interrupted."""
        q = (select(ingest_jobs).where(ingest_jobs.c.status.in_([JobStatus.queued.value, JobStatus.running.value]))
             .order_by(ingest_jobs.c.created_at, ingest_jobs.c.job_id).limit(limit))
        async with self._reader.connect() as conn:
            return [_job(r) for r in await conn.execute(q)]

    async def _update(self, job_id: str, from_states: list[JobStatus], **values: Any) -> Any:
        now = utcnow()
        async with self._writer.begin() as conn:
            return (await conn.execute(
                update(ingest_jobs)
                .where(ingest_jobs.c.job_id == job_id, ingest_jobs.c.status.in_([s.value for s in from_states]))
                .values(rev=ingest_jobs.c.rev + 1, updated_at=now, **values)
                .returning(ingest_jobs.c.attempts)
            )).first()

    async def start(self, job_id: str) -> int | None:
        """Mark a queued (or interrupted) job running; its attempt number, or None if it has ended."""
        row = await self._update(job_id, [JobStatus.queued, JobStatus.running], status=JobStatus.running.value,
                                 attempts=ingest_jobs.c.attempts + 1, started_at=utcnow())
        return row.attempts if row else None

    async def requeue(self, job_id: str, error: str) -> None:
        await self._update(job_id, [JobStatus.running], status=JobStatus.queued.value, error=error)

    async def save_progress(self, job_id: str, progress: IngestProgress) -> None:
        await self._update(job_id, [JobStatus.running], progress=progress.model_dump(mode="json"))

    async def finish(self, job_id: str, *, report: IngestReport | None = None, error: str | None = None) -> None:
        """Done with a report, or failed with the reason."""
        values: dict[str, Any] = {"finished_at": utcnow(), "error": error}
        if report is not None:
            values |= {"status": JobStatus.done.value, "report": report.model_dump(mode="json"),
                       "progress": report.progress.model_dump(mode="json")}
        else:
            values["status"] = JobStatus.failed.value
        await self._update(job_id, [JobStatus.queued, JobStatus.running], **values)

"""What an ingestion run reports while it runs (progress) and when it ends (report)."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

from pydantic import BaseModel, Field, computed_field

__all__ = ["FileOutcome", "FileStatus", "IngestProgress", "IngestReport", "ProgressCallback"]


class FileStatus(StrEnum):
    stored = "stored"
    """Parsed, chunked, embedded and stored."""
    unchanged = "unchanged"
    """Same content as last time: nothing written."""
    duplicate = "duplicate"
    """Same bytes as another file; that file's chunks stand for both."""
    near_duplicate = "near_duplicate"
    """Nearly the same text as another document (MinHash); not stored again."""
    failed = "failed"


class FileOutcome(BaseModel):
    source: str
    status: FileStatus
    doc_id: str | None = None
    chunks: int = 0
    duplicate_of: str | None = Field(None, description="doc_id of the document this one duplicates.")
    reason: str | None = Field(None, description="Why it failed, for failed files.")


class IngestProgress(BaseModel):
    """Counters an API can stream; `on_progress` gets a fresh copy whenever they move."""

    files_seen: int = Field(0, description="Files found under the given paths.")
    files_parsed: int = Field(0, description="Files parsed successfully so far.")
    files_failed: int = 0
    files_unchanged: int = Field(0, description="Same bytes as at the last ingest: skipped.")
    files_duplicate: int = Field(0, description="Exact or near duplicates of another document.")
    files_done: int = Field(0, description="Files settled, whatever the outcome.")
    chunks_embedded: int = 0
    chunks_stored: int = 0
    started_at: float = Field(default_factory=time.time)
    elapsed_s: float = 0.0
    done: bool = False

    @computed_field  # type: ignore[prop-decorator]
    @property
    def docs_per_s(self) -> float:
        """Files settled (stored, skipped, duplicate or failed) per second of the run."""
        return self.files_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def tick(self) -> None:
        self.elapsed_s = time.time() - self.started_at


ProgressCallback = Callable[[IngestProgress], None]


class IngestReport(BaseModel):
    tenant: str
    scope: str
    collection: str
    progress: IngestProgress
    files: list[FileOutcome]
    chunks_deleted: int = 0
    """Chunks of replaced (changed) documents that were removed."""

    @property
    def failures(self) -> list[FileOutcome]:
        return [f for f in self.files if f.status == FileStatus.failed]

    def count(self, status: FileStatus) -> int:
        return sum(1 for f in self.files if f.status == status)

"""Document ingestion on Ray Data: files -> parsed, deduplicated, chunked, embedded -> Qdrant.

    from memory.ingest import ingest, IngestConfig
    report = ingest("reports/", collection="reports")   # or "s3://bucket/reports/"
    print(report.progress.docs_per_s, [(f.source, f.reason) for f in report.failures])
"""

from memory.ingest.config import IngestConfig, Resources, plan_resources
from memory.ingest.embedders import release_embedders
from memory.ingest.pipeline import IngestError, discover, fingerprint, ingest
from memory.ingest.progress import FileOutcome, FileStatus, IngestProgress, IngestReport, ProgressCallback

__all__ = [
    "FileOutcome",
    "FileStatus",
    "IngestConfig",
    "IngestError",
    "IngestProgress",
    "IngestReport",
    "ProgressCallback",
    "Resources",
    "discover",
    "fingerprint",
    "ingest",
    "plan_resources",
    "release_embedders",
]

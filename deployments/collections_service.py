"""Document collections: the Gateway's side of ingestion and search, and their request models.

Jobs run in the IngestJobs actor (actors/ingest_jobs.py) and live in the SQL store
(memory/jobs.py), so they outlive the Gateway replica that accepted them. Searches run on the
ToolPool, whose replicas already hold the semantic store and the query model. The routes are
in deployments/routes/collections.py.
"""

from __future__ import annotations

import logging
from pathlib import Path as FsPath
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from actors.ingest_jobs import IngestJobsConfig, get_or_create_ingest_jobs
from deployments.problems import Problem
from memory.jobs import IngestJob, JobStore
from memory.ingest.config import IngestConfig
from memory.semantic import ChunkFilter
from troupe.settings import Settings

__all__ = ["COLLECTION_PATTERN", "Collections", "IngestOptions", "IngestRequest", "SearchRequest"]

log = logging.getLogger("troupe.gateway")

COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"


class IngestOptions(BaseModel):
    """What an upload may say besides its files (the multipart `options` part, JSON)."""

    model_config = ConfigDict(extra="forbid")

    config: IngestConfig | None = Field(None, description="Chunking and embedding settings; default: the app's.")
    project_id: str | None = Field(None, pattern=_ID, description="Ingest into this project's scope, not the org's.")


class IngestRequest(IngestOptions):
    paths: list[str] = Field(min_length=1, max_length=1000, description=(
        "Files or folders on the server, inside its ingest roots (TROUPE_INGEST_ROOTS)."))


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000)]
    limit: int = Field(5, ge=1, le=50)
    filters: ChunkFilter | None = None
    task_id: str | None = Field(None, pattern=_ID, description="Search this task's attachments first.")
    project_id: str | None = Field(None, pattern=_ID, description="Then this project's documents, then the org's.")


class Collections:
    """The Gateway's side of ingestion and search: the job table, the jobs actor, the tool pool."""

    def __init__(self, settings: Settings, config: IngestJobsConfig, tool_pool: Any):
        self.settings, self.config, self.tool_pool = settings, config, tool_pool
        self.jobs = JobStore(settings.db_url)
        self.actor: Any = None

    @classmethod
    async def start(cls, settings: Settings, config: IngestJobsConfig, tool_pool: Any) -> Collections:
        """Start (or find) the jobs actor: it resumes whatever jobs a restart interrupted."""
        self = cls(settings, config, tool_pool)
        self.actor = await get_or_create_ingest_jobs(settings, config)
        return self

    async def submit(self, job: IngestJob) -> IngestJob:
        """The job's row first, then a nudge: a lost nudge only delays the job to the actor's next scan."""
        await self.jobs.create(job)
        try:
            await self.actor.kick.remote()
        except Exception as exc:
            log.warning("ingest jobs actor unreachable (%s); reconnecting", type(exc).__name__)
            self.actor = await get_or_create_ingest_jobs(self.settings, self.config)
            await self.actor.kick.remote()
        return job

    async def ping(self) -> dict[str, Any]:
        return await self.actor.ping.remote()

    def display(self, source: str, tenant: str) -> str:
        """Uploaded files by their path inside the upload; server files by their path."""
        uploads = self.settings.home / "uploads" / tenant
        try:
            parts = FsPath(source).relative_to(uploads).parts  # <collection>/<scope>/<path in the upload>
        except ValueError:
            return source
        return "/".join(parts[2:]) or source

    async def search(self, tenant: str, collection: str, body: SearchRequest) -> dict[str, Any]:
        result = await self.tool_pool.search.remote(
            tenant, collection, body.query, limit=body.limit,
            filters=body.filters.model_dump(exclude_none=True) if body.filters else None,
            task_id=body.task_id, project_id=body.project_id)
        if "error" in result:
            raise Problem(422, "Invalid search", f"query: {result['error']}",
                          errors=[{"field": "query", "message": result["error"]}])
        if not result["collection_exists"]:
            raise Problem(404, "Collection not found", f"nothing was ingested into collection {collection!r} for "
                                                       f"tenant {tenant!r}; ingest with "
                                                       f"POST /v1/collections/{collection}/ingest")
        results = []
        for rank, p in enumerate(result["passages"], start=1):
            path = self.display(p["source"], tenant)
            results.append({
                "rank": rank, "text": p["text"], "score": round(p["score"], 6), "source": path.rsplit("/", 1)[-1],
                "path": path, "location": p["location"], "page": p.get("page"), "section": p.get("section"),
                "doc_id": p["doc_id"], "chunk_index": p["chunk_index"], "scope": p["scope"],
                "citation": f"{path.rsplit('/', 1)[-1]}, {p['location']}",
            })
        return {"query": body.query, "collection": collection, "results": results}

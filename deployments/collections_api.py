"""Document collections over HTTP: ingest (server paths or an upload) as a background job,
follow the job (JSON or SSE), and search a collection.

Jobs run in the IngestJobs actor (actors/ingest_jobs.py) and live in the SQL store
(memory/jobs.py), so they outlive the Gateway replica that accepted them. Searches run on the
ToolPool, whose replicas already hold the semantic store and the query model.
"""

# No `from __future__ import annotations`: the routes are defined inside a function and FastAPI
# must see their annotations as objects (Tenant comes from deployments.api at call time).

import asyncio
import json
import logging
import shutil
import uuid
from pathlib import Path as FsPath
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sse_starlette.sse import EventSourceResponse

from actors.ingest_jobs import IngestJobsConfig, get_or_create_ingest_jobs
from deployments.problems import Problem
from deployments.uploads import (
    ARCHIVE_SUFFIXES,
    UNPACKED_BYTES_FACTOR,
    UnpackError,
    add_multipart_route,
    allowed_paths,
    is_archive,
    read_form,
    safe_name,
    save_upload,
    unpack,
    validate_part,
)
from memory.ingest.config import IngestConfig
from memory.jobs import IngestJob, JobStore, upload_dirs
from memory.semantic import ChunkFilter, Scope
from troupe.settings import Settings

__all__ = ["COLLECTION_PATTERN", "Collections", "IngestRequest", "SearchRequest", "add_collection_routes"]

log = logging.getLogger("troupe.gateway")

COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
CollectionName = Annotated[str, Path(pattern=COLLECTION_PATTERN, description=(
    "Letters, digits, '_', '.' and '-', starting with a letter or digit; at most 64 characters."))]
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


_INGEST_UPLOAD_DOC = {"requestBody": {"content": {"multipart/form-data": {"schema": {
    "type": "object",
    "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                  "description": "Archives (.zip, .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz) are unpacked; other "
                                 "files are ingested as they are."},
        "options": {"type": "string", "description": "JSON: {config?, project_id?}"},
    },
    "required": ["files"],
}}}}}


class CollectionsBackend(Protocol):
    settings: Settings
    config: Any  # GatewayConfig: max_body_bytes, max_upload_bytes, sse_poll_s
    collections: "Collections"


class Collections:
    """The Gateway's side of ingestion and search: the job table, the jobs actor, the tool pool."""

    def __init__(self, settings: Settings, config: IngestJobsConfig, tool_pool: Any):
        self.settings, self.config, self.tool_pool = settings, config, tool_pool
        self.jobs = JobStore(settings.db_url)
        self.actor: Any = None

    @classmethod
    async def start(cls, settings: Settings, config: IngestJobsConfig, tool_pool: Any) -> "Collections":
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


def _accepted(job: IngestJob) -> JSONResponse:
    body = {"job_id": job.job_id, "status": job.status.value, "collection": job.collection,
            "sources": len(job.sources), "links": job.view()["links"]}
    return JSONResponse(body, status_code=202, headers={"Location": f"/v1/ingest/{job.job_id}"})


def add_collection_routes(app: FastAPI, backend: CollectionsBackend) -> None:
    """`POST /v1/collections/{name}/ingest|search`, `GET /v1/ingest/{job}[/events]`."""
    from deployments.api import Tenant  # here: deployments.api imports this module

    settings = backend.settings

    def service() -> Collections:  # looked up per request: a backend without collections still builds
        return backend.collections

    def new_job(tenant: str, name: str, options: IngestOptions, sources: list[str]) -> IngestJob:
        scope = Scope.project(options.project_id) if options.project_id else Scope.org()
        config = options.config or service().config.ingest
        return IngestJob(job_id=str(uuid.uuid4()), tenant=tenant, collection=name, scope=scope, sources=sources,
                         config=config.model_dump(mode="json"))

    async def load(job_id: str, tenant: str) -> IngestJob:
        job = await service().jobs.get(job_id, tenant=tenant)
        if job is None:
            raise Problem(404, "Ingest job not found", f"no ingest job {job_id!r} for tenant {tenant!r}")
        return job

    @app.post("/v1/collections/{name}/ingest", status_code=202, openapi_extra=_INGEST_UPLOAD_DOC,
              summary="Ingest server-side files or folders (JSON), or uploaded files and archives (multipart)")
    async def ingest(name: CollectionName, body: IngestRequest, tenant: Tenant = "default") -> JSONResponse:
        sources = allowed_paths(body.paths, settings, "paths")
        return _accepted(await service().submit(new_job(tenant, name, body, sources)))

    async def ingest_upload(request: Request, name: CollectionName, tenant: Tenant = "default") -> JSONResponse:
        data, uploads = await read_form(request, json_part="options", max_json_bytes=backend.config.max_body_bytes)
        options = validate_part(IngestOptions, data or {}, "options")
        if not uploads:
            raise Problem(422, "Invalid request", "files: attach at least one file or archive",
                          errors=[{"field": "files", "message": "attach at least one file or archive"}])
        job = new_job(tenant, name, options, [])
        staging, root = upload_dirs(settings.home, tenant, name, job.scope, job.job_id)
        job.sources, job.source_root = [str(root)], str(root)
        try:
            await _receive(uploads, staging, backend.config.max_upload_bytes * UNPACKED_BYTES_FACTOR)
            return _accepted(await service().submit(job))
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, staging, True)
            raise

    add_multipart_route(app, "/v1/collections/{name}/ingest", ingest_upload, status_code=202)

    @app.get("/v1/ingest/{job_id}", summary="An ingest job: status, progress and, once ended, its report")
    async def ingest_job(job_id: str, tenant: Tenant = "default",
                         files: Annotated[bool, Query(description="List every file's outcome.")] = False
                         ) -> dict[str, Any]:
        return (await load(job_id, tenant)).view(files=files)

    @app.get("/v1/ingest/{job_id}/events", summary="An ingest job's progress as SSE, until it ends")
    async def ingest_events(request: Request, job_id: str, tenant: Tenant = "default",
                            last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None) -> Any:
        await load(job_id, tenant)
        if last_event_id is not None and not last_event_id.isdigit():
            raise Problem(400, "Bad Last-Event-ID", "Last-Event-ID must be the id of an event (an integer)")
        after = int(last_event_id) if last_event_id else -1
        return EventSourceResponse(_progress(request, backend, job_id, after), ping=15)

    @app.post("/v1/collections/{name}/search", summary="Hybrid search: passages best first, with their sources")
    async def search(name: CollectionName, body: SearchRequest, tenant: Tenant = "default") -> dict[str, Any]:
        return await service().search(tenant, name, body)


async def _receive(uploads: list[Any], folder: FsPath, max_unpacked_bytes: int) -> None:
    """Archives unpacked into `folder`, other files saved there as they are."""
    for upload in uploads:
        name = safe_name(upload.filename)
        if not is_archive(name):
            await save_upload(upload, folder)
            continue
        staged = await save_upload(upload, folder.parent / f".{folder.name}")
        try:
            # Each archive in its own folder, named after it: two archives may hold the same names.
            stem = next(name[: -len(x)] for x in ARCHIVE_SUFFIXES if name.lower().endswith(x)) or "archive"
            await asyncio.to_thread(unpack, staged, folder / stem, max_unpacked_bytes)
        except UnpackError as exc:
            raise Problem(422, "Invalid archive", f"files: {name}: {exc}",
                          errors=[{"field": "files", "message": f"{name}: {exc}"}]) from None
        finally:
            await asyncio.to_thread(shutil.rmtree, staged.parent, True)
    if not folder.exists():
        raise Problem(422, "Invalid archive", "files: the archives hold no files",
                      errors=[{"field": "files", "message": "the archives hold no files"}])


async def _progress(request: Request, backend: CollectionsBackend, job_id: str, after: int):
    """The job's state whenever it changes (event `progress`), then once ended (`done` or `failed`)."""
    jobs = backend.collections.jobs
    while True:
        job = await jobs.get(job_id)
        if job is None:
            return
        if job.rev > after:
            after = job.rev
            event = job.status.value if job.status.terminal else "progress"
            yield {"id": str(job.rev), "event": event, "data": json.dumps(job.view())}
        if job.status.terminal or await request.is_disconnected():
            return
        await asyncio.sleep(backend.config.sse_poll_s)

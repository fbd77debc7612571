"""Collections: ingest server paths or uploads as background jobs, follow a job (JSON or
SSE), search. Jobs and collections are the caller's tenant's alone."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import uuid
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse

from deployments.auth import Member, Principal, Viewer
from deployments.backend import Backend, BackendDep
from deployments.collections_service import COLLECTION_PATTERN, IngestOptions, IngestRequest, SearchRequest
from deployments.problems import Problem
from deployments.uploads import (
    ARCHIVE_SUFFIXES,
    UNPACKED_BYTES_FACTOR,
    UnpackError,
    allowed_paths,
    is_archive,
    read_form,
    safe_name,
    save_upload,
    unpack,
    validate_part,
)
from memory.jobs import IngestJob, upload_dirs
from memory.semantic import Scope

__all__ = ["ingest_files", "ingest_upload", "router"]

router = APIRouter(tags=["collections"])

CollectionName = Annotated[str, Path(pattern=COLLECTION_PATTERN, description=(
    "Letters, digits, '_', '.' and '-', starting with a letter or digit; at most 64 characters."))]

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


_JOB_LINKS = {op: {"operationId": op, "parameters": {"job_id": "$response.body#/job_id"}}
              for op in ("ingest_job", "ingest_events")}


def _new_job(backend: Backend, tenant: str, name: str, options: IngestOptions, sources: list[str]) -> IngestJob:
    scope = Scope.project(options.project_id) if options.project_id else Scope.org()
    config = options.config or backend.collections.config.ingest
    return IngestJob(job_id=str(uuid.uuid4()), tenant=tenant, collection=name, scope=scope, sources=sources,
                     config=config.model_dump(mode="json"))


async def _load(backend: Backend, job_id: str, tenant: str) -> IngestJob:
    job = await backend.collections.jobs.get(job_id, tenant=tenant)
    if job is None:
        raise Problem(404, "Ingest job not found", f"no ingest job {job_id!r} for tenant {tenant!r}")
    return job


@router.post("/v1/collections/{name}/ingest", status_code=202, openapi_extra=_INGEST_UPLOAD_DOC,
             operation_id="ingest", responses={202: {"links": _JOB_LINKS}},
             summary="Ingest server-side files or folders (JSON), or uploaded files and archives (multipart)")
async def ingest(name: CollectionName, body: IngestRequest, caller: Member, backend: BackendDep) -> JSONResponse:
    sources = allowed_paths(body.paths, backend.settings, "paths")
    return _accepted(await backend.collections.submit(_new_job(backend, caller.tenant, name, body, sources)))


async def ingest_upload(request: Request, name: CollectionName, caller: Member, backend: BackendDep) -> JSONResponse:
    """The multipart variant of `ingest` (registered by build_api ahead of the JSON route)."""
    data, uploads = await read_form(request, json_part="options", max_json_bytes=backend.config.max_body_bytes)
    options = validate_part(IngestOptions, data or {}, "options")
    return await ingest_files(backend, caller, name, uploads, options)


async def ingest_files(backend: Backend, caller: Principal, name: str, uploads: list[Any],
                       options: IngestOptions | None = None) -> JSONResponse:
    """Stage uploaded files (or archives) and start the job that ingests them."""
    if not re.fullmatch(COLLECTION_PATTERN, name):
        raise Problem(422, "Invalid request", f"name: {name!r} is not a collection name: letters, digits, '_', "
                                              "'.' and '-', starting with a letter or digit; at most 64 characters")
    if not uploads:
        raise Problem(422, "Invalid request", "files: attach at least one file or archive",
                      errors=[{"field": "files", "message": "attach at least one file or archive"}])
    job = _new_job(backend, caller.tenant, name, options or IngestOptions(), [])
    staging, root = upload_dirs(backend.settings.home, caller.tenant, name, job.scope, job.job_id)
    job.sources, job.source_root = [str(root)], str(root)
    try:
        await _receive(uploads, staging, backend.config.max_upload_bytes * UNPACKED_BYTES_FACTOR)
        return _accepted(await backend.collections.submit(job))
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, staging, True)
        raise


@router.get("/v1/ingest/{job_id}", operation_id="ingest_job",
            summary="An ingest job: status, progress and, once ended, its report")
async def ingest_job(job_id: str, caller: Viewer, backend: BackendDep,
                     files: Annotated[bool, Query(description="List every file's outcome.")] = False
                     ) -> dict[str, Any]:
    return (await _load(backend, job_id, caller.tenant)).view(files=files)


@router.get("/v1/ingest/{job_id}/events", operation_id="ingest_events",
            summary="An ingest job's progress as SSE, until it ends")
async def ingest_events(request: Request, job_id: str, caller: Viewer, backend: BackendDep,
                        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None) -> Any:
    await _load(backend, job_id, caller.tenant)
    if last_event_id is not None and not last_event_id.isdigit():
        raise Problem(400, "Bad Last-Event-ID", "Last-Event-ID must be the id of an event (an integer)")
    after = int(last_event_id) if last_event_id else -1
    return EventSourceResponse(_progress(request, backend, job_id, after), ping=15)


@router.post("/v1/collections/{name}/search", operation_id="search_collection",
             summary="Hybrid search: passages best first, with their sources")
async def search(name: CollectionName, body: SearchRequest, caller: Member, backend: BackendDep) -> dict[str, Any]:
    return await backend.collections.search(caller.tenant, name, body)


def _accepted(job: IngestJob) -> JSONResponse:
    body = {"job_id": job.job_id, "status": job.status.value, "collection": job.collection,
            "sources": len(job.sources), "links": job.view()["links"]}
    return JSONResponse(body, status_code=202, headers={"Location": f"/v1/ingest/{job.job_id}"})


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


async def _progress(request: Request, backend: Backend, job_id: str, after: int):
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

"""Files coming into the API: server-side paths checked against the ingest roots, multipart
uploads saved or unpacked safely, and multipart variants of JSON routes.

A path names a file on the server, so it is only honoured inside `Settings.ingest_roots`
(`TROUPE_INGEST_ROOTS`; none unless the operator sets it) and never inside Troupe's own state
(`TROUPE_HOME`: the database, the Qdrant files, every tenant's workspaces). Archives are
unpacked member by member: no absolute or `..` names, no links or devices, and a cap on the
unpacked bytes (zip bombs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.routing import Match
from starlette.types import Scope as AsgiScope

from deployments.problems import Problem
from troupe.settings import Settings

__all__ = [
    "ARCHIVE_SUFFIXES",
    "UNPACKED_BYTES_FACTOR",
    "add_multipart_route",
    "allowed_path",
    "allowed_paths",
    "copy_into",
    "is_archive",
    "read_form",
    "safe_name",
    "save_upload",
    "stage_attachments",
    "unpack",
    "validate_part",
]

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
UNPACKED_BYTES_FACTOR = 10
"""An archive may unpack to this many times the upload limit, and no more."""
MAX_FILES = 100_000


# -- server-side paths --------------------------------------------------------------------

def allowed_path(raw: str, settings: Settings, field: str) -> str:
    """`raw` resolved, if the server may read it; else a problem naming `field`."""

    def refuse(status: int, title: str, message: str) -> Problem:
        return Problem(status, title, f"{field}: {message}", errors=[{"field": field, "message": message}])

    roots = settings.ingest_roots
    if roots:
        hint = f"allowed roots: {', '.join(roots)}; the server's TROUPE_INGEST_ROOTS sets them"
    else:
        hint = ("this server reads no server paths (TROUPE_INGEST_ROOTS is not set): upload the files instead, "
                "or have the operator set TROUPE_INGEST_ROOTS to the folders callers may read")
    if not raw.strip() or "\x00" in raw:
        raise refuse(422, "Invalid path", "pass a file or folder path on the server")
    if raw.startswith("file://"):
        raw = raw[len("file://"):]
    if "://" in raw:
        parts = PurePosixPath(raw.split("://", 1)[1]).parts
        inside = any(raw.rstrip("/") == r.rstrip("/") or raw.startswith(r.rstrip("/") + "/")
                     for r in roots if "://" in r)
        if ".." in parts or not inside:
            raise refuse(403, "Path not allowed", f"{raw!r} is outside the ingest roots; {hint}")
        return raw
    path = Path(raw).expanduser()
    if not path.is_absolute():
        raise refuse(422, "Invalid path", f"{raw!r} is relative; pass an absolute path on the server, "
                                          "or upload the files instead")
    resolved = path.resolve()  # links resolved before the checks, so a link cannot lead out
    if resolved.is_relative_to(settings.home):
        raise refuse(403, "Path not allowed", f"{raw!r} is inside Troupe's own state ({settings.home})")
    if not any(resolved.is_relative_to(Path(r)) for r in roots if "://" not in r):
        raise refuse(403, "Path not allowed", f"{raw!r} is outside the ingest roots; {hint}")
    if not resolved.exists():
        raise refuse(422, "Invalid path", f"{raw!r} does not exist on the server")
    return str(resolved)


# -- uploads --------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def safe_name(filename: str | None, default: str = "upload") -> str:
    """A plain file name: no folders, no leading dot (hidden files are skipped), no odd characters."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name
    name = _UNSAFE.sub("_", name).strip(" .") or default
    return name[:200]


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _unique(folder: Path, name: str) -> Path:
    """`name` in `folder`, suffixed -1, -2 ... when taken."""
    target, stem, n = folder / name, Path(name).stem, 0
    while target.exists():
        n += 1
        target = folder / f"{stem}-{n}{''.join(Path(name).suffixes[-1:])}"
    return target


def _copy_file(src: Any, dest: Path) -> int:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
        return out.tell()


async def save_upload(upload: UploadFile, folder: Path) -> Path:
    """Save one uploaded file under its (sanitized) name; a name already taken gets a suffix."""
    target = _unique(folder, safe_name(upload.filename))
    await upload.seek(0)
    await asyncio.to_thread(_copy_file, upload.file, target)
    return target


async def copy_into(source: str, folder: Path, max_bytes: int) -> list[Path]:
    """Copy a server-side file, or a folder's files (hidden ones skipped), into `folder`."""

    def run() -> list[Path]:
        src = Path(source)
        files = [src] if src.is_file() else sorted(
            p for p in src.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(src).parts))
        total = sum(p.stat().st_size for p in files)
        if total > max_bytes:
            raise Problem(413, "Attachments too large", f"{source} holds {total} bytes, over the {max_bytes}-byte "
                                                        "limit; attach fewer files")
        copied = []
        for p in files:
            rel = p.name if src.is_file() else p.relative_to(src).as_posix()
            target = _unique(folder, safe_name(rel.replace("/", "-")))
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, target)
            copied.append(target)
        return copied

    return await asyncio.to_thread(run)


class UnpackError(ValueError):
    """An archive that cannot be unpacked safely; the message names the member at fault."""


def _member(dest: Path, name: str) -> Path:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts or parts[0] == "/" or ".." in parts or ":" in parts[0]:
        raise UnpackError(f"archive member {name!r} leads outside the archive; remove it")
    return dest.joinpath(*parts)


def unpack(archive: Path, dest: Path, max_bytes: int) -> int:
    """Unpack a zip or tar (plain, gz, bz2, xz) into `dest`; the number of files written."""
    written, files = 0, 0

    def copy(src: Any, target: Path) -> None:
        nonlocal written, files
        files += 1
        if files > MAX_FILES:
            raise UnpackError(f"the archive holds more than {MAX_FILES} files; split it")
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            while block := src.read(1 << 20):
                written += len(block)
                if written > max_bytes:
                    raise UnpackError(f"the archive unpacks to more than {max_bytes} bytes; split it")
                out.write(block)

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                target = _member(dest, info.filename)
                with zf.open(info) as src:
                    copy(src, target)
        return files
    try:
        tf = tarfile.open(archive, "r:*")
    except tarfile.TarError:
        raise UnpackError("not a zip or tar archive (.zip, .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz)") from None
    with tf:
        for info in tf:
            if not info.isfile():  # folders are implied; links and devices are never unpacked
                continue
            target = _member(dest, info.name)
            src = tf.extractfile(info)
            if src is not None:
                copy(src, target)
    return files


# -- multipart variants of JSON routes ---------------------------------------------------------

def _is_multipart(scope: AsgiScope) -> bool:
    for key, value in scope.get("headers") or []:
        if key == b"content-type":
            return value.split(b";")[0].strip().lower() == b"multipart/form-data"
    return False


class _MultipartOnly(APIRoute):
    """Matches multipart/form-data requests only, so that the JSON route at the same path
    (registered after it) keeps FastAPI's own validation and OpenAPI schema for JSON bodies."""

    def matches(self, scope: AsgiScope) -> tuple[Match, AsgiScope]:
        match, child = super().matches(scope)
        if match is not Match.NONE and not _is_multipart(scope):
            return Match.NONE, {}
        return match, child


def add_multipart_route(app: FastAPI, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
    """Serve multipart POSTs to `path` with `endpoint`, ahead of the JSON route at that path."""
    app.router.add_api_route(path, endpoint, methods=["POST"], include_in_schema=False,
                             route_class_override=_MultipartOnly, **kwargs)
    route = app.router.routes.pop()
    at = next((i for i, r in enumerate(app.router.routes) if getattr(r, "path", None) == path),
              len(app.router.routes))
    app.router.routes.insert(at, route)


async def read_form(request: Request, *, json_part: str | None, max_json_bytes: int,
                    required: bool = False) -> tuple[Any, list[UploadFile]]:
    """The JSON part named `json_part` (parsed; None when absent) and every file part."""
    form = await request.form(max_files=10_000, max_fields=100, max_part_size=max_json_bytes)
    uploads = [v for _, v in form.multi_items() if not isinstance(v, str)]
    data = None
    raw = form.get(json_part) if json_part else None
    if raw is None and required:
        message = f"a multipart body needs a `{json_part}` part holding the JSON document"
        raise Problem(422, "Invalid request", f"{json_part}: {message}", errors=[{"field": json_part,
                                                                                  "message": message}])
    if raw is not None:
        if not isinstance(raw, str):  # sent as a file part (curl -F 'task=@task.json')
            uploads = [u for u in uploads if u is not raw]
            raw = (await raw.read()).decode("utf-8", "replace")
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise Problem(400, "Malformed JSON", f"the `{json_part}` part is not valid JSON: {exc.msg} "
                                                 f"(at position {exc.pos})") from None
    return data, uploads


def validate_part(model: type[BaseModel], data: Any, part: str) -> Any:
    """Validate a multipart JSON part; errors name fields as `<part>.<field>`, as the JSON route would."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{"loc": ("body", part, *e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        ) from None


def allowed_paths(raw: Sequence[str], settings: Settings, field: str) -> list[str]:
    return [allowed_path(p, settings, f"{field}.{i}") for i, p in enumerate(raw)]


async def stage_attachments(workspace: Path, paths: Sequence[str], uploads: Sequence[UploadFile], *,
                            settings: Settings, max_bytes: int) -> list[str]:
    """Copy a task's attachments into `<workspace>/attachments/`; their workspace-relative names.

    Every path is checked before anything is written; on any failure nothing is left behind."""
    folder = workspace / "attachments"
    try:
        checked = allowed_paths(paths, settings, "attachments")
        saved = [await save_upload(u, folder) for u in uploads]
        for source in checked:
            saved += await copy_into(source, folder, max_bytes)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # the workspace, if nothing else is in it yet
            workspace.rmdir()
        raise
    return [p.relative_to(workspace).as_posix() for p in saved]

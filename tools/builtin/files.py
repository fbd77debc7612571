"""The `files` tool: read, write and list files in the task's own workspace."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from tools.registry import ToolContext, ToolError, tool
from tools.workspace import resolve_inside

__all__ = ["files", "write_atomically"]

_MAX_ENTRIES = 1000


def _relative(root: Path, target: Path) -> str:
    return target.relative_to(root).as_posix() or "."


def write_atomically(target: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(root: Path, target: Path, path: str, max_bytes: int) -> dict[str, Any]:
    if target.is_dir():
        raise ToolError(f"{path!r} is a directory; use action 'list' to see what it holds")
    if not target.is_file():
        raise ToolError(f"no file {path!r} in the task workspace; use action 'list' to see what exists")
    with target.open("rb") as f:
        data = f.read(max_bytes + 1)
    return {
        "path": _relative(root, target),
        "content": data[:max_bytes].decode("utf-8", errors="replace"),
        "bytes": target.stat().st_size,
        "truncated": len(data) > max_bytes,
    }


def _write(root: Path, target: Path, path: str, content: str | None) -> dict[str, Any]:
    if content is None:
        raise ToolError("action 'write' needs `content`, the text to write")
    if target == root or target.is_dir():
        raise ToolError(f"{path!r} is a directory; give a file path such as 'notes/result.txt'")
    data = content.encode("utf-8")
    write_atomically(target, data)
    return {"path": _relative(root, target), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _list(root: Path, target: Path, path: str) -> dict[str, Any]:
    if not target.is_dir():
        raise ToolError(f"no directory {path!r} in the task workspace; list '.' to see what exists")
    entries = []
    for entry in sorted(os.scandir(target), key=lambda e: e.name):
        # Never follow links here: one pointing outside must not reveal what it points at.
        if entry.is_symlink():
            kind, size = "link", None
        elif entry.is_dir(follow_symlinks=False):
            kind, size = "dir", None
        elif entry.is_file(follow_symlinks=False):
            kind, size = "file", entry.stat(follow_symlinks=False).st_size
        else:
            kind, size = "other", None
        entries.append({"name": entry.name, "type": kind, "size": size})
    result: dict[str, Any] = {"path": _relative(root, target), "entries": entries[:_MAX_ENTRIES]}
    if len(entries) > _MAX_ENTRIES:
        result["truncated"] = True
    return result


@tool
async def files(
    ctx: ToolContext,
    action: Literal["read", "write", "list"],
    path: str = ".",
    content: str | None = None,
    max_bytes: Annotated[int, Field(gt=0)] = 1_000_000,
) -> dict[str, Any]:
    """Read, write or list files in this task's workspace (paths are relative to it).

    Args:
        action: 'read' a file, 'write' a file (replacing it), or 'list' a directory.
        path: File or directory path relative to the workspace, e.g. 'data/input.csv'.
        content: The text to write; required for 'write', not allowed otherwise.
        max_bytes: For 'read': return at most this many bytes of the file.
    """
    if content is not None and action != "write":
        raise ToolError(f"`content` is only used by action 'write', not {action!r}; leave it out")

    def run() -> dict[str, Any]:
        ctx.workspace.mkdir(parents=True, exist_ok=True)
        root = ctx.workspace.resolve()
        target = resolve_inside(root, path)
        try:
            if action == "read":
                return _read(root, target, path, max_bytes)
            if action == "write":
                return _write(root, target, path, content)
            return _list(root, target, path)
        except OSError as exc:
            raise ToolError(f"could not {action} {path!r}: {exc.strerror or exc}") from None

    return await asyncio.to_thread(run)

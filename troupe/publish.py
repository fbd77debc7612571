"""Publishing: every file a task left in its workspace becomes an artifact, listed with its
sha256 and size in `manifest.json`."""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
from pathlib import Path

from troupe.models import Artifact

__all__ = ["MANIFEST", "collect_artifacts", "write_manifest"]

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


INPUTS = "attachments"


def collect_artifacts(task_id: str, workspace: Path) -> list[Artifact]:
    """Regular files under the workspace, by name; hidden ones, the manifest and the task's
    inputs (`attachments/`, what the user gave, not what the task made) excepted."""
    found = []
    if not workspace.is_dir():
        return found
    for root, dirs, files in os.walk(workspace):
        top = Path(root) == workspace
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (top and d == INPUTS))
        for name in sorted(files):
            path = Path(root) / name
            rel = path.relative_to(workspace).as_posix()
            if name.startswith(".") or rel == MANIFEST or path.is_symlink():
                continue
            found.append(
                Artifact(
                    name=rel,
                    media_type=mimetypes.guess_type(name)[0] or "application/octet-stream",
                    size=path.stat().st_size,
                    sha256=_sha256(path),
                    uri=f"/v1/tasks/{task_id}/artifacts/{rel}",
                )
            )
    return found


def write_manifest(task_id: str, workspace: Path, artifacts: list[Artifact]) -> Artifact:
    """Write the manifest atomically (temp file + rename) and describe it as an artifact.
    Its content depends only on the artifacts, so a replayed publish writes the same bytes."""
    workspace.mkdir(parents=True, exist_ok=True)
    body = {
        "task_id": task_id,
        "artifacts": [a.model_dump(include={"name", "media_type", "size", "sha256"}) for a in artifacts],
    }
    tmp = workspace / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    os.replace(tmp, workspace / MANIFEST)
    path = workspace / MANIFEST
    return Artifact(
        name=MANIFEST,
        media_type="application/json",
        size=path.stat().st_size,
        sha256=_sha256(path),
        uri=f"/v1/tasks/{task_id}/artifacts/{MANIFEST}",
    )

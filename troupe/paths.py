"""Where tenants' files live under `TROUPE_HOME`, and the one place their folders are created.

Layout: `<home>/workspaces/<tenant>/<task_id>` and `<home>/uploads/<tenant>/...`. Every folder
from `<home>/workspaces` (or `<home>/uploads`) down is created 0700, so that no other account
on the machine can list or read a tenant's files, whatever the umask.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["PRIVATE_MODE", "home_of_workspace", "private_dir", "safe_component", "uploads_dir", "workspace_dir"]

PRIVATE_MODE = 0o700
WORKSPACES = "workspaces"
UPLOADS = "uploads"

# The API's tenant pattern, plus task ids (UUIDs) and job ids: one plain path component.
_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def safe_component(value: str, what: str) -> str:
    """`value` if it is a single harmless path component; else ValueError naming `what`."""
    if not _COMPONENT.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"{what} {value!r} cannot name a folder: use letters, digits, '_', '.' or '-' "
                         "(1 to 128 characters, starting with a letter or digit)")
    return value


def private_dir(base: Path, path: Path) -> Path:
    """Create `path` and every missing folder between `base` and it, each 0700.

    `base` itself is created 0700 when missing but left as it is when it exists (it may be a
    folder the operator chose); the folders below it are Troupe's own, so an existing one with
    wider modes (made by an older version) is narrowed.
    """
    rel = path.relative_to(base)  # ValueError when path is not under base: a caller's bug
    if not base.is_dir():
        base.mkdir(mode=PRIVATE_MODE, parents=True, exist_ok=True)
        os.chmod(base, PRIVATE_MODE)
    current = base
    for part in rel.parts:
        current = current / part
        try:
            current.mkdir(mode=PRIVATE_MODE)
        except FileExistsError:
            pass
        if current.is_symlink() or not current.is_dir():
            raise NotADirectoryError(f"{current} is not a plain folder; remove it so Troupe can create its own")
        if current.stat().st_mode & 0o777 != PRIVATE_MODE:
            os.chmod(current, PRIVATE_MODE)  # mkdir's mode is masked by the umask; chmod is not
    return path


def workspace_dir(home: Path, tenant: str, task_id: str) -> Path:
    """The task's own folder, created (0700, inside a 0700 folder per tenant) if missing."""
    return private_dir(home, home / WORKSPACES / safe_component(tenant, "tenant") / safe_component(task_id, "task id"))


def uploads_dir(home: Path, tenant: str) -> Path:
    """The tenant's upload folder (staging and ingested uploads), created 0700 if missing."""
    return private_dir(home, home / UPLOADS / safe_component(tenant, "tenant"))


def home_of_workspace(workspace: Path) -> Path | None:
    """The `TROUPE_HOME` a task workspace lives in, when it follows the layout above."""
    root = workspace.parent.parent
    return root.parent if root.name == WORKSPACES and root.parent != root else None

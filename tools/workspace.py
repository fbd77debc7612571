"""Keep tool file access inside the task's workspace."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from tools.registry import ToolError

__all__ = ["check_base_name", "resolve_inside"]


def resolve_inside(workspace: Path, relative: str) -> Path:
    """Resolve `relative` against `workspace`, refusing anything that lands outside it.

    Symlinks are resolved before the check, so a link inside the workspace that points
    elsewhere is refused like a `..` escape.
    """
    if "\x00" in relative:
        raise ToolError(f"path {relative!r} contains a NUL byte; pass a plain relative path")
    if PurePosixPath(relative).is_absolute():
        raise ToolError(
            f"path {relative!r} is absolute; pass a path relative to the task workspace, e.g. 'notes/a.txt'"
        )
    root = workspace.resolve()
    # strict=False: the target may not exist yet (a write), but every existing component,
    # symlinks included, is still resolved.
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise ToolError(
            f"path {relative!r} leads outside the task workspace; "
            "use a path inside the workspace without '..' or links that point out of it"
        )
    return target


def check_base_name(name: str, extensions: tuple[str, ...], example: str) -> None:
    """A tool that writes NAME.<ext> for several extensions takes NAME without one."""
    if not re.fullmatch(r"[\w][\w./-]*", name) or name.endswith(extensions):
        raise ToolError(f"name {name!r} must be a relative file name without extension, e.g. {example!r}")

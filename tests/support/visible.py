"""A place for test state that the python sandbox does not hide by itself.

The sandbox mounts fresh tmpfs on /tmp, /var/tmp, /dev/shm and /run, so state under them is
hidden whatever else the sandbox does, and a test that it stays hidden could not fail. The
repository is the natural place (as `make run`'s `.troupe` is), unless the checkout itself
lives under one of those folders (a CI clone in /tmp): then /var/lib/troupe-tests.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["hidden_by_sandbox", "visible_base"]

_HIDDEN_BY_SANDBOX = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"), Path("/run"))
REPO = Path(__file__).resolve().parents[2]


def hidden_by_sandbox(path: str | Path) -> bool:
    """Whether the sandbox's own tmpfs mounts hide `path` (whatever else it hides)."""
    return any(Path(path).resolve().is_relative_to(p) for p in _HIDDEN_BY_SANDBOX)


def visible_base() -> Path:
    if not hidden_by_sandbox(REPO):
        return REPO
    base = Path("/var/lib/troupe-tests")
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    return base

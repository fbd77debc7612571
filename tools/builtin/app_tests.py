"""`run_pytest` and `run_bundle_tests`: run a project's pytest suite inside the python sandbox.

The project travels into the sandbox as a zip on stdin and is unpacked into the sandbox's
own fresh working directory, so its code runs with the same isolation as the `python` tool
(no network, read-only system, Troupe's state hidden). The packages it imports (fastapi,
httpx, pytest ...) are those of Troupe's interpreter, mounted read-only.

Each failure comes back with the exact file (workspace-relative), line and error, so a
correction can be routed to the node that owns that file (troupe/routing.py).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from tools.builtin.python_exec import _troupe_homes, _unisolated_allowed
from tools.registry import ToolContext, ToolError, tool
from tools.sandbox import ENV_ALLOW_UNISOLATED, Limits, hidden_paths, isolation, run_sandboxed
from tools.workspace import resolve_inside

__all__ = ["project_folder", "run_pytest", "run_bundle_tests", "zip_folder"]

MAX_PROJECT_BYTES = 4 << 20
MAX_FILES = 500
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".git", ".venv", "node_modules"}
_MARK = "@@troupe-pytest@@"
# A web framework's import and a test client need more than a snippet's defaults (10 s CPU,
# 512 MiB of address space: threads alone reserve stacks of it).
_MIN_CPU_S = 60
_MIN_MEMORY_MB = 1536
_OUTPUT_TAIL = 4000

# Runs in the sandbox: unpack the project from stdin, run pytest on it, print a JSON summary.
_RUNNER = r'''
import base64, io, json, os, re, sys, zipfile
sys.dont_write_bytecode = True
root = os.path.join(os.getcwd(), "project")
with zipfile.ZipFile(io.BytesIO(base64.b64decode(sys.stdin.read()))) as z:
    for name in z.namelist():
        target = os.path.realpath(os.path.join(root, name))
        if not target.startswith(root + os.sep):
            sys.exit("refusing an entry outside the project: %r" % name)
    z.extractall(root)
os.chdir(root)
sys.path.insert(0, root)
import pytest

def rel(path):
    path = os.path.realpath(str(path))
    return os.path.relpath(path, root) if path.startswith(root + os.sep) else None

class Collect:
    def __init__(self):
        self.counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
        self.failures = []

    def _failure(self, report, test):
        crash = getattr(report.longrepr, "reprcrash", None)
        frames = []
        for entry in getattr(getattr(report.longrepr, "reprtraceback", None), "reprentries", []) or []:
            loc = getattr(entry, "reprfileloc", None)
            if loc is not None and rel(loc.path) is not None:
                frames.append({"file": rel(loc.path), "line": loc.lineno})
        text = str(report.longrepr)
        # A module that does not import (a collection error) names its place as Python does.
        located = [(rel(p), int(n)) for p, n in re.findall(r'File "([^"]+)", line (\d+)', text) if rel(p)]
        where = rel(crash.path) if crash is not None else None
        if crash is not None and where is not None:
            file, line = where, crash.lineno
        elif located:
            file, line = located[-1]
        elif frames:
            file, line = frames[-1]["file"], frames[-1]["line"]
        else:
            file, line = (test.split("::")[0] or None), None
        if crash is not None:
            error = crash.message
        else:
            lines = [l.strip() for l in text.splitlines() if l.strip()]
            error = re.sub(r"^E\s+", "", lines[-1]) if lines else "failed"
        self.failures.append({"test": test, "file": file, "line": line, "error": error[:1000],
                              "frames": frames[-10:]})

    def pytest_collectreport(self, report):
        if report.failed:
            self.counts["errors"] += 1
            self._failure(report, report.nodeid or "collection")

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.counts["failed" if report.when == "call" else "errors"] += 1
            self._failure(report, report.nodeid)
        elif report.skipped and report.when in ("setup", "call"):
            self.counts["skipped"] += 1
        elif report.passed and report.when == "call":
            self.counts["passed"] += 1

collect = Collect()
code = pytest.main(["-q", "--tb=short", "-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", root],
                   plugins=[collect])
sys.stdout.flush()
print("\n%s%s" % (MARK, json.dumps({"exit_code": int(code), "counts": collect.counts,
                                    "failures": collect.failures})))
'''.replace("MARK", repr(_MARK))


def project_folder(root: Path, path: str) -> Path:
    """The project's folder inside the workspace `root`; ToolError says what to do if absent."""
    folder = resolve_inside(root, path)
    if not folder.is_dir():
        raise ToolError(f"no folder {path!r} in the task workspace; write the project there first")
    return folder


def zip_folder(folder: Path) -> bytes:
    """The folder's files as a deterministic zip (sorted, fixed timestamps): the same tree
    always gives the same bytes, so a re-run of a tool that writes it changes nothing."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
                   and not SKIP_DIRS & set(p.relative_to(folder).parts))
    if not files:
        raise ToolError(f"{folder.name!r} holds no files; write the project's files first")
    if len(files) > MAX_FILES:
        raise ToolError(f"{folder.name!r} holds {len(files)} files, more than {MAX_FILES}; remove generated files")
    size = sum(p.stat().st_size for p in files)
    if size > MAX_PROJECT_BYTES:
        raise ToolError(f"{folder.name!r} holds {size} bytes, more than {MAX_PROJECT_BYTES}; keep data files out")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in files:
            info = zipfile.ZipInfo(p.relative_to(folder).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, p.read_bytes())
    return buf.getvalue()


async def _pytest_in_sandbox(ctx: ToolContext, project_zip: bytes, prefix: str, timeout_s: float) -> dict[str, Any]:
    iso = await isolation()
    if not iso.namespaces and not _unisolated_allowed():
        raise ToolError(f"tests refuse to run: no namespace sandbox here ({iso.why_no_namespaces}); allow user "
                        f"namespaces, or have the operator set {ENV_ALLOW_UNISOLATED}=1 to run code unprotected")
    limits = Limits.from_env()
    limits = replace(limits, cpu_s=max(limits.cpu_s, _MIN_CPU_S), memory_mb=max(limits.memory_mb, _MIN_MEMORY_MB))
    outcome = await run_sandboxed(iso, _RUNNER, base64.b64encode(project_zip).decode(), timeout_s, limits,
                                  hide=hidden_paths(_troupe_homes(ctx)))
    head, mark, summary = outcome.stdout.rpartition(_MARK)
    if outcome.timed_out:
        raise ToolError(f"the tests did not finish within timeout_s={timeout_s:g}; make them faster or raise it")
    if not mark:
        tail = (outcome.stderr or outcome.stdout)[-_OUTPUT_TAIL:].strip()
        raise ToolError(f"pytest did not run in the sandbox (status {outcome.status}): {tail}")
    result = json.loads(summary)
    for f in result["failures"]:  # workspace-relative, as the plan's `owns` patterns are
        if f.get("file"):
            f["file"] = f"{prefix}{f['file']}"
        for frame in f["frames"]:
            frame["file"] = f"{prefix}{frame['file']}"
    counts = result["counts"]
    result["passed"] = result["exit_code"] == 0 and counts["failed"] == 0 and counts["errors"] == 0
    result["summary"] = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no tests ran"
    result["output"] = head[-_OUTPUT_TAIL:]
    return result


@tool
async def run_pytest(
    ctx: ToolContext,
    path: str = "project",
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 120,
) -> dict[str, Any]:
    """Run a project's pytest suite in the sandbox (no network) and report every failure.

    A failing suite is a result, not an error: `passed` is false and `failures` lists each
    failing test with the file, line and error where it failed.

    Args:
        path: The project's folder in the workspace (its root holds the tests and pytest.ini).
        timeout_s: Wall-clock limit for the whole run.
    """
    root = ctx.workspace.resolve()
    folder = project_folder(root, path)
    project = await asyncio.to_thread(zip_folder, folder)
    prefix = folder.relative_to(root).as_posix()
    return await _pytest_in_sandbox(ctx, project, f"{prefix}/" if prefix != "." else "", timeout_s)


@tool
async def run_bundle_tests(
    ctx: ToolContext,
    bundle: str = "app.zip",
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 120,
) -> dict[str, Any]:
    """Unpack a zip bundle in a fresh sandbox and run its tests there, as a user would.

    Args:
        bundle: The zip file in the workspace.
        timeout_s: Wall-clock limit for the whole run.
    """
    target = resolve_inside(ctx.workspace.resolve(), bundle)
    if not target.is_file():
        raise ToolError(f"no bundle {bundle!r} in the task workspace; build it first (bundle_app)")
    data = await asyncio.to_thread(target.read_bytes)
    if len(data) > MAX_PROJECT_BYTES:
        raise ToolError(f"{bundle!r} is {len(data)} bytes, more than {MAX_PROJECT_BYTES}")
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ToolError(f"{bundle!r} is not a zip file")
    result = await _pytest_in_sandbox(ctx, data, f"{bundle}:", timeout_s)
    result["bundle"] = bundle
    return result

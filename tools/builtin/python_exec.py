"""The `python` tool: run model-written code in the sandbox of `tools/sandbox.py`."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Annotated

from pydantic import Field

from tools.registry import ToolContext, ToolError, tool
from tools.sandbox import (
    ENV_ALLOW_UNISOLATED,
    NET_REFUSED,
    Limits,
    Outcome,
    hidden_paths,
    human_bytes,
    isolation,
    run_sandboxed,
)
from troupe.paths import home_of_workspace

__all__ = ["python"]

log = logging.getLogger(__name__)

_TAIL_CHARS = 2000


def _unisolated_allowed() -> bool:
    return os.environ.get(ENV_ALLOW_UNISOLATED, "").strip().lower() in ("1", "true", "yes")


def _troupe_homes(ctx: ToolContext) -> list[Path]:
    """Every Troupe home this call could know of: the one its workspace lives in (the tool
    pool's own), and one a deployment names in `ctx.extras["troupe_home"]`."""
    homes = [home_of_workspace(ctx.workspace), ctx.extras.get("troupe_home")]
    return [Path(h) for h in homes if h]


def _failure(outcome: Outcome, limits: Limits, timeout_s: float) -> ToolError:
    status, err = outcome.status, outcome.stderr
    if outcome.overflow:
        why = (
            f"output exceeded {human_bytes(limits.max_output_bytes)}; print less "
            "(a summary, or write big results to a file and print its path)"
        )
    elif outcome.procs_limit_hit or "Resource temporarily unavailable" in err:
        why = (
            "process limit reached (fork bomb?); start fewer processes or threads "
            f"(the limit is TROUPE_PYTHON_MAX_PROCS={limits.max_procs})"
        )
    elif outcome.timed_out:
        why = f"wall-time limit of {timeout_s:g} s exceeded; make the code finish sooner or pass a larger timeout_s"
    elif status.get("signal") == signal.SIGXCPU or (
        status.get("signal") == signal.SIGKILL and status.get("cpu_s", 0) >= limits.cpu_s
    ):
        why = f"CPU time limit of {limits.cpu_s} s exceeded; do less work (the limit is TROUPE_PYTHON_CPU_S)"
    elif "MemoryError" in err or "Cannot allocate memory" in err:
        why = (
            f"memory limit of {limits.memory_mb} MiB exceeded; use less memory "
            "(the limit is TROUPE_PYTHON_MEMORY_MB)"
        )
    elif NET_REFUSED in err or "Network is unreachable" in err:
        why = f"{NET_REFUSED}; use the http_fetch tool to get web content, then pass it in via code or stdin"
    elif "signal" in status:
        why = f"the code was killed by {signal.Signals(status['signal']).name}"
    elif "exit" in status:
        why = f"the code exited with status {status['exit']}"
    else:  # no status: the sandbox itself did not start
        return ToolError(f"the python sandbox failed to start: {err[-_TAIL_CHARS:]}", retryable=True)
    shown = [("stderr", err)] if outcome.overflow else [("stdout", outcome.stdout), ("stderr", err)]
    for name, text in shown:
        if tail := text[-_TAIL_CHARS:].strip():
            why += f"\n--- {name} (last {_TAIL_CHARS} chars) ---\n{tail}"
    return ToolError(why)


@tool(name="python")
async def python(
    ctx: ToolContext,
    code: str,
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 30,
    stdin: str = "",
) -> str:
    """Run a Python 3 script in a sandbox without network access and return what it printed.

    Each call starts fresh in an empty temporary directory; nothing persists between calls.

    Args:
        code: The script to run; print the results you want back.
        timeout_s: Wall-clock limit in seconds for the whole run.
        stdin: Text fed to the script's standard input.
    """
    limits = Limits.from_env()
    iso = await isolation()
    if not iso.namespaces:
        if not _unisolated_allowed():
            raise ToolError(
                f"the python tool refuses to run: no namespace sandbox here ({iso.why_no_namespaces}), so the "
                "code could read Troupe's own state (the database, every tenant's workspaces). Allow user "
                "namespaces on this host (util-linux `unshare`, kernel.unprivileged_userns_clone=1), or have "
                f"the operator set {ENV_ALLOW_UNISOLATED}=1 to run code unprotected")
        log.warning("python tool: running code WITHOUT namespace isolation (%s=1): it can read every file "
                    "this service can, TROUPE_HOME included", ENV_ALLOW_UNISOLATED)
    outcome = await run_sandboxed(iso, code, stdin, timeout_s, limits, hide=hidden_paths(_troupe_homes(ctx)))
    if outcome.status.get("exit") == 0 and not (outcome.timed_out or outcome.overflow):
        return outcome.stdout
    raise _failure(outcome, limits, timeout_s)

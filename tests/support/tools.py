"""Tools for runtime tests: they count their executions in a ledger file (one line per run),
so a test can tell how often each node's tool really ran across crashes."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tools.registry import ToolContext, ToolError, tool


def _ledger(ctx: ToolContext) -> Path:
    return Path(os.environ.get("TROUPE_TEST_LEDGER_DIR", ctx.workspace.parent)) / f"{ctx.task_id}.ledger"


def _record(ctx: ToolContext, what: str) -> None:
    # O_APPEND writes of one short line are atomic, so concurrent replicas may share it.
    with open(_ledger(ctx), "a") as f:
        f.write(f"{ctx.node_id} {ctx.idempotency_key} {ctx.attempt} {what}\n")


@tool
async def ledger_step(ctx: ToolContext, value: str, sleep_s: float = 0.0) -> str:
    """Sleep, record one completed (or cancelled) run in the ledger, and return `value`.

    Args:
        value: what the node outputs.
        sleep_s: how long the step takes.
    """
    _record(ctx, "start")
    try:
        await asyncio.sleep(sleep_s)
    except asyncio.CancelledError:  # the caller gave up and the pool stopped the run
        _record(ctx, "cancelled")
        raise
    _record(ctx, "done")
    return value


@tool
async def record(ctx: ToolContext, value: str) -> str:
    """Record one run in the ledger and return `value`.

    Args:
        value: what the node outputs.
    """
    _record(ctx, "record")
    return value


@tool
async def source_page(ctx: ToolContext, url: str, text: str) -> dict:
    """Return a source record (as a fetch tool would) for citation checks.

    Args:
        url: the page's address.
        text: the page's text.
    """
    return {"url": url, "text": text}


@tool
async def write_text(ctx: ToolContext, name: str, text: str) -> dict:
    """Write `text` into the workspace file `name`.

    Args:
        name: file name inside the workspace.
        text: the content.
    """
    _record(ctx, "write")
    path = ctx.workspace / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return {"name": name, "bytes": len(text.encode())}


@tool
async def flaky(ctx: ToolContext, fail_times: int, value: str = "ok") -> str:
    """Fail with a retryable error on the first `fail_times` attempts.

    Args:
        fail_times: attempts that fail before one succeeds.
        value: output on success.
    """
    _record(ctx, "attempt")
    if ctx.attempt <= fail_times:
        raise ToolError(f"transient failure on attempt {ctx.attempt}", retryable=True)
    return value


@tool(side_effects=True)
async def send_once(ctx: ToolContext, to: str, sleep_s: float = 0.0) -> str:
    """Pretend to send a message: an effect outside Troupe that must not run twice.

    Args:
        to: the recipient.
        sleep_s: how long sending takes.
    """
    _record(ctx, "send-start")
    await asyncio.sleep(sleep_s)
    _record(ctx, "sent")
    return f"sent to {to}"

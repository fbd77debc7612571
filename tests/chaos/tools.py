"""Tools of the chaos workload. Each appends one JSON line per execution to an external
ledger file (outside Troupe: Troupe's own records are what the checker distrusts), named
in the call's arguments so every replica of every process writes the same file."""

from __future__ import annotations

import asyncio
import json
import os
import time

from tools.registry import ToolContext, ToolError, tool


def record(ledger: str, ctx: ToolContext, what: str) -> None:
    line = json.dumps({"ts": time.time(), "key": ctx.idempotency_key, "task": ctx.task_id, "node": ctx.node_id,
                       "attempt": ctx.attempt, "pid": os.getpid(), "what": what}) + "\n"
    # One short O_APPEND write is atomic: concurrent processes never interleave lines.
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def combine(value: str, inputs: list[str | None]) -> str:
    """What a step outputs: the checker recomputes it from the step's upstream outputs (None:
    a send the user skipped)."""
    return f"{value}<{'|'.join('-' if x is None else x for x in inputs)}>"


@tool
async def chaos_step(ctx: ToolContext, ledger: str, value: str, inputs: list[str | None] | None = None,
                     sleep_s: float = 0.0) -> str:
    """A step of the chaos workload: waits, then combines its value with its inputs.

    Args:
        ledger: the external ledger file.
        value: this step's own value.
        inputs: upstream outputs it depends on.
        sleep_s: how long the step takes.
    """
    record(ledger, ctx, "start")
    await asyncio.sleep(sleep_s)
    record(ledger, ctx, "done")
    return combine(value, inputs or [])


@tool
async def chaos_flaky(ctx: ToolContext, ledger: str, value: str, fail_times: int) -> str:
    """Fails (retryably, with a known outcome) on its first `fail_times` attempts.

    Args:
        ledger: the external ledger file.
        value: output on success.
        fail_times: attempts that fail before one succeeds.
    """
    record(ledger, ctx, "start")
    if ctx.attempt <= fail_times:
        record(ledger, ctx, "fail")
        raise ToolError(f"transient failure on attempt {ctx.attempt}", retryable=True)
    record(ledger, ctx, "done")
    return combine(value, [])


@tool(side_effects=True)
async def chaos_send(ctx: ToolContext, ledger: str, to: str, body: str = "", sleep_s: float = 0.0) -> str:
    """Send a message: an effect outside Troupe that must never happen twice on its own.

    Args:
        ledger: the external ledger file.
        to: the recipient.
        body: the message.
        sleep_s: how long sending takes.
    """
    record(ledger, ctx, "start")
    await asyncio.sleep(sleep_s)
    record(ledger, ctx, "done")
    return f"sent to {to}: {body}"

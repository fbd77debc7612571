"""Tools of the benchmarks: a no-op (orchestration alone) and a sleep (tasks held in flight)."""

import asyncio

from tools.registry import ToolContext, tool


@tool
async def noop(ctx: ToolContext, value: str = "") -> str:
    """Return `value` at once.

    Args:
        value: echoed back.
    """
    return value


@tool
async def sleep(ctx: ToolContext, seconds: float = 5.0) -> float:
    """Wait, doing nothing: a step that holds a task in flight (the scale benchmark).

    Args:
        seconds: how long to wait.
    """
    await asyncio.sleep(seconds)
    return seconds

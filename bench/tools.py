"""A no-op tool, so that the runtime benchmark measures orchestration alone."""

from tools.registry import ToolContext, tool


@tool
async def noop(ctx: ToolContext, value: str = "") -> str:
    """Return `value` at once.

    Args:
        value: echoed back.
    """
    return value

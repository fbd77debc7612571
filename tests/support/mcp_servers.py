"""Small MCP servers the tests start: `python -m tests.support.mcp_servers stdio` (a slow tool
and a side-effecting one, over stdio) or `... http PORT` (streamable HTTP)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

server = MCPServer(name="troupe-test-tools")


def _note(what: str) -> None:
    ledger = os.environ.get("MCP_TEST_LEDGER")
    if ledger:
        with Path(ledger).open("a") as f:
            f.write(what + "\n")


@server.tool(annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True))
async def slow_echo(value: str, sleep_s: float = 0.0) -> str:
    """Return `value` after `sleep_s` seconds.

    Args:
        value: what to return.
        sleep_s: how long to wait first.
    """
    _note(f"slow_echo start {value}")
    await asyncio.sleep(sleep_s)
    _note(f"slow_echo end {value}")
    return f"echo:{value}"


@server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=False))
async def send_note(to: str, sleep_s: float = 0.0) -> str:
    """Send a note (a side effect: recorded in the test's ledger).

    Args:
        to: the recipient.
        sleep_s: how long the send takes.
    """
    _note(f"send_note start {to}")
    await asyncio.sleep(sleep_s)
    _note(f"send_note end {to}")
    return f"sent to {to}"


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        import uvicorn

        uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")

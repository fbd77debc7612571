"""Run one ToolCall against a registry: the tool pool's work, without Ray, so that it can
be used in-process too (tests, single-process runs)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from tools.registry import (
    ToolArgumentError,
    ToolContext,
    ToolError,
    ToolRegistry,
    UnknownToolError,
)
from troupe.tool_calls import ToolCall, ToolOutcome
from troupe.tracing import span

__all__ = ["execute_call"]

log = logging.getLogger("troupe.tools")


async def execute_call(registry: ToolRegistry, call: ToolCall, workspace: Path, *,
                       max_output_bytes: int = 1_000_000, extras: dict[str, Any] | None = None) -> ToolOutcome:
    """Validate and run the call; every failure becomes an outcome, never an exception."""
    started = time.monotonic()

    def failure(error: str, retryable: bool = False) -> ToolOutcome:
        return ToolOutcome.failure(error, retryable=retryable, duration_s=time.monotonic() - started)

    workspace.mkdir(parents=True, exist_ok=True)
    ctx = ToolContext(task_id=call.task_id, tenant=call.tenant, node_id=call.node_id,
                      idempotency_key=call.idempotency_key, workspace=workspace, attempt=call.attempt,
                      extras=dict(extras or {}))
    with span("tool", parent=call.trace or None, task_id=call.task_id, tool=call.tool, node_id=call.node_id):
        try:
            output = await registry.get(call.tool)(ctx, call.args)
        except (UnknownToolError, ToolArgumentError) as exc:
            return failure(str(exc))
        except ToolError as exc:
            return failure(exc.message, exc.retryable)
        except Exception as exc:  # a bug in one tool must not take the pool down
            log.exception("tool %s crashed", call.tool)
            return failure(f"tool {call.tool!r} crashed: {type(exc).__name__}: {exc}")
    try:
        size = len(json.dumps(output, ensure_ascii=False).encode())
    except (TypeError, ValueError):
        return failure(f"tool {call.tool!r} returned a value that is not JSON")
    if size > max_output_bytes:
        return failure(f"tool {call.tool!r} returned {size} bytes, over the {max_output_bytes}-byte limit; "
                       "have it write large results to a file in the workspace")
    return ToolOutcome(ok=True, output=output, duration_s=time.monotonic() - started)

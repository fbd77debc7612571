"""Run one ToolCall against a registry: the tool pool's work, without Ray, so that it can
be used in-process too (tests, single-process runs). With a call ledger, a side-effecting
call runs only after claiming its idempotency key, and its outcome is kept there
(memory/call_ledger.py). An idempotent call skips the ledger (two commits a call): run again
after a crash, it does no harm, and once its result is in the log the runner never issues it."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from memory.call_ledger import CallLedger, Decision
from tools.registry import (
    ToolArgumentError,
    ToolContext,
    ToolError,
    ToolOutcomeUnknown,
    ToolRegistry,
    ToolUnavailable,
    UnknownToolError,
)
from troupe.tool_calls import ToolCall, ToolOutcome
from troupe.tracing import span

__all__ = ["execute_call"]

log = logging.getLogger("troupe.tools")


async def execute_call(registry: ToolRegistry, call: ToolCall, workspace: Path, *,
                       max_output_bytes: int = 1_000_000, extras: dict[str, Any] | None = None,
                       ledger: CallLedger | None = None) -> ToolOutcome:
    """Run the call at most as often as its ledger allows; every failure becomes an outcome."""
    if ledger is None or not call.side_effects:
        return await _run(registry, call, workspace, max_output_bytes, extras)
    try:
        claim = await ledger.claim(call)
    except Exception as exc:  # nothing ran: the caller asks again, as for a pool that is gone
        log.warning("call ledger unavailable for %s", call.idempotency_key, exc_info=True)
        return ToolOutcome(ok=False, unavailable=True, retryable=True,
                           error=f"the call ledger is unavailable: {type(exc).__name__}")
    if claim.decision == Decision.replay:
        assert claim.outcome is not None
        return ToolOutcome(ok=bool(claim.outcome.get("ok")), output=claim.outcome.get("output"),
                           error=claim.outcome.get("error"), retryable=bool(claim.outcome.get("retryable")),
                           replayed=True, runs=claim.runs)
    if claim.decision == Decision.busy:
        return ToolOutcome(ok=False, busy=True, error="another run of this call is in progress", runs=claim.runs)
    if claim.decision == Decision.fenced:
        return ToolOutcome(ok=False, fenced=True, error="the caller's lease on the task is superseded")
    if claim.decision == Decision.in_doubt:
        return ToolOutcome(ok=False, in_doubt=True, runs=claim.runs, error=(
            f"run {claim.runs} of this call started and its outcome is unknown (its process died, it timed out "
            "or was cancelled); the tool has side effects, so it is not run again without the user's retry"))
    assert claim.run_id is not None
    job = asyncio.create_task(_run(registry, call, workspace, max_output_bytes, extras))
    ledger.track(call, claim.run_id, job)
    try:
        outcome = await asyncio.shield(job)
    except asyncio.CancelledError:
        job.cancel()
        await asyncio.shield(_quietly(ledger.abandon(call, claim.run_id)))
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # our caller gave up (timeout, cancelled node)
        # The heartbeat stopped it: a newer driver holds the task.
        return ToolOutcome(ok=False, fenced=True, error="stopped: the caller's lease on the task was superseded")
    if outcome.in_doubt:  # the run is left in doubt in the ledger too: only the user's retry repeats it
        await _quietly(ledger.abandon(call, claim.run_id))
        return outcome.model_copy(update={"runs": claim.runs})
    if outcome.unavailable:  # nothing ran: the key is free for the next ask
        await _quietly(ledger.release(call, claim.run_id, outcome))
        return outcome
    try:
        await ledger.finish(call, claim.run_id, outcome)
    except Exception:  # the caller still gets the outcome and records it with its event
        log.warning("could not keep the outcome of %s in the ledger", call.idempotency_key, exc_info=True)
    return outcome.model_copy(update={"runs": claim.runs})


async def _quietly(aw: Any) -> None:
    try:
        await aw
    except Exception:
        log.warning("call ledger write failed", exc_info=True)


async def _run(registry: ToolRegistry, call: ToolCall, workspace: Path, max_output_bytes: int,
               extras: dict[str, Any] | None) -> ToolOutcome:
    """Validate and run the call; every failure becomes an outcome, never an exception."""
    started = time.monotonic()

    def failure(error: str, retryable: bool = False) -> ToolOutcome:
        return ToolOutcome.failure(error, retryable=retryable, duration_s=time.monotonic() - started)

    workspace.mkdir(parents=True, exist_ok=True)
    ctx = ToolContext(task_id=call.task_id, tenant=call.tenant, node_id=call.node_id,
                      idempotency_key=call.idempotency_key, workspace=workspace, attempt=call.attempt,
                      extras=dict(extras or {}), deadline=started + call.budget_s if call.budget_s else None)
    with span("tool", parent=call.trace or None, task_id=call.task_id, tool=call.tool, node_id=call.node_id):
        try:
            output = await registry.get(call.tool)(ctx, call.args)
        except (UnknownToolError, ToolArgumentError) as exc:
            return failure(str(exc))
        except ToolOutcomeUnknown as exc:  # an idempotent call is retried; a side-effecting one asks
            if call.side_effects:
                return ToolOutcome(ok=False, in_doubt=True, error=exc.message, duration_s=time.monotonic() - started)
            return failure(exc.message, retryable=True)
        except ToolUnavailable as exc:  # nothing ran: the runner asks again without spending an attempt
            return ToolOutcome(ok=False, unavailable=True, retryable=True, error=exc.message,
                               duration_s=time.monotonic() - started)
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

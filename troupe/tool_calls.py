"""The tool pool's call contract, shared by the Conductor (caller) and the pool (callee)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = ["ToolCall", "ToolOutcome"]


class ToolCall(BaseModel):
    tool: str
    args: dict[str, Any]
    task_id: str
    tenant: str
    node_id: str
    idempotency_key: str
    attempt: int = 1
    trace: dict[str, str] = Field(default_factory=dict, description="W3C trace context of the node span.")
    epoch: int | None = Field(None, description="The caller's lease epoch: a call from a superseded driver is refused.")
    side_effects: bool = Field(False, description="Never run again on its own when an earlier run is in doubt.")
    budget_s: float | None = Field(None, description="How long the caller waits for the outcome; the tool's "
                                                     "own waits are bounded by it (ToolContext.deadline).")
    confirmed_runs: int | None = Field(
        None, description="The user answered `retry` about the run numbered so: that run, and only it, may be repeated.")


class ToolOutcome(BaseModel):
    ok: bool
    output: Any = None
    error: str | None = None
    retryable: bool = False
    duration_s: float = 0.0
    replayed: bool = False
    """The ledger held this call's outcome: returned without running the tool again."""
    busy: bool = False
    """Another run of the same call is in progress; ask again shortly."""
    in_doubt: bool = False
    """An earlier run started and its outcome is unknown; the tool has side effects, so the user decides."""
    fenced: bool = False
    """The caller's lease is superseded; it must stop."""
    unavailable: bool = False
    """The call could not be started (its ledger was unreachable): nothing ran; ask again shortly."""
    runs: int = 0
    """Runs of this call the ledger knows of (with `in_doubt`: the run the user is asked about)."""

    @classmethod
    def failure(cls, error: str, *, retryable: bool, duration_s: float = 0.0) -> "ToolOutcome":
        return cls(ok=False, error=error, retryable=retryable, duration_s=duration_s)

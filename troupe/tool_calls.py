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


class ToolOutcome(BaseModel):
    ok: bool
    output: Any = None
    error: str | None = None
    retryable: bool = False
    duration_s: float = 0.0

    @classmethod
    def failure(cls, error: str, *, retryable: bool, duration_s: float = 0.0) -> "ToolOutcome":
        return cls(ok=False, error=error, retryable=retryable, duration_s=duration_s)

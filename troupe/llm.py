"""The LLM call contract shared by the router (callee) and planner, verifier and agent
nodes (callers). Messages and tool schemas are OpenAI chat-completions shaped, because that
is what LiteLLM speaks and what every local server (vLLM, Ollama, llama.cpp) accepts.

Nothing here imports LiteLLM or Ray: the runner and planner are tested with a fake client.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

__all__ = ["ChatRequest", "LLMClient", "LLMReply", "LLMRequestError", "LLMUnavailable", "LLMUsage", "ModelGroup",
           "ToolCallMode", "ToolCallRequest"]

ModelGroup = Literal["fast", "reason", "vision"]
ToolCallMode = Literal["auto", "native", "emulated"]
"""How a model group gets tool calls: `native` passes `tools` to the model; `emulated` asks
for a JSON envelope under a schema instead (models without tool calling); `auto` decides from
the model's capabilities."""


class ChatRequest(BaseModel):
    group: ModelGroup = "reason"
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = Field(None, description="OpenAI `tools` (type=function) schemas.")
    response_format: dict[str, Any] | None = Field(
        None, description="OpenAI response_format, e.g. {'type': 'json_schema', 'json_schema': {...}}.")
    temperature: float | None = None
    max_tokens: int | None = None
    timeout_s: float | None = None
    task_id: str | None = Field(None, description="For logs and traces; the caller records the usage event.")
    trace: dict[str, str] | None = Field(
        None, description="The calling span of the task as W3C trace headers: the model call's span nests under it.")


class ToolCallRequest(BaseModel):
    id: str
    name: str
    arguments: str = "{}"
    """JSON text as the model produced it; `args()` parses it."""

    def args(self) -> dict[str, Any]:
        value = json.loads(self.arguments or "{}")
        if not isinstance(value, dict):
            raise ValueError("tool arguments must be a JSON object")
        return value


class LLMUsage(BaseModel):
    """One model call, as recorded on its task (event `llm.called`)."""

    group: str
    model: str
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    engine: str | None = None
    """The Troupe engine (an `engines:` entry of the app) that answered; None for hosted models."""
    tool_calls: ToolCallMode | None = None
    """`emulated` when the tool calls of this call went through the JSON envelope."""


class LLMReply(BaseModel):
    content: str | None = None
    tool_calls: list[ToolCallRequest] = Field(default_factory=list)
    finish_reason: str | None = None
    usage: LLMUsage

    def assistant_message(self) -> dict[str, Any]:
        """The reply as the assistant message to append to the conversation."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            msg["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}} for c in self.tool_calls]
        return msg


class LLMUnavailable(Exception):
    """No deployment of the group answered (all failing or cooling down), or none is configured.
    `retryable` is False when nothing is configured at all."""

    def __init__(self, message: str, *, retryable: bool = True):
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class LLMRequestError(ValueError):
    """The request itself is wrong (unknown model group, or the model refused it as a bad
    request); retrying will not help. `status` is the HTTP status the Gateway answers."""

    def __init__(self, message: str, *, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status

    def __reduce__(self):
        return (_request_error, (self.message, self.status))


def _request_error(message: str, status: int) -> LLMRequestError:
    return LLMRequestError(message, status=status)


class LLMClient(Protocol):
    async def chat(self, request: ChatRequest) -> LLMReply: ...

    async def configured(self) -> bool:
        """Whether any model is configured; without one, Troupe runs in offline mode."""
        ...

    async def context_window(self, group: str) -> int | None:
        """The smallest context window (tokens) of the group's models; None if unknown."""
        ...

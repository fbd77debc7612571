"""An in-process scripted model for runner tests (no HTTP, no Ray): each call takes the next
scripted reply; a call with no reply left, or a reply never used, fails the test."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

from troupe.llm import ChatRequest, LLMReply, LLMUsage, ToolCallRequest

_ids = itertools.count(1)


def text(content: str) -> dict[str, Any]:
    return {"content": content}


def calls(*pairs: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """A turn that calls tools: calls(("ledger_step", {"value": "x"}), ...)."""
    return {"tool_calls": [{"id": f"call_{next(_ids)}", "name": n, "arguments": json.dumps(a)} for n, a in pairs]}


def as_json(value: Any) -> dict[str, Any]:
    return {"content": json.dumps(value)}


class FakeLLM:
    def __init__(self, *replies: dict[str, Any] | Callable[[ChatRequest], dict[str, Any]] | Exception,
                 cost_usd: float = 0.001, window: int | None = None):
        self.window = window
        self.replies = list(replies)
        self.requests: list[ChatRequest] = []
        self.cost_usd = cost_usd

    def add(self, *replies: Any) -> None:
        self.replies += replies

    async def configured(self) -> bool:
        return True

    async def context_window(self, group: str) -> int | None:
        return self.window

    async def chat(self, request: ChatRequest) -> LLMReply:
        self.requests.append(request)
        assert self.replies, f"unscripted model call; last message: {request.messages[-1]}"
        reply = self.replies.pop(0)
        if callable(reply):
            reply = reply(request)
        if isinstance(reply, Exception):
            raise reply
        return LLMReply(content=reply.get("content"), finish_reason=reply.get("finish_reason"),
                        tool_calls=[ToolCallRequest(**c) for c in reply.get("tool_calls", [])],
                        usage=LLMUsage(group=request.group, model="fake/model", tokens_in=100, tokens_out=20,
                                       cost_usd=self.cost_usd, latency_s=0.001))

    def assert_all_used(self) -> None:
        assert not self.replies, f"{len(self.replies)} scripted replies were never used: {self.replies}"

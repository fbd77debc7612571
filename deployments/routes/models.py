"""OpenAI-compatible `POST /v1/chat/completions` and `GET /v1/models` over the LLM router,
so any OpenAI SDK client can use Troupe's model groups (`model` is `fast`, `reason`, `vision`).
Calls are the caller's tenant's: rate limited, recorded, and held to its daily model budget."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from deployments.auth import Member, Principal, Viewer
from deployments.backend import Backend, BackendDep
from deployments.llm_router import LLMRequestError
from deployments.problems import Problem
from troupe.llm import LLMUnavailable

__all__ = ["ChatCompletionBody", "router"]

router = APIRouter(tags=["models"])


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionBody(BaseModel):
    """What the route checks itself; other OpenAI parameters pass through to the router,
    which forwards only the ones it knows."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, description="A model group: fast, reason or vision (see GET /v1/models).")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False


def _problem(exc: Exception) -> Problem:
    if isinstance(exc, LLMRequestError):
        return Problem(exc.status, "Unknown model" if exc.status == 404 else "Bad request to the model", exc.message)
    assert isinstance(exc, LLMUnavailable)
    if not exc.retryable:
        return Problem(503, "No model configured", exc.message)
    return Problem(503, "Model unavailable", exc.message, retry_after_s=5)


def _router(backend: Backend) -> Any:
    if getattr(backend, "llm", None) is None:
        raise Problem(503, "No model configured", "this application has no LLM router deployment")
    return backend.llm


async def _check_budget(backend: Backend, tenant: str) -> None:
    """The tenant's spend through this API today, against its model budget."""
    limits = backend.limits_for(tenant)
    day = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    cost, calls = await backend.access.model_spend(tenant, day)
    over = (f"model_budget_usd_per_day={limits.model_budget_usd_per_day:g} (spent {cost:.4f})"
            if cost >= limits.model_budget_usd_per_day else
            f"model_calls_per_day={limits.model_calls_per_day}" if calls >= limits.model_calls_per_day else None)
    if over:
        retry = int((day + timedelta(days=1) - datetime.now(timezone.utc)).total_seconds()) + 1
        raise Problem(429, "Model budget spent", f"tenant {tenant!r} reached {over} for today (UTC); an admin can "
                                                 "raise it in the Gateway's limits or tenant_limits",
                      retry_after_s=retry)


async def _record(backend: Backend, caller: Principal, model: str, usage: dict[str, Any], streamed: bool) -> None:
    await backend.access.record_model_usage(
        tenant=caller.tenant, key_id=caller.key_id, model=model, tokens_in=int(usage.get("prompt_tokens") or 0),
        tokens_out=int(usage.get("completion_tokens") or 0), cost_usd=float(usage.get("cost") or 0.0),
        streamed=streamed)


@router.get("/v1/models", summary="The model groups (OpenAI-compatible)", operation_id="list_models")
async def models(caller: Viewer, backend: BackendDep) -> dict[str, Any]:
    return {"object": "list", "data": await _router(backend).models.remote()}


@router.post("/v1/chat/completions", summary="A chat completion from a model group (OpenAI-compatible)",
             response_model=None, operation_id="chat_completion")
async def chat_completions(body: ChatCompletionBody, caller: Member,
                           backend: BackendDep) -> JSONResponse | StreamingResponse:
    llm = _router(backend)
    await _check_budget(backend, caller.tenant)
    payload = body.model_dump(mode="json", exclude_none=True)
    if not body.stream:
        try:
            reply = await llm.completion.remote(payload)
        except (LLMRequestError, LLMUnavailable) as exc:
            raise _problem(exc) from None
        await _record(backend, caller, reply.get("model") or body.model, reply.get("usage") or {}, streamed=False)
        return JSONResponse(reply)
    chunks = llm.options(stream=True).stream.remote(payload)
    # Wait for the first chunk so that "unknown model" or "all down" is still a problem
    # response with its status, not a 200 stream that breaks.
    try:
        first = await chunks.__anext__()
    except (LLMRequestError, LLMUnavailable) as exc:
        raise _problem(exc) from None
    # A streamed call counts against the day's calls; its cost is unknown (LiteLLM reports 0).
    await _record(backend, caller, body.model, {}, streamed=True)

    async def relay() -> AsyncIterator[str]:
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        finally:
            chunks.cancel()  # the client went away: stop the upstream call too

    return StreamingResponse(relay(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

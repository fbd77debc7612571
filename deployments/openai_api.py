"""OpenAI-compatible `POST /v1/chat/completions` and `GET /v1/models` over the LLM router,
so any OpenAI SDK client can use Troupe's model groups (`model` is `fast`, `reason`, `vision`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from deployments.llm_router import LLMRequestError
from deployments.problems import Problem
from troupe.llm import LLMUnavailable

__all__ = ["ChatCompletionBody", "add_openai_routes"]


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


def add_openai_routes(app: FastAPI, backend: Any) -> None:
    """Add the routes; `backend.llm` is the LLMRouter's DeploymentHandle (None: no router)."""

    def router() -> Any:
        llm = getattr(backend, "llm", None)
        if llm is None:
            raise Problem(503, "No model configured", "this application has no LLM router deployment")
        return llm

    @app.get("/v1/models", summary="The model groups (OpenAI-compatible)")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": await router().models.remote()}

    @app.post("/v1/chat/completions", summary="A chat completion from a model group (OpenAI-compatible)",
              response_model=None)
    async def chat_completions(body: ChatCompletionBody) -> JSONResponse | StreamingResponse:
        llm = router()
        payload = body.model_dump(mode="json", exclude_none=True)
        if not body.stream:
            try:
                return JSONResponse(await llm.completion.remote(payload))
            except (LLMRequestError, LLMUnavailable) as exc:
                raise _problem(exc) from None
        chunks = llm.options(stream=True).stream.remote(payload)
        # Wait for the first chunk so that "unknown model" or "all down" is still a problem
        # response with its status, not a 200 stream that breaks.
        try:
            first = await chunks.__anext__()
        except (LLMRequestError, LLMUnavailable) as exc:
            raise _problem(exc) from None

        async def relay() -> AsyncIterator[str]:
            try:
                yield first
                async for chunk in chunks:
                    yield chunk
            finally:
                chunks.cancel()  # the client went away: stop the upstream call too

        return StreamingResponse(relay(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

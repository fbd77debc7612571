"""LlamaCppEngine: llama.cpp's server (the xllamacpp wheel) inside a Serve replica, serving
one GGUF file on CPU. The LLMRouter calls `chat` through a DeploymentHandle with an OpenAI
chat request and gets the OpenAI response back; no HTTP between them.

llama.cpp also listens on a loopback port of the replica, which only `info`, `count_tokens`
and the health check use (its /props, /tokenize and /health have no Python binding).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
from ray import serve

from deployments.engines.config import LlamaCppEngineConfig, check_gguf, resolve_model_path
from troupe.llm import LLMRequestError, LLMUnavailable

__all__ = ["LlamaCppEngine", "CONTEXT_EXCEEDED_STATUS"]

log = logging.getLogger("troupe.engines")

CONTEXT_EXCEEDED_STATUS = 413
"""The status of the LLMRequestError for a request longer than the context window."""
# Request fields llama.cpp must not take from a caller: `model` would name another file,
# streaming is not spoken over the handle.
_DROPPED = ("model", "stream", "stream_options", "n")


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=32, health_check_period_s=10,
                  health_check_timeout_s=30, graceful_shutdown_timeout_s=5)
class LlamaCppEngine:
    def __init__(self, config: LlamaCppEngineConfig | dict[str, Any]):
        self.config = config if isinstance(config, LlamaCppEngineConfig) else \
            LlamaCppEngineConfig.model_validate(config)
        self.path = check_gguf(resolve_model_path(self.config.model_path))
        import xllamacpp

        cfg = self.config
        params = xllamacpp.CommonParams()
        params.model.path = str(self.path)
        params.n_parallel = cfg.n_parallel
        params.n_ctx = cfg.n_ctx * cfg.n_parallel  # llama.cpp splits the context among its slots
        threads = cfg.n_threads or max(1, int(cfg.num_cpus))
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.hostnames = ["127.0.0.1"]
        params.port = 0  # any free port: several engines may share a node
        params.verbosity = -1  # llama.cpp logs every token batch otherwise
        if cfg.chat_template:
            params.chat_template = cfg.chat_template
        started = time.monotonic()
        try:
            self.server = xllamacpp.Server(params)
        except Exception as exc:  # a corrupt or unsupported GGUF fails inside llama.cpp
            raise RuntimeError(f"llama.cpp could not load {str(self.path)!r} ({type(exc).__name__}: {exc}); is it "
                               "a GGUF model that this llama.cpp supports?") from None
        self.base_url = self.server.listening_address
        props = httpx.get(f"{self.base_url}/props", timeout=30).json()
        caps = props.get("chat_template_caps") or {}
        self.native_tools = bool(caps.get("supports_tool_calls"))
        self.window = int((props.get("default_generation_settings") or {}).get("n_ctx") or cfg.n_ctx)
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=30)
        log.info("llamacpp engine %s: %s loaded in %.1f s (window %d tokens, %d slots, %d threads, native tool "
                 "calls: %s)", cfg.name, self.path.name, time.monotonic() - started, self.window, cfg.n_parallel,
                 threads, self.native_tools)

    async def info(self) -> dict[str, Any]:
        """What the router needs to know: the window and whether tool calls are native."""
        return {"name": self.config.name, "kind": "llamacpp", "model": self.path.name,
                "context_window": self.window, "native_tool_calls": self.native_tools,
                "json_schema": True, "slots": self.config.n_parallel,
                "address": self.base_url}  # llama.cpp's own loopback server (benchmarks compare with it)

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """An OpenAI chat completion for an OpenAI chat request."""
        request = {k: v for k, v in body.items() if k not in _DROPPED and v is not None}
        request.setdefault("max_tokens", self.config.max_tokens)
        result = await asyncio.to_thread(self.server.handle_chat_completions, request)
        if isinstance(result, dict) and "error" in result:
            raise self._error(result["error"])
        result["model"] = f"llamacpp/{self.config.name}"
        return result

    async def count_tokens(self, messages: list[dict[str, Any]]) -> int:
        """Prompt tokens of `messages` with this model's chat template and tokenizer."""
        rendered = await self.http.post("/apply-template", json={"messages": messages})
        rendered.raise_for_status()
        tokens = await self.http.post("/tokenize", json={"content": rendered.json()["prompt"]})
        tokens.raise_for_status()
        return len(tokens.json()["tokens"])

    async def check_health(self) -> None:
        try:
            r = await self.http.get("/health")
        except httpx.HTTPError as exc:
            raise RuntimeError(f"llama.cpp server of engine {self.config.name} unreachable: {exc!r}") from None
        if r.status_code != 200:
            raise RuntimeError(f"llama.cpp server of engine {self.config.name} unhealthy: {r.status_code} {r.text}")

    def _error(self, error: dict[str, Any]) -> Exception:
        name = self.config.name
        if error.get("type") == "exceed_context_size_error":
            return LLMRequestError(
                f"the request ({error.get('n_prompt_tokens')} prompt tokens, counted by the model's tokenizer) "
                f"exceeds the context window of engine {name!r} ({error.get('n_ctx')} tokens): shorten the "
                f"conversation or raise n_ctx of the engine", status=CONTEXT_EXCEEDED_STATUS)
        code = int(error.get("code") or 500)
        message = f"engine {name!r}: {error.get('message') or error}"
        if 400 <= code < 500:
            return LLMRequestError(message, status=400)
        return LLMUnavailable(message)

    def __del__(self) -> None:
        # Stop llama.cpp's threads with the replica (the Server stops when collected).
        self.server = None


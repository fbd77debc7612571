"""Engines as a LiteLLM provider: a model_list entry `troupe-engine/<name>` is answered by the
engine deployment `<name>` through its DeploymentHandle. So the LiteLLM Router keeps doing
for engines what it does for hosted models (retries, cooldowns, fallbacks, groups that mix
engines and hosted APIs), and no HTTP hop is added inside the cluster.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from deployments.engines.config import ENGINE_PROVIDER
from deployments.engines.llamacpp import CONTEXT_EXCEEDED_STATUS
from troupe.llm import LLMRequestError, LLMUnavailable

__all__ = ["EngineRef", "register_engines"]

# The OpenAI fields an engine gets; LiteLLM adds its own (max_retries ...) to optional_params.
_PASSED = frozenset({"tools", "tool_choice", "response_format", "temperature", "top_p", "max_tokens",
                     "max_completion_tokens", "stop", "presence_penalty", "frequency_penalty", "seed", "logprobs",
                     "top_logprobs", "logit_bias"})
_RESPONSE_FIELDS = ("id", "object", "created", "model", "choices", "usage", "system_fingerprint")


@dataclass
class EngineRef:
    """One engine as the router knows it: its config kind and its DeploymentHandle."""

    name: str
    kind: str
    handle: Any


_ENGINES: dict[str, EngineRef] = {}


def register_engines(engines: dict[str, EngineRef]) -> None:
    """Make `troupe-engine/<name>` models answerable in this process (one router per replica)."""
    import litellm

    _ENGINES.clear()
    _ENGINES.update(engines)
    if not any(p.get("provider") == ENGINE_PROVIDER for p in litellm.custom_provider_map):
        litellm.custom_provider_map = [*litellm.custom_provider_map,
                                       {"provider": ENGINE_PROVIDER, "custom_handler": _handler()}]
        from litellm.utils import custom_llm_setup

        custom_llm_setup()


def _handler() -> Any:
    import litellm
    from litellm import CustomLLM
    from litellm.types.utils import GenericStreamingChunk

    class EngineHandler(CustomLLM):
        async def acompletion(self, model, messages, api_base, custom_prompt_dict, model_response,  # noqa: ANN001
                              print_verbose, encoding, api_key, logging_obj, optional_params, acompletion=None,
                              litellm_params=None, logger_fn=None, headers=None, timeout=None, client=None):
            engine = _ENGINES.get(model)
            if engine is None:
                raise litellm.NotFoundError(f"no engine named {model!r} in this app: the engines are "
                                            f"{', '.join(_ENGINES) or 'none'}", model=model,
                                            llm_provider=ENGINE_PROVIDER)
            body = {"messages": messages, **{k: v for k, v in optional_params.items() if k in _PASSED}}
            wait_s = timeout if isinstance(timeout, int | float) else None
            try:
                result = await asyncio.wait_for(_ask(engine, body), wait_s)
            except TimeoutError:
                raise litellm.Timeout(f"engine {model!r} did not answer in {wait_s} s", model=model,
                                      llm_provider=ENGINE_PROVIDER) from None
            except LLMRequestError as exc:
                if exc.status == CONTEXT_EXCEEDED_STATUS:
                    raise litellm.ContextWindowExceededError(exc.message, model=model,
                                                             llm_provider=ENGINE_PROVIDER) from None
                raise litellm.BadRequestError(exc.message, model=model, llm_provider=ENGINE_PROVIDER) from None
            except (LLMUnavailable, RuntimeError) as exc:
                message = getattr(exc, "message", None) or str(exc).split("\n")[0]
                raise litellm.ServiceUnavailableError(message, model=model, llm_provider=ENGINE_PROVIDER) from None
            except _engine_down_errors() as exc:
                raise litellm.ServiceUnavailableError(f"engine {model!r} is unreachable: {str(exc).splitlines()[0]}",
                                                      model=model, llm_provider=ENGINE_PROVIDER) from None
            return litellm.ModelResponse(**{k: result[k] for k in _RESPONSE_FIELDS if k in result})

        async def astreaming(self, *args: Any, **kwargs: Any):
            # Engines answer whole over the handle: the stream is that answer as one chunk.
            response = await self.acompletion(*args, **kwargs)
            choice = response.choices[0]
            usage = response.usage
            yield GenericStreamingChunk(
                text=choice.message.content or "", is_finished=True, finish_reason=choice.finish_reason or "stop",
                index=0, tool_use=None,
                usage={"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                       "total_tokens": usage.total_tokens})

    return EngineHandler()


async def _ask(engine: EngineRef, body: dict[str, Any]) -> dict[str, Any]:
    if engine.kind == "vllm":
        from deployments.engines.vllm import vllm_chat

        return await vllm_chat(engine.handle, engine.name, body)
    result = await engine.handle.chat.remote(body)
    result.setdefault("id", f"chatcmpl-{uuid.uuid4().hex}")
    result.setdefault("created", int(time.time()))
    return result


def _engine_down_errors() -> tuple[type[BaseException], ...]:
    from ray.exceptions import ActorUnavailableError, RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    return RayActorError, ActorUnavailableError, BackPressureError, DeploymentUnavailableError

"""vLLM engines through Ray Serve LLM: Troupe's `vllm` engine config becomes the arguments of
`ray.serve.llm.LLMConfig`, and `build_llm_deployment` makes the LLMServer deployment that
joins the app graph. vLLM is CUDA-only and heavy, so it is the optional `gpu` extra; without
it, an app that declares a vllm engine fails to build with the command that installs it.
"""

from __future__ import annotations

from typing import Any

from deployments.engines.config import VLLMEngineConfig

__all__ = ["VLLM_MISSING", "VLLMUnavailable", "build_vllm_engine", "llm_config_kwargs", "vllm_chat"]

VLLM_MISSING = ("engine {name!r} is a vllm engine, but Ray Serve LLM cannot be imported here ({error}): install "
                "the gpu extra on the GPU image (pip install 'troupe[gpu]', which brings ray[llm] and vLLM), or "
                "remove the engine from the app's engines:")


class VLLMUnavailable(ImportError):
    """Ray Serve LLM (with vLLM) is not installed where the app is built."""


def llm_config_kwargs(config: VLLMEngineConfig) -> dict[str, Any]:
    """The keyword arguments of `ray.serve.llm.LLMConfig` for `config` (plain data, so it is
    checked without vLLM)."""
    engine_kwargs = {"tensor_parallel_size": config.tensor_parallel_size,
                     "pipeline_parallel_size": config.pipeline_parallel_size, **config.engine_kwargs}
    if config.max_model_len is not None:
        engine_kwargs["max_model_len"] = config.max_model_len
    autoscaling: dict[str, Any] = {"min_replicas": config.min_replicas, "max_replicas": config.max_replicas}
    if config.target_ongoing_requests is not None:
        autoscaling["target_ongoing_requests"] = config.target_ongoing_requests
    kwargs: dict[str, Any] = {
        # model_id is what requests name; it is the engine's name, so calls read like the config.
        "model_loading_config": {"model_id": config.name, "model_source": config.model_source},
        "engine_kwargs": engine_kwargs,
        "deployment_config": {"name": config.name, "autoscaling_config": autoscaling},
    }
    if config.accelerator_type is not None:
        kwargs["accelerator_type"] = config.accelerator_type
    if config.runtime_env is not None:
        kwargs["runtime_env"] = config.runtime_env
    return kwargs


def build_vllm_engine(config: VLLMEngineConfig) -> Any:
    """The LLMServer deployment (bound, for the app graph) of a vllm engine."""
    try:
        from ray.serve.llm import LLMConfig, build_llm_deployment
    except ImportError as exc:
        raise VLLMUnavailable(VLLM_MISSING.format(name=config.name, error=str(exc).split("\n")[0])) from None
    return build_llm_deployment(LLMConfig(**llm_config_kwargs(config)), name_prefix="LLMServer:")


async def vllm_chat(handle: Any, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion from an LLMServer handle: its `chat` is a stream that yields
    the whole response when the request does not stream."""
    from ray.serve.llm.openai_api_models import ChatCompletionRequest

    request = ChatCompletionRequest(**{**body, "model": name, "stream": False})
    async for item in handle.options(stream=True).chat.remote(request):
        for part in item if isinstance(item, list) else [item]:
            if hasattr(part, "model_dump"):
                data = part.model_dump(mode="json")
                if "choices" in data:
                    return data
                raise RuntimeError(f"vllm engine {name!r}: {data.get('error') or data}")
    raise RuntimeError(f"vllm engine {name!r} returned no response")

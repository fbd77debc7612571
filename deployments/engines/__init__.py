"""Model engines inside the Serve app graph (`engines:` in the app's args)."""

from __future__ import annotations

from typing import Any

from deployments.engines.config import (EngineConfig, EngineConfigError, LlamaCppEngineConfig, VLLMEngineConfig,
                                        check_gguf, local_engine_from_env, resolve_model_path)

__all__ = ["EngineConfig", "EngineConfigError", "LlamaCppEngineConfig", "VLLMEngineConfig", "build_engine",
           "check_gguf", "local_engine_from_env", "resolve_model_path"]


def build_engine(config: EngineConfig) -> Any:
    """The bound Serve deployment of one engine, for the app graph."""
    if isinstance(config, VLLMEngineConfig):
        from deployments.engines.vllm import build_vllm_engine

        return build_vllm_engine(config)
    from deployments.engines.llamacpp import LlamaCppEngine

    return LlamaCppEngine.options(
        name=config.deployment_name, num_replicas=config.num_replicas,
        ray_actor_options={"num_cpus": config.num_cpus},
        max_ongoing_requests=max(4, 4 * config.n_parallel)).bind(config)

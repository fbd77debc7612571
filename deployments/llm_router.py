"""LLMRouter: every model call in Troupe goes through this Serve deployment, a LiteLLM
Router over model groups (`fast`, `reason`, `vision`) that retries, cools failing
deployments down and falls back from one group to another. A group's deployments are hosted
APIs and/or the app's engines (`deployments/engines/`), reached through DeploymentHandles.
For models without native tool calls the router emulates them (`tool_emulation.py`).

Callers inside the cluster use `RouterClient` (the `troupe.llm.LLMClient` contract); the
Gateway serves the same router as an OpenAI-compatible API (`deployments/openai_api.py`).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any, get_args
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments import INTERNAL_LOGGING
from deployments.engines.config import ENGINE_PROVIDER, EngineConfig
from deployments.engines.tool_emulation import emulate_request, parse_envelope
from troupe import metrics
from troupe.tracing import setup_tracing, span, task_carrier
from troupe.llm import (ChatRequest, LLMReply, LLMRequestError, LLMUnavailable, LLMUsage, ModelGroup, ToolCallMode,
                        ToolCallRequest)

# LiteLLM downloads its model cost map at import unless told otherwise; the machines may
# have no internet, and the copy shipped with the package is good enough for costs.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

__all__ = ["LLMRequestError", "LLMRouter", "ModelDeployment", "RouterClient", "RouterConfig", "NOT_CONFIGURED"]

log = logging.getLogger("troupe.llm")

GROUPS: tuple[str, ...] = get_args(ModelGroup)
NOT_CONFIGURED = ("no model is configured: set TROUPE_MODEL_REASON to a LiteLLM model (e.g. openai/gpt-4o-mini, "
                  "ollama/llama3, hosted_vllm/<model> with TROUPE_MODEL_API_BASE) and TROUPE_MODEL_API_KEY, or list "
                  "models in the LLMRouter's user_config (model_list) in serve_config.yaml")
# Only these OpenAI chat parameters are passed on. LiteLLM lets per-call kwargs override a
# deployment's litellm_params, so a client-sent `api_base` would send our API key elsewhere.
COOLDOWN_SAMPLE_S = 5.0
PROBE_MESSAGES = [{"role": "user", "content": "Troupe probe: reply with the word OK."}]
"""What `LLMRouter.probe` sends (with max_tokens=1) to learn whether a group answers."""
OPENAI_PARAMS = frozenset({
    "messages", "tools", "tool_choice", "parallel_tool_calls", "response_format", "temperature", "top_p", "n",
    "max_tokens", "max_completion_tokens", "stop", "presence_penalty", "frequency_penalty", "logit_bias",
    "logprobs", "top_logprobs", "seed", "user", "reasoning_effort", "stream_options"})
_SECRET_PARAMS = ("api_key", "aws_secret_access_key", "aws_session_token", "vertex_credentials")


class ModelDeployment(BaseModel):
    """One entry of LiteLLM's model_list: `model_name` is the group it serves, `litellm_params`
    what `litellm.completion` gets (`model`, `api_base`, `api_key`; `os.environ/NAME` reads a variable)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_name: ModelGroup
    litellm_params: dict[str, Any]
    model_info: dict[str, Any] = Field(default_factory=dict)

    @field_validator("litellm_params")
    @classmethod
    def _has_model(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(v.get("model"), str) or not v["model"]:
            raise ValueError("litellm_params.model is required: a LiteLLM model string such as "
                             "'openai/gpt-4o-mini', 'anthropic/claude-sonnet-4-5' or 'hosted_vllm/<model>'")
        return v


class RouterConfig(BaseModel):
    """`user_config` of the LLMRouter deployment. The router settings keep LiteLLM Router's
    own names (times in seconds), so a LiteLLM `router_settings` block can be pasted in."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_list: list[ModelDeployment] = Field(
        default_factory=list, description="Deployments by group; empty: taken from TROUPE_MODEL_* variables.")
    num_retries: int = Field(2, ge=0, description="Retries of a call, on any healthy deployment of the group.")
    allowed_fails: int = Field(1, ge=0, description="Failures a deployment may have in a minute before it cools down.")
    cooldown_time: float = Field(30.0, ge=0, description="Seconds a failing deployment is left out; 0: never.")
    timeout: float = Field(120.0, gt=0, description="Seconds per model call; a request's timeout_s overrides it.")
    fallbacks: list[dict[ModelGroup, list[ModelGroup]]] = Field(
        default_factory=lambda: [{"fast": ["reason"]}],
        description="Groups tried, in order, once a group has failed: [{fast: [reason]}].")
    tool_calls: dict[ModelGroup, ToolCallMode] = Field(
        default_factory=dict, description="Per group: native, emulated (JSON envelope) or auto (from the models' "
                                          "capabilities: LiteLLM's model info, an engine's report).")

    def merged(self, user_config: Mapping[str, Any] | None) -> RouterConfig:
        """This config (as bound by the app) with the fields a user_config sets on top."""
        return RouterConfig.model_validate({**self.model_dump(exclude_unset=True), **(user_config or {})})


def models_from_env(env: Mapping[str, str]) -> list[ModelDeployment]:
    """`TROUPE_MODEL_FAST/REASON/VISION` (+ `TROUPE_MODEL_API_BASE`, `TROUPE_MODEL_API_KEY`);
    when only one of fast and reason is set, both groups use it."""
    names = {g: env.get(f"TROUPE_MODEL_{g.upper()}", "").strip() for g in GROUPS}
    names["fast"] = names["fast"] or names["reason"]
    names["reason"] = names["reason"] or names["fast"]
    shared = {k: env[v] for k, v in (("api_base", "TROUPE_MODEL_API_BASE"), ("api_key", "TROUPE_MODEL_API_KEY"))
              if env.get(v)}
    return [ModelDeployment(model_name=g, litellm_params={"model": m, **shared}) for g, m in names.items() if m]


def _resolve(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, str) and value.startswith("os.environ/"):
        return env.get(value.removeprefix("os.environ/"))
    return value


def check_allowed_hosts(deployments: list[ModelDeployment], env: Mapping[str, str]) -> None:
    """With `TROUPE_MODEL_ALLOWED_HOSTS` set (the tests set 127.0.0.1), refuse any deployment
    whose endpoint is elsewhere, including a provider's public default (no api_base)."""
    raw = env.get("TROUPE_MODEL_ALLOWED_HOSTS", "").strip()
    if not raw:
        return
    allowed = {h.strip().lower() for h in raw.split(",") if h.strip()}
    for d in deployments:
        model = d.litellm_params["model"]
        if model.startswith(f"{ENGINE_PROVIDER}/"):
            continue  # an engine of this app, reached through its handle
        base = _resolve(d.litellm_params.get("api_base") or d.litellm_params.get("base_url"), env)
        if not base:
            raise ValueError(f"model {model!r} (group {d.model_name}) has no api_base, so LiteLLM would call the "
                             f"provider's public endpoint, but TROUPE_MODEL_ALLOWED_HOSTS={raw} allows only those "
                             "hosts: give it an api_base on an allowed host, or unset TROUPE_MODEL_ALLOWED_HOSTS")
        host = (urlparse(base).hostname or "").lower()
        if host not in allowed:
            raise ValueError(f"model {model!r} (group {d.model_name}) has api_base {base!r}, whose host {host!r} is "
                             f"not in TROUPE_MODEL_ALLOWED_HOSTS={raw}: add the host there, or unset it")


def engine_deployments(engines: list[EngineConfig]) -> list[ModelDeployment]:
    """The model_list entries of the app's engines, one per group each serves."""
    return [ModelDeployment(model_name=g, litellm_params={"model": e.model_string}, model_info={"engine": e.name})
            for e in engines for g in e.groups]


def _litellm_model_list(config: RouterConfig, env: Mapping[str, str],
                        engines: list[EngineConfig] = ()) -> list[dict[str, Any]]:
    """The model_list LiteLLM gets: readable ids (`fast-0`), no client-side retries inside a
    deployment (the Router retries across deployments), fast/reason mirrored if one is missing."""
    deployments = [*(list(config.model_list) or models_from_env(env)), *engine_deployments(list(engines))]
    check_allowed_hosts(deployments, env)
    groups = {d.model_name for d in deployments}
    for missing, present in (("fast", "reason"), ("reason", "fast")):
        if missing not in groups and present in groups:
            deployments += [d.model_copy(update={"model_name": missing}) for d in deployments
                            if d.model_name == present]
    out, counts = [], dict.fromkeys(GROUPS, 0)
    for d in deployments:
        entry = copy.deepcopy(d.model_dump())
        entry["litellm_params"].setdefault("max_retries", 0)
        entry["model_info"].setdefault("id", f"{d.model_name}-{counts[d.model_name]}")
        counts[d.model_name] += 1
        out.append(entry)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().split("\n", 1)[0]
    return f"{type(exc).__name__}: {text[:300]}" if type(exc).__name__ not in text else text[:300]


class _Router:
    """One built LiteLLM Router and what Troupe reports about it; replaced whole on reconfigure."""

    def __init__(self, config: RouterConfig, env: Mapping[str, str], engines: list[EngineConfig] = ()):
        self.config = config
        self.model_list = _litellm_model_list(config, env, engines)
        self.tool_modes: dict[str, str] = {}  # group -> native | emulated, decided on the first call with tools
        self.groups = sorted({d["model_name"] for d in self.model_list})
        self.router: Any = None
        self.stats: Any = None
        if not self.model_list:
            return
        import litellm  # imported here: 4 s, and only this deployment needs it

        mirrored = {(d["model_name"], o["model_name"]) for d in self.model_list for o in self.model_list
                    if d["model_name"] != o["model_name"] and d["litellm_params"] == o["litellm_params"]}
        # Falling back to a group served by the same endpoints only doubles the wait.
        fallbacks = [{src: dst} for f in config.fallbacks for src, targets in f.items()
                     if src in self.groups
                     and (dst := [t for t in targets if t in self.groups and (src, t) not in mirrored])]
        self.stats = _stats_logger()
        litellm.callbacks.append(self.stats)
        self.router = litellm.Router(
            model_list=copy.deepcopy(self.model_list), num_retries=config.num_retries,
            allowed_fails=config.allowed_fails, timeout=config.timeout, fallbacks=fallbacks,
            # LiteLLM reads cooldown_time=0 as "use the default", so 0 has to switch cooldowns off.
            cooldown_time=config.cooldown_time or None, disable_cooldowns=config.cooldown_time == 0)

    def close(self) -> None:
        if self.router is None:
            return
        import litellm

        self.router.discard()  # unhooks its callbacks from LiteLLM's global lists
        # LiteLLM copies litellm.callbacks into its other lists on first use: unhook from all.
        for name in ("callbacks", "input_callback", "success_callback", "_async_success_callback",
                     "failure_callback", "_async_failure_callback", "service_callback"):
            litellm.logging_callback_manager.remove_callback_from_list_by_object(
                getattr(litellm, name, None), self.stats, require_self=False)

    async def cooling_down(self) -> list[str]:
        from litellm.router_utils.cooldown_handlers import async_get_cooldown_deployments

        try:
            return sorted(await async_get_cooldown_deployments(self.router, None))
        except Exception:  # an internal LiteLLM helper: report nothing rather than fail the caller
            log.debug("could not read LiteLLM cooldowns", exc_info=True)
            return []

    def public(self) -> list[dict[str, Any]]:
        """The deployments without secrets, for /v1/models and status()."""
        return [{"id": d["model_info"]["id"], "group": d["model_name"], "model": d["litellm_params"]["model"],
                 "api_base": d["litellm_params"].get("api_base"), "engine": d["model_info"].get("engine")}
                for d in self.model_list]


def _stats_logger() -> Any:
    """A LiteLLM callback counting each attempt on each deployment, so status() can show
    which deployments are being tried and failing (LiteLLM keeps only per-minute counts)."""
    from litellm.integrations.custom_logger import CustomLogger

    class DeploymentStats(CustomLogger):
        def __init__(self) -> None:
            super().__init__()
            self.calls: dict[str, int] = {}
            self.failures: dict[str, int] = {}
            self.last_error: dict[str, str] = {}

        @staticmethod
        def _id(kwargs: dict[str, Any]) -> str | None:
            return ((kwargs.get("litellm_params") or {}).get("model_info") or {}).get("id")

        async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):  # noqa: ANN001
            _observe(kwargs, response_obj, start_time, end_time, ok=True)
            if (deployment := self._id(kwargs)) is not None:
                self.calls[deployment] = self.calls.get(deployment, 0) + 1

        async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):  # noqa: ANN001
            _observe(kwargs, response_obj, start_time, end_time, ok=False)
            if (deployment := self._id(kwargs)) is not None:
                self.calls[deployment] = self.calls.get(deployment, 0) + 1
                self.failures[deployment] = self.failures.get(deployment, 0) + 1
                if kwargs.get("exception") is not None:
                    self.last_error[deployment] = _first_line(kwargs["exception"])

    return DeploymentStats()


def _gen_ai_request(request: ChatRequest) -> dict[str, Any]:
    """OpenTelemetry GenAI semantic conventions (gen_ai.*) for a chat call: what was asked."""
    return {"gen_ai.operation.name": "chat", "gen_ai.request.model": request.group,
            "gen_ai.request.temperature": request.temperature, "gen_ai.request.max_tokens": request.max_tokens}


def _gen_ai_response(s: Any, response: Any) -> None:
    """...and what came back: the provider, the model that answered, tokens, finish reason."""
    hidden = getattr(response, "_hidden_params", None) or {}
    model = hidden.get("litellm_model_name") or getattr(response, "model", None) or ""
    usage = getattr(response, "usage", None)
    provider = model.split("/", 1)[0] if "/" in model else hidden.get("custom_llm_provider") or "unknown"
    s.set_attribute("gen_ai.system", provider)
    s.set_attribute("gen_ai.response.model", model)
    s.set_attribute("gen_ai.usage.input_tokens", getattr(usage, "prompt_tokens", 0) or 0)
    s.set_attribute("gen_ai.usage.output_tokens", getattr(usage, "completion_tokens", 0) or 0)
    s.set_attribute("gen_ai.response.finish_reasons", [c.finish_reason or "" for c in response.choices])
    if response_id := getattr(response, "id", None):
        s.set_attribute("gen_ai.response.id", str(response_id))


def _observe(kwargs: dict[str, Any], response: Any, start: Any, end: Any, *, ok: bool) -> None:
    """One deployment attempt into Troupe's metrics (group and deployment id only: both come
    from the configuration, so the labels stay bounded)."""
    params = kwargs.get("litellm_params") or {}
    group = (params.get("metadata") or {}).get("model_group") or "unknown"
    deployment = (params.get("model_info") or {}).get("id") or "unknown"
    usage = getattr(response, "usage", None) if ok else None
    try:
        latency_s = (end - start).total_seconds()
    except (TypeError, AttributeError):
        latency_s = 0.0
    metrics.model_call(group, deployment, ok, latency_s,
                       tokens_in=getattr(usage, "prompt_tokens", 0) or 0,
                       tokens_out=getattr(usage, "completion_tokens", 0) or 0,
                       cost_usd=float(kwargs.get("response_cost") or 0.0) if ok else 0.0)


CONFIGURED_CACHE_S = 10.0
"""How long a RouterClient trusts the router's answer to `configured()`."""


@serve.deployment(name="LLMRouter", logging_config=INTERNAL_LOGGING,
                  ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
class LLMRouter:
    """The router; `config` comes from the app's args, `user_config` (serve_config.yaml) on top."""

    def __init__(self, config: RouterConfig | dict[str, Any] | None = None,
                 engines: list[tuple[EngineConfig, DeploymentHandle]] | None = None):
        self._base = config if isinstance(config, RouterConfig) else RouterConfig.model_validate(config or {})
        self._engines = [cfg for cfg, _ in engines or []]
        self._engine_handles = {cfg.name: handle for cfg, handle in engines or []}
        if engines:
            from deployments.engines.provider import EngineRef, register_engines

            register_engines({cfg.name: EngineRef(cfg.name, cfg.kind, handle) for cfg, handle in engines})
        self._engine_info: dict[str, dict[str, Any]] = {}
        self._state = _Router(self._base, os.environ, self._engines)
        self._cooldown_watch: asyncio.Task | None = None
        setup_tracing("troupe-llm")

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        new = _Router(self._base.merged(user_config), os.environ, self._engines)
        old, self._state = self._state, new
        old.close()
        log.info("LLM router: groups %s, deployments %s", new.groups, [d["id"] for d in new.public()])

    async def configured(self) -> bool:
        return bool(self._state.groups)

    async def context_window(self, group: str) -> int | None:
        """The smallest known context window among the group's deployments (a request must fit
        whichever one gets it): an engine's n_ctx / max_model_len, else the model's
        `max_input_tokens` (model_info, or LiteLLM's map). None when no deployment says."""
        import litellm

        windows = []
        for d in (d for d in self._state.model_list if d["model_name"] == group):
            engine = d["model_info"].get("engine")
            if engine is not None:
                cfg = next((e for e in self._engines if e.name == engine), None)
                window = getattr(cfg, "n_ctx", None) or getattr(cfg, "max_model_len", None)
            else:
                window = d["model_info"].get("max_input_tokens")
                if window is None:
                    try:
                        window = litellm.get_model_info(d["litellm_params"]["model"]).get("max_input_tokens")
                    except Exception:
                        window = None
            if window:
                windows.append(int(window))
        return min(windows) if windows else None

    async def models(self) -> list[dict[str, Any]]:
        """The groups, as OpenAI's /v1/models lists models."""
        state = self._state
        return [{"id": g, "object": "model", "created": 0, "owned_by": "troupe",
                 "deployments": [d["model"] for d in state.public() if d["group"] == g]} for g in state.groups]

    async def status(self) -> dict[str, Any]:
        """Groups, deployments (no secrets) and which deployments are cooling down now."""
        state = self._state
        cooling = await state.cooling_down() if state.router is not None else []
        stats = state.stats
        return {"configured": bool(state.groups), "groups": state.groups, "cooling_down": cooling,
                "tool_calls": {g: state.tool_modes.get(g, "undecided") for g in state.groups},
                "deployments": [{**d, "cooling_down": d["id"] in cooling,
                                 "calls": stats.calls.get(d["id"], 0) if stats else 0,
                                 "failures": stats.failures.get(d["id"], 0) if stats else 0,
                                 "last_error": stats.last_error.get(d["id"]) if stats else None}
                                for d in state.public()]}

    async def probe(self) -> dict[str, str | None]:
        """A one-token call to each group, as tasks waiting on a model would make: {group:
        None if it answered, else why not}. The Supervisor asks this before waking them."""
        async def one(group: str) -> str | None:
            try:
                await self._call(group, {"messages": PROBE_MESSAGES, "max_tokens": 1})
                return None
            except Exception as exc:
                return getattr(exc, "message", None) or _first_line(exc)

        groups = self._state.groups
        return dict(zip(groups, await asyncio.gather(*(one(g) for g in groups)), strict=True))

    async def chat(self, request: ChatRequest) -> LLMReply:
        kwargs: dict[str, Any] = {"messages": request.messages}
        for name in ("tools", "response_format", "temperature", "max_tokens"):
            if getattr(request, name) is not None:
                kwargs[name] = getattr(request, name)
        if request.timeout_s is not None:
            kwargs["timeout"] = request.timeout_s
        if request.task_id:
            kwargs["metadata"] = {"task_id": request.task_id}
        emulated = await self._emulates(request.group, kwargs)
        self._check_window(request.group, kwargs)
        started = time.monotonic()
        with span("llm", task_id=request.task_id, parent=request.trace, **_gen_ai_request(request)) as s:
            response = await self._call(request.group, kwargs)
            _gen_ai_response(s, response)
        latency = time.monotonic() - started
        message = response.choices[0].message
        content, calls, finish = message.content, [
            ToolCallRequest(id=c.id, name=c.function.name, arguments=c.function.arguments or "{}")
            for c in message.tool_calls or []], response.choices[0].finish_reason
        if emulated:
            envelope = parse_envelope(content)
            content, finish = envelope.content, envelope.finish_reason or finish
            calls = [ToolCallRequest(id=c["id"], name=c["function"]["name"], arguments=c["function"]["arguments"])
                     for c in envelope.tool_calls]
        usage, hidden = getattr(response, "usage", None), getattr(response, "_hidden_params", None) or {}
        model = hidden.get("litellm_model_name") or response.model or ""
        return LLMReply(
            content=content, tool_calls=calls, finish_reason=finish,
            usage=LLMUsage(group=request.group, model=model,
                           tokens_in=getattr(usage, "prompt_tokens", 0) or 0,
                           tokens_out=getattr(usage, "completion_tokens", 0) or 0,
                           cost_usd=float(hidden.get("response_cost") or 0.0), latency_s=latency,
                           engine=model.removeprefix(f"{ENGINE_PROVIDER}/") if model.startswith(
                               f"{ENGINE_PROVIDER}/") else None,
                           tool_calls="emulated" if emulated else None))

    async def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """An OpenAI chat.completion for an OpenAI request whose `model` is a group."""
        group, kwargs = self._group(body.get("model")), _openai_kwargs(body)
        emulated = await self._emulates(group, kwargs)
        raw = await self._call(group, kwargs)
        response = json.loads(raw.model_dump_json())
        # The cost (LiteLLM's price map) rides along in `usage`, so the Gateway can hold each
        # tenant to its model budget; OpenAI clients ignore the extra field.
        hidden = getattr(raw, "_hidden_params", None) or {}
        response.setdefault("usage", {})["cost"] = float(hidden.get("response_cost") or 0.0)
        if emulated:
            message = response["choices"][0]["message"]
            envelope = parse_envelope(message.get("content"))
            message["content"], message["tool_calls"] = envelope.content, envelope.tool_calls or None
            if envelope.tool_calls:
                response["choices"][0]["finish_reason"] = "tool_calls"
        return response

    async def _emulates(self, group: str, kwargs: dict[str, Any]) -> bool:
        """When the group's tool calls are emulated, swap `tools` in `kwargs` for the envelope
        (messages + response_format) and say so."""
        if not kwargs.get("tools") or kwargs.get("tool_choice") == "none":
            return False
        if await self._tool_mode(group) != "emulated":
            return False
        kwargs["messages"], kwargs["response_format"] = emulate_request(kwargs["messages"], kwargs.pop("tools"))
        for name in ("tool_choice", "parallel_tool_calls"):
            kwargs.pop(name, None)
        return True

    def _check_window(self, group: str, kwargs: dict[str, Any]) -> None:
        """Refuse a request no hosted model of `group` can take, counted with LiteLLM's token
        counter against the known windows (`model_info.max_input_tokens` or LiteLLM's map).
        Engines count with their own tokenizer when they get the request; unknown windows pass."""
        state = self._state
        deployments = [d for d in state.model_list if d["model_name"] == group]
        if not deployments or any(d["model_info"].get("engine") for d in deployments):
            return
        import litellm

        windows = []
        for d in deployments:
            window = d["model_info"].get("max_input_tokens")
            if window is None:
                try:
                    window = litellm.get_model_info(d["litellm_params"]["model"]).get("max_input_tokens")
                except Exception:
                    return
            if not window:
                return
            windows.append(int(window))
        tokens = litellm.token_counter(model=deployments[0]["litellm_params"]["model"], messages=kwargs["messages"],
                                       tools=kwargs.get("tools"))
        if tokens > max(windows):
            raise LLMRequestError(f"the request ({tokens} prompt tokens) exceeds the context window of every model "
                                  f"of group {group!r} (at most {max(windows)} tokens): shorten the conversation",
                                  status=413)

    async def _tool_mode(self, group: str) -> str:
        """native or emulated for `group`: the config's choice, else emulated as soon as one of
        its deployments cannot call tools (a group is only as capable as its weakest member)."""
        state = self._state
        if group in state.tool_modes:
            return state.tool_modes[group]
        mode = state.config.tool_calls.get(group, "auto")
        if mode == "auto":
            natives = [await self._native_tools(d) for d in state.model_list if d["model_name"] == group]
            mode = "native" if all(natives) else "emulated"
        state.tool_modes[group] = mode
        log.info("LLM router: group %s gets %s tool calls", group, mode)
        return mode

    async def _native_tools(self, deployment: dict[str, Any]) -> bool:
        info, model = deployment["model_info"], deployment["litellm_params"]["model"]
        if "supports_function_calling" in info:
            return bool(info["supports_function_calling"])
        engine = info.get("engine")
        if engine is not None:
            cfg = next(e for e in self._engines if e.name == engine)
            if cfg.tool_calls != "auto":
                return cfg.tool_calls == "native"
            if cfg.kind == "vllm":
                return True  # vLLM parses tool calls when started with a tool parser (engine_kwargs)
            if engine not in self._engine_info:
                try:
                    self._engine_info[engine] = await self._engine_handles[engine].info.remote()
                except Exception as exc:  # not cached: the next call asks again
                    raise LLMUnavailable(f"engine {engine!r} did not report its capabilities: "
                                         f"{_first_line(exc)}") from None
            return bool(self._engine_info[engine].get("native_tool_calls"))
        import litellm

        try:
            known = litellm.get_model_info(model)
        except Exception:  # a model LiteLLM does not know (a local server): assume the OpenAI API it speaks
            return True
        # None is "not recorded" (LiteLLM also registers every model_list entry that way): only a
        # recorded False switches the group to emulation.
        return known.get("supports_function_calling") is not False

    async def stream(self, body: dict[str, Any]) -> AsyncGenerator[str, None]:
        """The completion as OpenAI's SSE lines. Errors before the first chunk raise (the
        Gateway turns them into a problem response); later ones become an `error` event."""
        response = await self._call(self._group(body.get("model")), {**_openai_kwargs(body), "stream": True})
        try:
            async for chunk in response:
                yield f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"
        except Exception as exc:
            log.warning("LLM stream broke: %s", _first_line(exc))
            yield f"data: {json.dumps({'error': {'message': _first_line(exc), 'type': 'upstream_error'}})}\n\n"
            return
        yield "data: [DONE]\n\n"

    def _group(self, name: Any) -> str:
        groups = self._state.groups
        if groups and name not in groups:
            raise LLMRequestError(f"unknown model {name!r}: the models are the groups {', '.join(groups)}", status=404)
        return str(name)

    async def _call(self, group: str, kwargs: dict[str, Any]) -> Any:
        """One routed call; every failure leaves as LLMUnavailable or LLMRequestError, which
        pickle cleanly across the Serve boundary (LiteLLM's exceptions carry httpx objects)."""
        state = self._state
        if state.router is None:
            raise LLMUnavailable(NOT_CONFIGURED, retryable=False)
        if group not in state.groups:
            raise LLMUnavailable(f"no model serves group {group!r} (configured: {', '.join(state.groups)}): add "
                                 f"model_list entries with model_name: {group}, or set TROUPE_MODEL_{group.upper()}",
                                 retryable=False)
        if self._cooldown_watch is None and metrics.enabled():  # the constructor has no loop: the first call
            self._cooldown_watch = asyncio.get_running_loop().create_task(self._watch_cooldowns())
        try:
            return await state.router.acompletion(model=group, **kwargs)
        except Exception as exc:
            raise await self._translate(state, group, exc) from None

    async def _watch_cooldowns(self) -> None:
        """The cooldown gauges, sampled: a cooldown ends with time, not with a call that would notice."""
        while True:
            state = self._state
            if state.router is not None:
                metrics.model_cooldowns(state.public(), await state.cooling_down())
            await asyncio.sleep(COOLDOWN_SAMPLE_S)

    async def _translate(self, state: _Router, group: str, exc: Exception) -> Exception:
        import litellm

        reason = _first_line(exc)
        log.warning("LLM call to group %s failed: %s", group, reason)
        if isinstance(exc, litellm.ContextWindowExceededError):
            # The engine counted with the model's own tokenizer; its message names both sizes.
            text = getattr(exc, "message", "") or reason
            return LLMRequestError(f"group {group!r}: {text.removeprefix('litellm.ContextWindowExceededError: ')}",
                                   status=413)
        if isinstance(exc, litellm.BadRequestError | litellm.UnprocessableEntityError):
            return LLMRequestError(f"the model of group {group!r} refused the request: {reason}")
        if isinstance(exc, litellm.AuthenticationError | litellm.PermissionDeniedError | litellm.NotFoundError):
            return LLMUnavailable(f"group {group!r}: the model endpoint refused us ({reason}); check the model "
                                  "name, api_key (TROUPE_MODEL_API_KEY) and api_base", retryable=False)
        cooling = await state.cooling_down()
        if cooling and "cooldown" in reason:
            # LiteLLM's own "No deployments available" hides why: name each one's last failure.
            reason = "; ".join(f"{d}: {state.stats.last_error[d]}" for d in cooling if d in state.stats.last_error)
        tail = f" (cooling down for up to {state.config.cooldown_time:g} s: {', '.join(cooling)})" if cooling else ""
        return LLMUnavailable(f"no model of group {group!r} answered: every deployment failed or is cooling down, "
                              f"fallbacks included{tail}; last error: {reason}")


def _openai_kwargs(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k in OPENAI_PARAMS and v is not None}


class RouterClient:
    """`troupe.llm.LLMClient` over the LLMRouter's handle, for the Conductor, Planner and
    Verifier. Errors arrive as plain LLMUnavailable / LLMRequestError, not Ray's wrappers."""

    def __init__(self, handle: DeploymentHandle | None):
        self.handle = handle
        self._configured: tuple[float, bool] | None = None

    async def chat(self, request: ChatRequest) -> LLMReply:
        if self.handle is None:
            raise LLMUnavailable(NOT_CONFIGURED, retryable=False)
        if request.task_id and request.trace is None:  # nests under the caller's span: agent, plan or verify
            request = request.model_copy(update={"trace": task_carrier(request.task_id)})
        try:
            return await self.handle.chat.remote(request)
        except LLMUnavailable as exc:
            raise LLMUnavailable(exc.message, retryable=exc.retryable) from None
        except LLMRequestError as exc:
            raise LLMRequestError(exc.message, status=exc.status) from None
        except _router_down_errors() as exc:
            raise LLMUnavailable(f"the LLM router deployment is unreachable: {_first_line(exc)}") from None

    async def probe(self) -> dict[str, str | None]:
        """The router's `probe`; an unreachable router answers for every group (`*`)."""
        if self.handle is None:
            return {"*": NOT_CONFIGURED}
        try:
            return await self.handle.probe.remote()
        except Exception as exc:
            return {"*": f"the LLM router deployment is unreachable: {_first_line(exc)}"}

    async def served_by_engines(self, group: str) -> bool:
        """Whether every deployment of `group` is an engine of the app graph (a local model,
        whose grammar holds it to a schema exactly, and which needs the tightest one)."""
        if self.handle is None:
            return False
        status = await self.handle.status.remote()
        mine = [d for d in status["deployments"] if d["group"] == group]
        return bool(mine) and all(d.get("engine") for d in mine)

    async def context_window(self, group: str) -> int | None:
        if self.handle is None:
            return None
        return await self.handle.context_window.remote(group)

    async def configured(self) -> bool:
        """Whether the router has a model; remembered for CONFIGURED_CACHE_S (its groups change
        only on a redeploy or a reconfigure), so a plan or a drive does not cost a hop for it."""
        if self.handle is None:
            return False
        if self._configured is not None and self._configured[0] > time.monotonic():
            return self._configured[1]
        try:
            configured = await self.handle.configured.remote()
            self._configured = (time.monotonic() + CONFIGURED_CACHE_S, configured)
            return configured
        except _router_down_errors() as exc:
            # Unreachable is not "no model configured": taking the offline path would fail or
            # misplan a task that has a model; the caller waits (waiting_on: model) and resumes.
            raise LLMUnavailable(f"the LLM router is unreachable ({_first_line(exc)}); nothing is lost, the "
                                 "task resumes when it answers", retryable=True) from None


def _router_down_errors() -> tuple[type[BaseException], ...]:
    from ray.exceptions import ActorUnavailableError, RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    return RayActorError, ActorUnavailableError, BackPressureError, DeploymentUnavailableError

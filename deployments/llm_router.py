"""LLMRouter: every model call in Troupe goes through this Serve deployment, a LiteLLM
Router over model groups (`fast`, `reason`, `vision`) that retries, cools failing
deployments down and falls back from one group to another.

Callers inside the cluster use `RouterClient` (the `troupe.llm.LLMClient` contract); the
Gateway serves the same router as an OpenAI-compatible API (`deployments/openai_api.py`).
"""

from __future__ import annotations

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

from troupe.llm import ChatRequest, LLMReply, LLMRequestError, LLMUnavailable, LLMUsage, ModelGroup, ToolCallRequest

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
        base = _resolve(d.litellm_params.get("api_base") or d.litellm_params.get("base_url"), env)
        if not base:
            raise ValueError(f"model {model!r} (group {d.model_name}) has no api_base, so LiteLLM would call the "
                             f"provider's public endpoint, but TROUPE_MODEL_ALLOWED_HOSTS={raw} allows only those "
                             "hosts: give it an api_base on an allowed host, or unset TROUPE_MODEL_ALLOWED_HOSTS")
        host = (urlparse(base).hostname or "").lower()
        if host not in allowed:
            raise ValueError(f"model {model!r} (group {d.model_name}) has api_base {base!r}, whose host {host!r} is "
                             f"not in TROUPE_MODEL_ALLOWED_HOSTS={raw}: add the host there, or unset it")


def _litellm_model_list(config: RouterConfig, env: Mapping[str, str]) -> list[dict[str, Any]]:
    """The model_list LiteLLM gets: readable ids (`fast-0`), no client-side retries inside a
    deployment (the Router retries across deployments), fast/reason mirrored if one is missing."""
    deployments = list(config.model_list) or models_from_env(env)
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

    def __init__(self, config: RouterConfig, env: Mapping[str, str]):
        self.config = config
        self.model_list = _litellm_model_list(config, env)
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
                 "api_base": d["litellm_params"].get("api_base")} for d in self.model_list]


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
            if (deployment := self._id(kwargs)) is not None:
                self.calls[deployment] = self.calls.get(deployment, 0) + 1

        async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):  # noqa: ANN001
            if (deployment := self._id(kwargs)) is not None:
                self.calls[deployment] = self.calls.get(deployment, 0) + 1
                self.failures[deployment] = self.failures.get(deployment, 0) + 1
                if kwargs.get("exception") is not None:
                    self.last_error[deployment] = _first_line(kwargs["exception"])

    return DeploymentStats()


@serve.deployment(name="LLMRouter", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
class LLMRouter:
    """The router; `config` comes from the app's args, `user_config` (serve_config.yaml) on top."""

    def __init__(self, config: RouterConfig | dict[str, Any] | None = None):
        self._base = config if isinstance(config, RouterConfig) else RouterConfig.model_validate(config or {})
        self._state = _Router(self._base, os.environ)

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        new = _Router(self._base.merged(user_config), os.environ)
        old, self._state = self._state, new
        old.close()
        log.info("LLM router: groups %s, deployments %s", new.groups, [d["id"] for d in new.public()])

    async def configured(self) -> bool:
        return bool(self._state.groups)

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
                "deployments": [{**d, "cooling_down": d["id"] in cooling,
                                 "calls": stats.calls.get(d["id"], 0) if stats else 0,
                                 "failures": stats.failures.get(d["id"], 0) if stats else 0,
                                 "last_error": stats.last_error.get(d["id"]) if stats else None}
                                for d in state.public()]}

    async def chat(self, request: ChatRequest) -> LLMReply:
        kwargs: dict[str, Any] = {"messages": request.messages}
        for name in ("tools", "response_format", "temperature", "max_tokens"):
            if getattr(request, name) is not None:
                kwargs[name] = getattr(request, name)
        if request.timeout_s is not None:
            kwargs["timeout"] = request.timeout_s
        if request.task_id:
            kwargs["metadata"] = {"task_id": request.task_id}
        started = time.monotonic()
        response = await self._call(request.group, kwargs)
        latency = time.monotonic() - started
        message = response.choices[0].message
        usage, hidden = getattr(response, "usage", None), getattr(response, "_hidden_params", None) or {}
        return LLMReply(
            content=message.content,
            tool_calls=[ToolCallRequest(id=c.id, name=c.function.name, arguments=c.function.arguments or "{}")
                        for c in message.tool_calls or []],
            finish_reason=response.choices[0].finish_reason,
            usage=LLMUsage(group=request.group, model=hidden.get("litellm_model_name") or response.model or "",
                           tokens_in=getattr(usage, "prompt_tokens", 0) or 0,
                           tokens_out=getattr(usage, "completion_tokens", 0) or 0,
                           cost_usd=float(hidden.get("response_cost") or 0.0), latency_s=latency))

    async def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """An OpenAI chat.completion for an OpenAI request whose `model` is a group."""
        response = await self._call(self._group(body.get("model")), _openai_kwargs(body))
        reply = json.loads(response.model_dump_json())
        # The cost (LiteLLM's price map) rides along in `usage`, so the Gateway can hold each
        # tenant to its model budget; OpenAI clients ignore the extra field.
        hidden = getattr(response, "_hidden_params", None) or {}
        reply.setdefault("usage", {})["cost"] = float(hidden.get("response_cost") or 0.0)
        return reply

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
        try:
            return await state.router.acompletion(model=group, **kwargs)
        except Exception as exc:
            raise await self._translate(state, group, exc) from None

    async def _translate(self, state: _Router, group: str, exc: Exception) -> Exception:
        import litellm

        reason = _first_line(exc)
        log.warning("LLM call to group %s failed: %s", group, reason)
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

    async def chat(self, request: ChatRequest) -> LLMReply:
        if self.handle is None:
            raise LLMUnavailable(NOT_CONFIGURED, retryable=False)
        try:
            return await self.handle.chat.remote(request)
        except LLMUnavailable as exc:
            raise LLMUnavailable(exc.message, retryable=exc.retryable) from None
        except LLMRequestError as exc:
            raise LLMRequestError(exc.message, status=exc.status) from None
        except _router_down_errors() as exc:
            raise LLMUnavailable(f"the LLM router deployment is unreachable: {_first_line(exc)}") from None

    async def configured(self) -> bool:
        if self.handle is None:
            return False
        try:
            return await self.handle.configured.remote()
        except _router_down_errors() as exc:
            # Unreachable is treated as "no model": callers then take their offline path.
            log.warning("LLM router unreachable, running without a model: %s", _first_line(exc))
            return False


def _router_down_errors() -> tuple[type[BaseException], ...]:
    from ray.exceptions import ActorUnavailableError, RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    return RayActorError, ActorUnavailableError, BackPressureError, DeploymentUnavailableError

"""The Serve application builder: `import_path: deployments.app:app` in serve_config.yaml."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, Field, field_validator
from ray.serve import Application

from actors.ingest_jobs import IngestJobsConfig
from actors.scheduler import SchedulerConfig
from actors.supervisor import SupervisorConfig
from actors.webhook_outbox import WebhookOutboxConfig
from deployments.backend import GatewayConfig
from deployments.browser import BrowserPool
from deployments.conductor import Conductor
from deployments.engines import EngineConfig, build_engine, local_engine_from_env
from deployments.gateway import Gateway
from deployments.llm_router import LLMRouter, RouterConfig
from deployments.planner import Planner
from deployments.tool_pool import ToolPool
from deployments.verifier import Verifier
from tools.mcp_client import McpServerConfig
from troupe.settings import Settings

__all__ = ["AppArgs", "app", "build_app"]


class AppArgs(BaseModel):
    """The `args:` of the troupe application; each field falls back to `TROUPE_*` env vars."""

    database_url: str | None = None
    redis_url: str | None = None
    home: str | None = None
    app_name: str | None = None
    tool_modules: list[str] | None = None
    ingest_roots: list[str] | None = None
    mcp_servers: list[McpServerConfig] | None = Field(None, description=(
        "MCP servers (stdio command or streamable-HTTP URL) whose tools plans and agents may use; a server's "
        "`tenants` limits it to those tenants."))
    browser_num_cpus: float = Field(
        0.5, ge=0, description="Logical CPUs each BrowserPool replica reserves for its Chromium; serve_config.yaml's "
                               "ray_actor_options override it. 0 where many apps share one small cluster (the tests).")
    supervisor: SupervisorConfig = Field(default_factory=SupervisorConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    webhooks: WebhookOutboxConfig = Field(default_factory=WebhookOutboxConfig)
    gateway: GatewayConfig | None = Field(None, description=(
        "The Gateway's user_config (limits, SSE, queue caps) where no serve_config.yaml sets it (tests, benchmarks)."))
    ingest_jobs: IngestJobsConfig = Field(default_factory=IngestJobsConfig)
    llm: RouterConfig | None = None  # the LLM router; else TROUPE_MODEL_* env vars (user_config goes on top)
    engines: list[EngineConfig] = Field(
        default_factory=list, description="Model servers inside the app (llamacpp on CPU, vllm on GPU), each "
                                          "serving its groups through the LLM router; TROUPE_LOCAL_MODEL adds one.")

    @field_validator("engines")
    @classmethod
    def _unique_names(cls, engines: list[EngineConfig]) -> list[EngineConfig]:
        names = [e.name for e in engines]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"engine names must be unique; repeated: {', '.join(dupes)}")
        return engines

    def all_engines(self, env: dict[str, str] | None = None) -> list[EngineConfig]:
        """The declared engines, plus the one TROUPE_LOCAL_MODEL asks for (unless declared)."""
        local = local_engine_from_env(os.environ if env is None else env)
        if local is None or any(e.name == local.name for e in self.engines):
            return list(self.engines)
        return [*self.engines, local]

    def settings(self) -> Settings:
        overrides = {k: v for k, v in self.model_dump(include={"database_url", "redis_url", "home", "app_name", "tool_modules",
                                                                   "ingest_roots", "mcp_servers"}).items()
                     if v is not None}
        return Settings(**overrides)


def build_app(args: AppArgs) -> Application:
    settings = args.settings()
    settings.ensure_home()  # 0700 when Troupe creates it
    browser = BrowserPool.options(ray_actor_options={"num_cpus": args.browser_num_cpus}).bind()
    tool_pool = ToolPool.bind(settings, browser, args.ingest_jobs.ingest)
    engines = [(cfg, build_engine(cfg)) for cfg in args.all_engines()]
    llm = LLMRouter.bind(args.llm, engines)
    planner = Planner.bind(settings, llm)
    conductor = Conductor.bind(tool_pool, settings, llm, planner, Verifier.bind(llm))
    gateway = Gateway.options(user_config=args.gateway.model_dump(mode="json")) if args.gateway is not None else Gateway
    return gateway.bind(tool_pool, conductor, settings, args.supervisor, args.ingest_jobs, llm, planner,
                        args.scheduler, args.webhooks)


def app(args: dict[str, Any]) -> Application:
    return build_app(AppArgs.model_validate(args or {}))

"""What the HTTP routes need from the Gateway replica that serves them, and its configuration."""

from __future__ import annotations

from typing import Annotated, Any, Protocol

from fastapi import Depends, Request
from pydantic import BaseModel, Field, PrivateAttr, model_validator

from deployments.ratelimit import RateLimiter, TenantLimits
from memory.access import AccessStore
from memory.store import EventStore
from tools.registry import ToolRegistry
from troupe.models import Budget
from troupe.settings import Settings

__all__ = ["Backend", "BackendDep", "GatewayConfig"]


class GatewayConfig(BaseModel):
    """`user_config` of the Gateway deployment in serve_config.yaml."""

    max_body_bytes: int = Field(1_048_576, gt=0)
    max_upload_bytes: int = Field(268_435_456, gt=0, description="Limit of multipart bodies (files, archives).")
    max_queued_tasks: int = Field(10_000, gt=0, description="Above this many queued tasks, submissions get 429.")
    sse_poll_s: float = Field(0.2, gt=0, description="How often an event stream looks for new events while the live "
                                                     "bus (Redis pub/sub) is down or absent.")
    sse_idle_poll_s: float = Field(30.0, gt=0, description="How often an event stream looks anyway while the live "
                                                           "bus is up (it is woken by every new event).")
    retry_after_s: int = Field(5, ge=1)
    default_budget: Budget = Field(default_factory=Budget, description="Model spend limits of a task that sets none.")
    limits: TenantLimits = Field(default_factory=TenantLimits, description="Every tenant's rate limits and caps.")
    tenant_limits: dict[str, dict[str, Any]] = Field(default_factory=dict, description=(
        "Per tenant, the fields of `limits` that differ for it, e.g. {acme: {submissions_per_s: 500}}."))
    _per_tenant: dict[str, TenantLimits] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check_overrides(self) -> GatewayConfig:
        self._per_tenant = {t: TenantLimits.model_validate({**self.limits.model_dump(), **o})
                            for t, o in self.tenant_limits.items()}
        return self

    def limits_for(self, tenant: str) -> TenantLimits:
        return self._per_tenant.get(tenant, self.limits)


class Backend(Protocol):
    settings: Settings
    config: GatewayConfig
    store: EventStore
    access: AccessStore
    auth: Any  # deployments.auth.Authenticator
    limiter: RateLimiter
    tools: ToolRegistry
    llm: Any  # the LLMRouter's DeploymentHandle; None: no model API
    collections: Any  # deployments.collections_service.Collections
    schedules: Any  # memory.schedules.ScheduleStore
    memories: Any  # memory.memories.MemoryStore
    webhooks: Any  # memory.webhooks.WebhookStore

    def limits_for(self, tenant: str) -> TenantLimits: ...
    async def kick(self) -> None: ...
    async def cancel(self, task_id: str) -> None: ...
    async def health(self) -> dict[str, Any]: ...
    async def templates(self, tenant: str) -> list[dict[str, Any]]: ...


async def _backend(request: Request) -> Backend:  # async: FastAPI runs a sync dependency in a thread
    return request.app.state.backend


BackendDep = Annotated[Backend, Depends(_backend)]

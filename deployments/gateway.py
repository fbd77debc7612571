"""Gateway: the Serve ingress. REST + SSE over the event store; dispatch via the Supervisor."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from actors.ingest_jobs import IngestJobsConfig
from actors.redis_server import event_bus, redis_url_for
from actors.scheduler import SchedulerConfig, get_or_create_scheduler
from actors.webhook_outbox import WebhookOutboxConfig, get_or_create_outbox
from actors.supervisor import SupervisorConfig, get_or_create_supervisor
from deployments.api import GatewayConfig, build_api
from deployments.auth import Authenticator, OidcSettings, write_admin_key
from deployments.collections_service import Collections
from deployments.ratelimit import RateLimiter, TenantLimits
from memory.access import AccessStore, Role
from memory.memories import MemoryStore
from memory.schedules import ScheduleStore
from memory.webhooks import WebhookStore
from memory.store import EventStore
from tools.registry import load_registry
from troupe.secrets import redact, url_secrets
from troupe.settings import Settings
from troupe.tracing import setup_tracing

log = logging.getLogger("troupe.gateway")


@serve.deployment(name="Gateway", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress()
class Gateway:
    async def __init__(self, tool_pool: DeploymentHandle, conductor: DeploymentHandle, settings: Settings,
                       supervisor_config: SupervisorConfig, ingest_jobs: IngestJobsConfig | None = None,
                       llm: DeploymentHandle | None = None, planner: DeploymentHandle | None = None,
                       scheduler_config: SchedulerConfig | None = None,
                       outbox_config: WebhookOutboxConfig | None = None):
        # `conductor` is bound here so that Serve deploys it with the app; tasks reach it
        # through the Supervisor, which looks it up by name.
        del conductor
        self.settings = settings
        self._kicking: asyncio.Task | None = None
        self._kick_again = False
        self.config = GatewayConfig()  # replaced by reconfigure() from user_config
        self.tool_pool = tool_pool
        self.llm = llm  # the LLMRouter, served as /v1/chat/completions (deployments/openai_api.py)
        self.planner = planner  # lists built-in and learned templates
        self.store = EventStore(settings.db_url)
        self.store.bus = event_bus(settings)  # SSE streams are pushed new events; our appends are announced
        await self.store.migrate()
        self.access = AccessStore(settings.db_url)
        self.auth = Authenticator(self.access, OidcSettings())
        await self._ensure_admin_key()
        # Buckets are per app and per home, so apps (and test sessions) sharing a Redis never share limits.
        scope = hashlib.sha256(str(settings.home).encode()).hexdigest()[:8]
        redis_url = await redis_url_for(settings)
        self.limiter = RateLimiter(redis_url, prefix=f"troupe:{settings.app_name}:{scope}:")
        self.secrets = url_secrets(settings.db_url, redis_url)
        self.tools = load_registry(settings.tool_modules, settings.mcp_servers)
        self.supervisor_config = supervisor_config
        self.supervisor = await get_or_create_supervisor(settings, supervisor_config)
        self.schedules = ScheduleStore(self.store)
        self.memories = MemoryStore(self.store)
        self.scheduler = await get_or_create_scheduler(settings, scheduler_config or SchedulerConfig())
        self.webhooks = WebhookStore(self.store)
        self.outbox = await get_or_create_outbox(settings, outbox_config or WebhookOutboxConfig())
        self.collections = await Collections.start(settings, ingest_jobs or IngestJobsConfig(), tool_pool)
        setup_tracing("troupe-gateway")

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.config = GatewayConfig.model_validate(user_config or {})

    def limits_for(self, tenant: str) -> TenantLimits:
        return self.config.limits_for(tenant)

    async def _ensure_admin_key(self) -> None:
        """An admin can always get in: TROUPE_ADMIN_KEY (a secret the operator chose, e.g. from a
        Kubernetes Secret) is registered as an admin key; else the first start of the app makes
        one and writes it to $TROUPE_HOME/admin.key (0600). Only the replica that wins the
        insert writes the file."""
        chosen = os.environ.get("TROUPE_ADMIN_KEY")
        if chosen:
            if await self.access.find_by_secret(chosen) is None:
                await self.access.create_key(tenant="default", role=Role.admin, name="TROUPE_ADMIN_KEY",
                                             secret=chosen)
            return
        path = self.settings.home / "admin.key"
        if await self.access.has_bootstrap_key():
            if path.exists():
                log.info("admin API key: %s (troupe CLI reads it; TROUPE_API_KEY overrides)", path)
            else:
                log.warning("the first admin key was made earlier but %s is gone: set TROUPE_ADMIN_KEY to a new "
                            "secret and restart to get an admin key", path)
            return
        created = await self.access.create_key(tenant="default", role=Role.admin, name="first admin key",
                                               bootstrap=True)
        if created is not None:
            write_admin_key(path, created[1])
            log.warning("created the first admin API key; it is in %s (mode 0600). The troupe CLI on this machine "
                        "uses it; create other keys with `troupe keys create`", path)

    async def _supervisor_call(self, method: str, *args: Any) -> Any:
        """Call the Supervisor; if it is gone for good (not restarting), start a new one."""
        try:
            return await getattr(self.supervisor, method).remote(*args)
        except Exception as exc:
            log.warning("supervisor call %s failed (%s); reconnecting", method, type(exc).__name__)
            self.supervisor = await get_or_create_supervisor(self.settings, self.supervisor_config)
            return await getattr(self.supervisor, method).remote(*args)

    async def templates(self, tenant: str) -> list[dict[str, Any]]:
        if self.planner is None:
            return []
        return await self.planner.templates.remote(tenant)

    async def kick(self) -> None:
        """Tell the Supervisor that something was queued, without making the request wait for
        it: kicks that come while one is on its way become one more after it (a lost kick costs
        at most the Supervisor's poll_s)."""
        if self._kicking is not None and not self._kicking.done():
            self._kick_again = True
            return
        self._kicking = asyncio.get_running_loop().create_task(self._kick())

    async def _kick(self) -> None:
        self._kick_again = True
        while self._kick_again:
            self._kick_again = False
            try:
                await self._supervisor_call("kick")
            except Exception:
                log.warning("could not kick the Supervisor; it finds the task at its next poll", exc_info=True)
                return

    async def submit_internal(self, tenant: str, task: dict[str, Any], key_id: str,
                              idempotency_key: str) -> dict[str, Any]:
        """Submit for the Scheduler (or a trigger) through the same path as POST /v1/tasks: the
        task's id; or the refusal, with `retry` when trying again later may succeed."""
        from pydantic import ValidationError

        from deployments.auth import Principal
        from deployments.problems import Problem
        from deployments.routes.tasks import TaskCreate, submit_task

        who = Principal(key_id=key_id, role=Role.member, home_tenant=tenant, tenant=tenant)
        try:
            response = await submit_task(self, TaskCreate.model_validate(task), who, [], idempotency_key)
        except ValidationError as exc:
            return {"error": f"invalid task: {exc}"[:1000], "retry": False}
        except Problem as exc:
            return {"error": f"{exc.status} {exc.title}: {exc.detail}", "retry": exc.status == 429}
        return json.loads(response.body)

    async def cancel(self, task_id: str) -> None:
        await self._supervisor_call("cancel", task_id)

    async def _supervisor_stats(self) -> dict[str, Any]:
        info = await self._supervisor_call("ping")
        return {"running": info.get("running", 0)}  # not its db_url: no URL leaves the cluster

    async def health(self) -> dict[str, Any]:
        checks: dict[str, Any] = {}

        async def check(name: str, coro: Any) -> None:
            try:
                result = await asyncio.wait_for(coro, 5)
                checks[name] = {"ok": True, **(result if isinstance(result, dict) else {})}
            except Exception as exc:
                checks[name] = {"ok": False, "error": redact(f"{type(exc).__name__}: {exc}"[:500], self.secrets)}

        await check("store", self.store.ping())
        await check("redis", self.limiter.ping())
        await check("supervisor", self._supervisor_stats())
        await check("ingest_jobs", self.collections.ping())
        await check("tool_pool", self.tool_pool.specs.remote())
        checks["deployments"] = await asyncio.to_thread(_deployment_statuses, self.settings.app_name)
        # Redis is a cache: without it limits are not enforced, but every task still runs.
        ok = all(v.get("ok", False) for k, v in checks.items() if k not in ("deployments", "redis")) and all(
            d["ok"] for d in checks["deployments"].values())
        return {"ok": ok, **checks}


def _deployment_statuses(app_name: str) -> dict[str, Any]:
    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    return {name: {"ok": d.status.value in ("HEALTHY", "UPSCALING", "DOWNSCALING"), "status": d.status.value,
                   "replicas": {str(getattr(k, "value", k)).lower(): n for k, n in (d.replica_states or {}).items()}}
            for name, d in app.deployments.items()}

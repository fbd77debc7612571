"""A Gateway backend without Ray, for API tests: the real store, key table, authenticator
and Redis rate limiter; a Supervisor that only records what it was asked."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from deployments.api import GatewayConfig, build_api
from deployments.auth import Authenticator, OidcSettings
from deployments.ratelimit import RateLimiter, TenantLimits
from memory.access import AccessStore, Role
from memory.store import EventStore
from memory.memories import MemoryStore
from memory.schedules import ScheduleStore
from memory.webhooks import WebhookStore
from tools.registry import load_registry
from troupe.settings import Settings

__all__ = ["LocalBackend", "local_client", "postgres_database"]

REDIS_URL = "redis://127.0.0.1:6379/0"


class LocalBackend:
    def __init__(self, home: Path, config: GatewayConfig | None = None, *, llm: Any = None,
                 tool_modules: tuple[str, ...] = ("tests.support.tools",), oidc: OidcSettings | None = None,
                 database_url: str | None = None):
        self.settings = Settings(home=home, tool_modules=list(tool_modules), database_url=database_url)
        self.config = config or GatewayConfig()
        self.store = EventStore(self.settings.db_url)
        self.access = AccessStore(self.settings.db_url)
        self.auth = Authenticator(self.access, oidc)
        self.limiter = RateLimiter(REDIS_URL, prefix=f"troupe-test:{uuid.uuid4().hex[:8]}:")
        self.tools = load_registry(list(tool_modules))
        self.llm = llm
        self.collections = None
        self.schedules = ScheduleStore(self.store)
        self.memories = MemoryStore(self.store)
        self.webhooks = WebhookStore(self.store)
        self.kicks: list[str] = []
        self.admin_key = ""

    def limits_for(self, tenant: str) -> TenantLimits:
        return self.config.limits_for(tenant)

    async def start(self) -> None:
        await self.store.migrate()
        self.admin_key = (await self.access.create_key(tenant="default", role=Role.admin, name="test admin"))[1]

    async def key(self, tenant: str, role: Role = Role.member, **kw: Any) -> str:
        return (await self.access.create_key(tenant=tenant, role=role, **kw))[1]

    async def kick(self) -> None:
        self.kicks.append("kick")

    async def cancel(self, task_id: str) -> None:
        self.kicks.append(f"cancel {task_id}")

    async def health(self) -> dict:
        return {"ok": True, "store": {"ok": True}}

    async def templates(self, tenant: str) -> list[dict[str, Any]]:
        return []


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL (127.0.0.1:5432), dropped afterwards."""
    import sqlalchemy

    name = f"troupe_test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine("postgresql://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def local_client(backend: LocalBackend) -> tuple[FastAPI, TestClient]:
    """The API over `backend`, started (migrated, with an admin key), as a TestClient that
    sends the admin key; use it as a context manager."""
    app = build_api(backend)
    serving = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: FastAPI):
        await backend.start()
        async with serving(app_):
            yield

    app.router.lifespan_context = lifespan

    client = TestClient(app, raise_server_exceptions=False)
    return app, client

"""Endpoints and secrets come from `TROUPE_*` environment variables; the graph from serve_config.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tools.mcp_client import McpServerConfig
from troupe.paths import WORKSPACES, private_dir, uploads_dir, workspace_dir

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Resolved once (paths made absolute) and handed to every deployment and actor, so
    that every process agrees whatever its working directory."""

    model_config = SettingsConfigDict(env_prefix="TROUPE_", extra="ignore")

    home: Path = Field(Path(".troupe"), description="Embedded state: SQLite file, Qdrant files, workspaces, "
                                                     "uploads. Never visible to the python tool's sandbox.")
    database_url: str | None = Field(None, description="SQLAlchemy async URL; default SQLite under home.")
    redis_url: str | None = Field(None, description="Redis (rate limits, hot memory); default: an embedded "
                                                    "redis-server under home, reachable on this machine only.")
    hot_budget_bytes: int = Field(64 * 2**20, ge=4096, description=(
        "Hot memory (memory/hot.py) each tenant may hold in Redis: key and value bytes, pinned entries "
        "included; above it the tenant's least recently used unpinned entries are evicted."))
    hot_tenant_budget_bytes: dict[str, int] = Field(default_factory=dict, description=(
        "Per-tenant exceptions to hot_budget_bytes (TROUPE_HOT_TENANT_BUDGET_BYTES as JSON: {\"acme\": 1048576})."))
    hot_ttl_s: float = Field(3600, gt=0, description="Unpinned hot entries expire after this long unread.")
    hot_pinned_ttl_s: float = Field(7 * 86400, gt=0, description=(
        "Pinned hot entries (requirements, plan summary, digests) are dropped when their task's agents end; "
        "this TTL only ends those of tasks that vanished without ending."))
    hot_recent_outputs: int = Field(8, ge=1, le=1000, description=(
        "Tool outputs an agent node sees in full; older ones reach it as references into the log."))
    app_name: str = "troupe"
    namespace: str = Field("troupe", description="Ray namespace of the detached Supervisor.")
    tool_modules: list[str] = Field(default_factory=lambda: [
        "tools.builtin", "tools.web.tools", "tools.documents", "tools.extraction"])
    mcp_servers: list[McpServerConfig] = Field(default_factory=list, description=(
        "MCP servers whose tools Troupe offers (serve_config.yaml `mcp_servers`; TROUPE_MCP_SERVERS as JSON)."))
    ingest_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validate_default=True,
        description="Server-side folders (or URL prefixes such as s3://bucket/docs) that ingestion and task "
                    "attachments may read; TROUPE_INGEST_ROOTS, comma-separated. Default: none, so callers can "
                    "only upload files; an operator who wants server paths read names them here.")

    @field_validator("hot_tenant_budget_bytes")
    @classmethod
    def _budgets(cls, v: dict[str, int]) -> dict[str, int]:
        small = {t: b for t, b in v.items() if b < 4096}
        if small:
            raise ValueError(f"hot_tenant_budget_bytes: {small} below the 4096-byte minimum")
        return v

    @model_validator(mode="after")
    def _hot_ttls(self) -> Settings:
        if self.hot_pinned_ttl_s < self.hot_ttl_s:
            raise ValueError(f"hot_pinned_ttl_s ({self.hot_pinned_ttl_s:g}) must be greater than or equal to "
                             f"hot_ttl_s ({self.hot_ttl_s:g})")
        return self

    @field_validator("home")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @field_validator("ingest_roots", mode="before")
    @classmethod
    def _split_roots(cls, v: object) -> object:
        if isinstance(v, str):
            v = v.split(",")
        if isinstance(v, list):  # local roots absolute and resolved, like home
            v = [r if "://" in r else str(Path(r).expanduser().resolve()) for r in (str(x).strip() for x in v) if r]
        return v

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.home / 'troupe.db'}"

    def ensure_home(self) -> Path:
        """Create `home` 0700 when it is missing (an existing folder is the operator's choice)."""
        return private_dir(self.home, self.home)

    @property
    def workspaces(self) -> Path:
        return self.home / WORKSPACES

    def workspace(self, tenant: str, task_id: str) -> Path:
        """The task's own folder, created (0700, inside a 0700 folder per tenant) if missing."""
        return workspace_dir(self.home, tenant, task_id)

    def tenant_uploads(self, tenant: str) -> Path:
        """The tenant's upload folder (staging and ingested uploads), created 0700 if missing."""
        return uploads_dir(self.home, tenant)

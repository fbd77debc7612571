"""ToolPool: a Serve deployment that runs registered tools for every task."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, Field
from ray import serve
from ray.serve.config import AutoscalingContext
from ray.serve.handle import DeploymentHandle

from deployments import INTERNAL_LOGGING
from deployments.browser import BrowserPoolClient
from deployments.tool_batches import CallAnswer, run_batch
from memory.call_ledger import CallLedger
from memory.ingest.config import IngestConfig
from memory.semantic import ChunkFilter, LazySemanticStore, QdrantSettings, Scope, StoreError
from memory.store import EventStore
from tools.executor import execute_call
from tools.mcp_client import McpPool
from tools.registry import load_registry
from troupe import metrics
from troupe.settings import Settings
from troupe.tool_calls import ToolCall, ToolOutcome
from troupe.tracing import setup_tracing


class ToolPoolConfig(BaseModel):
    """`user_config` of the ToolPool deployment in serve_config.yaml."""

    max_output_bytes: int = Field(1_000_000, gt=0, description="Largest tool output kept in the event log.")
    heartbeat_s: float = Field(1.0, gt=0, description="How often a running call shows it is alive in the call ledger.")


@serve.deployment(name="ToolPool", logging_config=INTERNAL_LOGGING,
                  ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
class ToolPool:
    def __init__(self, settings: Settings, browser: DeploymentHandle | None = None,
                 ingest: IngestConfig | None = None):
        self.settings = settings
        self.registry = load_registry(settings.tool_modules, settings.mcp_servers)
        # Services the tools reach through ctx.extras.
        self.extras: dict[str, Any] = {"browser": BrowserPoolClient(browser)} if browser is not None else {}
        # Semantic memory connects (and loads the query model) on first use, not at start.
        self.extras["memory"] = LazySemanticStore(QdrantSettings.for_app(settings.home))
        if ingest is not None:  # the app's ingestion settings, so attachments share its warm embedders
            self.extras["ingest_config"] = ingest
        # MCP servers' sessions (stdio processes) live as long as this replica; started on first use.
        self.extras["mcp"] = McpPool(settings.mcp_servers)
        self.config = ToolPoolConfig()
        self.calls_in_flight = 0  # the autoscaler's load figure: a request may carry many calls
        # Every call claims its idempotency key here before it runs (exactly once per step).
        self.ledger = CallLedger(EventStore(settings.db_url), heartbeat_s=self.config.heartbeat_s)
        setup_tracing("troupe-tools")

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.config = ToolPoolConfig.model_validate(user_config or {})
        self.ledger.heartbeat_s = self.config.heartbeat_s

    async def specs(self) -> list[dict[str, Any]]:
        return self.registry.specs()

    async def call(self, call: ToolCall) -> ToolOutcome:
        workspace = self.settings.workspace(call.tenant, call.task_id)
        self.calls_in_flight += 1
        try:
            outcome = await execute_call(self.registry, call, workspace, max_output_bytes=self.config.max_output_bytes,
                                         extras=self.extras, ledger=self.ledger)
        finally:
            self.calls_in_flight -= 1
        ran = not (outcome.replayed or outcome.busy or outcome.fenced or outcome.unavailable)
        if ran:  # a run happened here: count it
            # A model may name a tool that does not exist: the label stays a registered name.
            metrics.tool_call(call.tool if call.tool in self.registry else "unknown", outcome.ok, outcome.duration_s)
        return outcome

    async def call_many(self, calls: list[ToolCall]) -> AsyncIterator[list[CallAnswer]]:
        """Several calls in one request (deployments/tool_batches.py): answers as their calls end."""
        async for answers in run_batch(self.call, calls):
            yield answers

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metrics, read by `tool_calls_policy`."""
        return {"tool_calls": self.calls_in_flight}

    async def search(self, tenant: str, collection: str, query: str, *, limit: int = 5,
                     filters: dict[str, Any] | None = None, task_id: str | None = None,
                     project_id: str | None = None) -> dict[str, Any]:
        """Hybrid search for `POST /v1/collections/{name}/search`: passages best first, or why none."""
        store = self.extras["memory"]
        try:
            passages = await store.search(
                query, tenant=tenant, collection=collection, limit=limit,
                scopes=Scope.chain(task_id=task_id, project_id=project_id),
                filters=ChunkFilter.model_validate(filters) if filters else None)
        except StoreError as exc:
            return {"error": str(exc)}
        exists = bool(passages) or await store.has_collection(tenant=tenant, collection=collection)
        return {"passages": [p.model_dump() for p in passages], "collection_exists": exists}

    async def mcp_processes(self) -> dict[str, int | None]:
        """The pids of this replica's stdio MCP servers (tests kill them to see them restarted)."""
        return self.extras["mcp"].pids()

    async def release(self, task_id: str) -> None:
        """A task ended: free what the tools held for it (its browser session)."""
        if "browser" in self.extras:
            await self.extras["browser"].release(task_id)


def tool_calls_policy(ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
    """ToolPool's autoscaling policy (serve_config.yaml): replicas for the tool calls in flight,
    `target_ongoing_requests` of them per replica. Serve's own figure counts requests, and one
    request from a Conductor carries every call of a loop turn (deployments/tool_batches.py).
    Serve applies the config's bounds, delays and factors around it, as for its default policy."""
    per_replica = (ctx.aggregated_metrics or {}).get("tool_calls") or {}
    load = max(sum(per_replica.values()), ctx.total_num_requests)  # other requests (search, release) count too
    return load / ctx.config.get_target_ongoing_requests(), ctx.policy_state

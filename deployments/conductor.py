"""Conductor: a Serve deployment whose replicas each drive many tasks, one long request each."""

from __future__ import annotations

import logging

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments import INTERNAL_LOGGING
from deployments.llm_router import RouterClient
from deployments.planner import PlannerClient
from deployments.tool_batches import BatchedToolCalls
from deployments.verifier import VerifierClient
from actors.redis_server import event_bus, working_set
from memory.store import EventStore
from tools.registry import load_registry
from troupe.runner import TaskRunner
from troupe.settings import Settings
from troupe.tracing import setup_tracing

log = logging.getLogger("troupe.conductor")


@serve.deployment(name="Conductor", logging_config=INTERNAL_LOGGING,
                  ray_actor_options={"num_cpus": 0}, max_ongoing_requests=2000,
                  graceful_shutdown_timeout_s=5)
class Conductor:
    def __init__(self, tool_pool: DeploymentHandle, settings: Settings, llm: DeploymentHandle | None = None,
                 planner: DeploymentHandle | None = None, verifier: DeploymentHandle | None = None):
        self.tool_pool = tool_pool
        # The calls of one loop turn go to the pool in one request. A timed-out, cancelled or
        # superseded call stops too, unless it has side effects: cut short, its outcome would
        # be in doubt; left to finish, the ledger keeps it for whoever issues the call next.
        self.tool_calls = BatchedToolCalls(tool_pool)
        self.llm = RouterClient(llm) if llm is not None else None  # agent nodes' model turns
        self.planner = PlannerClient(planner) if planner is not None else None
        self.verifier = VerifierClient(verifier) if verifier is not None else None
        self.settings = settings
        self.store = EventStore(settings.db_url)
        self.store.bus = event_bus(settings)
        self.working_set = working_set(settings)  # agent nodes' context in hot memory (memory/working_set.py)
        # The Conductor validates plans locally, so it loads the same tool modules as the pool.
        self.tools = load_registry(settings.tool_modules, settings.mcp_servers)
        setup_tracing("troupe-conductor")

    async def run(self, task_id: str, epoch: int) -> str:
        """Drive the task until it ends, waits for the user, or is taken over by a newer lease."""
        runner = TaskRunner(self.store, self.tool_calls.call, self.tools, self.settings.workspace, task_id, epoch,
                            planner=self.planner, verifier=self.verifier, llm=self.llm,
                            working_set=self.working_set)
        status = await runner.drive()
        if status in ("done", "failed", "cancelled") and runner.may_hold_sessions():
            try:
                await self.tool_pool.release.remote(task_id)
            except Exception:  # sessions also expire when idle; never fail a finished task on this
                log.warning("task %s: could not release its tool sessions", task_id, exc_info=True)
        return status

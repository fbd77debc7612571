"""Verifier: a Serve deployment running a task's acceptance tests. It holds the embedding
model (`citations_supported`) and reaches the `reason` model group for `llm_judge`."""

from __future__ import annotations

from pathlib import Path

from ray import serve
from ray.serve.handle import DeploymentHandle

from troupe.embeddings import SentenceEmbedder
from troupe.llm import LLMUnavailable
from troupe.models import Task
from troupe.tracing import setup_tracing, span, task_carrier
from troupe.verifier import Verification, Verifier as VerifierLogic
from deployments import INTERNAL_LOGGING


@serve.deployment(name="Verifier", logging_config=INTERNAL_LOGGING,
                  ray_actor_options={"num_cpus": 0}, max_ongoing_requests=100)
class Verifier:
    def __init__(self, llm: DeploymentHandle | None = None):
        from deployments.llm_router import RouterClient

        self.logic = VerifierLogic(RouterClient(llm) if llm is not None else None, encoder=SentenceEmbedder())
        setup_tracing("troupe-verifier")

    async def verify(self, task: Task, workspace: str, trace: dict[str, str] | None = None) -> Verification | str:
        """The verdicts, or (as a value, not an exception) why no model could judge; in a
        `verify` span under the caller's (`trace`), with the judge's model calls under it."""
        with span("verify", task_id=task.id, parent=trace, tenant=task.tenant):
            try:
                return await self.logic.verify(task, Path(workspace))
            except LLMUnavailable as exc:
                return exc.message


class VerifierClient:
    """The Verifier deployment as the runner's VerifierPort."""

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle

    async def verify(self, task: Task, workspace: str) -> Verification:
        result = await self.handle.verify.remote(task, workspace, task_carrier(task.id))
        if isinstance(result, str):
            raise LLMUnavailable(result)
        return result

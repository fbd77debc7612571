"""Planner: a Serve deployment that turns goals into plans and failed verdicts into
corrective sub-plans, with a model when one is configured and from templates when not.

It also keeps procedural memory: `learn` stores a verified plan with its goal's embedding;
similar goals later get it as a few-shot example (with a model) or reuse it (offline).
Results cross the Serve boundary as values (`PlanResult`), never as exceptions, so the
Conductor sees the planner's own reason and the model calls it made.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any

import numpy as np
from pydantic import BaseModel
from ray import serve
from ray.serve.handle import DeploymentHandle

from memory.memories import MemoryStore
from memory.store import EventStore
from tools.registry import load_registry
from troupe.llm import LLMClient, LLMRequestError, LLMUnavailable
from troupe.models import Task
from troupe.offline_planner import LearnedTemplate, NoTemplate, OfflinePlanner, list_templates, plan_digest
from troupe.plan_schema import relevant_specs
from troupe.planner import ModelPlanner, PlanningContext, PlanningFailed, PlanProposal
from troupe.preferences import extract_memories
from troupe.settings import Settings
from troupe.tracing import setup_tracing, span, task_carrier
from deployments import INTERNAL_LOGGING

log = logging.getLogger("troupe.planner")

EXAMPLE_SIMILARITY = 0.75
"""How close a learned goal must be to be shown to the model as an example."""
LEARNED_CACHE_S = 10.0
"""How long a replica keeps a tenant's learned templates; other replicas' lessons show up after this."""
LEARN_BATCH = 64
LEARN_BATCH_WAIT_S = 0.05
"""Lessons wait this long for others to share their embedding batch (after `done`: nobody waits on them)."""
LEARNED_SEEN_S = 60.0
LEARNED_SEEN_MAX = 10_000
"""How long, and for how many plans, a Conductor replica remembers a plan it saw learned (PlannerClient)."""
CONSTRAINED_TOOLS = 5
"""Tools offered to a small local model (constrained planning): the nearest the goal."""
MAX_PREFERENCES = 10
"""Standing preferences recalled into a plan (newest first): they bind every task."""
MAX_FACTS = 5
FACT_RELEVANCE = 0.3
"""How close a remembered fact must be to the goal (cosine) to be recalled."""


class PlanResult(BaseModel):
    proposal: PlanProposal | None = None
    failure: str | None = None
    calls: list[Any] = []
    unavailable: str | None = None
    """No model answered; `retryable` False when none is configured."""
    retryable: bool = True

    @classmethod
    def from_unavailable(cls, exc: LLMUnavailable) -> PlanResult:
        return cls(unavailable=exc.message, retryable=exc.retryable)


@serve.deployment(name="Planner", logging_config=INTERNAL_LOGGING,
                  ray_actor_options={"num_cpus": 0}, max_ongoing_requests=200)
class Planner:
    def __init__(self, settings: Settings, llm: DeploymentHandle | None = None):
        from deployments.llm_router import RouterClient

        self.settings = settings
        self.store = EventStore(settings.db_url)
        self.memories = MemoryStore(self.store)
        self.tools = load_registry(settings.tool_modules, settings.mcp_servers)
        self.llm: LLMClient | None = RouterClient(llm) if llm is not None else None
        self.offline = OfflinePlanner()  # loads its embedding model on first use
        self._cache: dict[str, tuple[float, list[LearnedTemplate]]] = {}
        self._learning: dict[tuple[str, str], asyncio.Future[str]] = {}
        self._engines_cache: tuple[float, bool] | None = None
        setup_tracing("troupe-planner")

    async def _model_planner(self, ctx: PlanningContext) -> ModelPlanner:
        """A planner that sees only the tools this tenant may call: an MCP server configured
        for one tenant must not appear in (or be planned into) another tenant's tasks. A
        `reason` group served only by local engines gets the constrained plan schema over
        the few tools nearest the goal (troupe/plan_schema.py says why)."""
        tools, specs = self.tools.available(ctx.tenant), self.tools.specs(ctx.tenant)
        constrained = await self._reason_on_engines()
        if constrained:
            specs = await asyncio.to_thread(relevant_specs, ctx.goal, specs, self.offline.embedder,
                                            CONSTRAINED_TOOLS)
            tools = {s["name"]: tools[s["name"]] for s in specs}
        return ModelPlanner(self.llm, tools, specs, constrained=constrained)

    async def _reason_on_engines(self) -> bool:
        cached = self._engines_cache
        if cached is None or cached[0] < time.monotonic():
            try:
                on_engines = await self.llm.served_by_engines("reason")
            except Exception:  # the router is down: planning will find out and wait; guess no
                on_engines = False
            self._engines_cache = cached = (time.monotonic() + LEARNED_CACHE_S, on_engines)
        return cached[1]

    async def _uses_model(self) -> bool:
        return self.llm is not None and await self.llm.configured()

    async def _learned(self, tenant: str) -> list[LearnedTemplate]:
        """The tenant's learned templates, cached briefly: every plan reads them, and parsing
        hundreds of plans with their embeddings per goal would cost more than the planning."""
        cached = self._cache.get(tenant)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        rows = await self.store.learned(tenant)
        learned = [LearnedTemplate.model_validate({**r["body"], "goal": r["goal"], "embedding": r["embedding"],
                                                   "template_id": r["template_id"]}) for r in rows]
        self._cache[tenant] = (time.monotonic() + LEARNED_CACHE_S, learned)
        return learned

    async def plan(self, ctx: PlanningContext, trace: dict[str, str] | None = None) -> PlanResult:
        """A plan for the task, in a `plan` span under the caller's (`trace`), so the model calls
        it makes join the task's trace where they belong."""
        with span("plan", task_id=ctx.task_id, parent=trace, tenant=ctx.tenant):
            return await self._plan(ctx)

    async def _plan(self, ctx: PlanningContext) -> PlanResult:
        # Independent reads, at once: what to remember and recall, the lessons, the model.
        _, memories, learned, with_model = await asyncio.gather(
            self._remember(ctx), self._recall(ctx), self._learned(ctx.tenant), self._uses_model(),
            return_exceptions=True)
        if isinstance(with_model, LLMUnavailable):  # the router is down, not unconfigured: wait for it
            return PlanResult.from_unavailable(with_model)
        for result in (memories, learned, with_model):
            if isinstance(result, BaseException):
                raise result
        ctx.memories = memories
        if with_model:
            ctx.examples = await asyncio.to_thread(self._examples, ctx.goal, learned,
                                                   self.tools.available(ctx.tenant))
            result = await _outcome((await self._model_planner(ctx)).plan(ctx), "planning")
        else:
            try:
                offline = await asyncio.to_thread(self.offline.plan, ctx.goal, ctx.requirements,
                                                  tools=self.tools.available(ctx.tenant),
                                                  learned=learned, has_attachments=bool(ctx.attachments))
            except NoTemplate as exc:
                return PlanResult(failure=str(exc))
            result = PlanResult(proposal=PlanProposal(
                plan=offline.plan, acceptance_tests=offline.acceptance_tests, source=offline.source,
                pinned_requirements=list(dict.fromkeys([*ctx.pinned_requirements, *ctx.requirements]))))
        if result.proposal is not None:  # recalled memories bind the whole task: every model call sees them
            pinned = result.proposal.pinned_requirements
            result.proposal.pinned_requirements = list(dict.fromkeys([*pinned, *ctx.memories]))
        return result

    async def _remember(self, ctx: PlanningContext) -> None:
        """Keep what the user said in this iteration that should outlive the task (troupe/
        preferences.py), with where it was said. Best effort: a lost memory loses no work."""
        said = ctx.requirements[-1] if ctx.history and ctx.requirements else "\n".join([ctx.goal, *ctx.requirements])
        where = f"iteration {len(ctx.history) + 1}" if ctx.history else "goal"
        try:
            for noted in extract_memories(said):
                embedding = await asyncio.to_thread(self.offline.embed, noted.text) if noted.kind == "fact" else None
                await self.memories.remember(ctx.tenant, noted.kind, noted.text, source=where, task_id=ctx.task_id,
                                             project=ctx.project, embedding=embedding)
        except Exception:
            log.warning("task %s: could not store its memories", ctx.task_id, exc_info=True)

    async def _recall(self, ctx: PlanningContext) -> list[str]:
        """Memories of earlier tasks that bear on this one: every standing preference (the
        newest MAX_PREFERENCES), and the remembered facts nearest the goal."""
        try:
            rows = [r for r in await self.memories.list(ctx.tenant, project=ctx.project) if r.task_id != ctx.task_id]
        except Exception:
            log.warning("task %s: could not read its tenant's memories", ctx.task_id, exc_info=True)
            return []
        recalled = [r.text for r in rows if r.kind == "preference"][:MAX_PREFERENCES]
        facts = [r for r in rows if r.kind == "fact"]
        if facts:
            goal = np.asarray(await asyncio.to_thread(self.offline.embed, "\n".join([ctx.goal, *ctx.requirements])))
            vectors = [r.embedding or await asyncio.to_thread(self.offline.embed, r.text) for r in facts]
            scores = np.asarray(vectors) @ goal
            recalled += [facts[i].text for i in np.argsort(-scores)[:MAX_FACTS] if scores[i] >= FACT_RELEVANCE]
        return recalled

    async def correct(self, ctx: PlanningContext, trace: dict[str, str] | None = None) -> PlanResult:
        with span("correct", task_id=ctx.task_id, parent=trace, tenant=ctx.tenant):
            return await self._correct(ctx)

    async def _correct(self, ctx: PlanningContext) -> PlanResult:
        try:
            with_model = await self._uses_model()
        except LLMUnavailable as exc:
            return PlanResult.from_unavailable(exc)
        if not with_model:
            return PlanResult(failure="offline mode cannot write a corrective plan; configure a model "
                                      "(TROUPE_MODEL_REASON) for autonomous corrections")
        return await _outcome((await self._model_planner(ctx)).correct(ctx), "correction")

    def _examples(self, goal: str, learned: list[LearnedTemplate], tools: dict[str, Any]) -> list[dict[str, Any]]:
        # A built-in template only a model can run (troupe/templates/build_web_api.yaml) is shown first.
        shipped = self.offline.template_example(goal, tools=tools)
        return ([shipped] if shipped else []) + self._learned_examples(goal, learned)

    def _learned_examples(self, goal: str, learned: list[LearnedTemplate]) -> list[dict[str, Any]]:
        if not learned:
            return []
        scores = np.asarray([t.embedding for t in learned]) @ np.asarray(self.offline.embed(goal))
        best = np.argsort(-scores)[:3]
        return [{"goal": learned[i].goal, "plan": learned[i].plan.model_dump(mode="json", exclude_defaults=True),
                 "acceptance_tests": [t.model_dump(mode="json", exclude_defaults=True)
                                      for t in learned[i].acceptance_tests]}
                for i in best if scores[i] >= EXAMPLE_SIMILARITY]

    async def learn(self, task: Task) -> str | None:
        """Store a verified task's plan as a learned template (replaces the same iteration's).
        A plan the tenant has already learned is not stored again: a schedule or a client
        repeating one plan would otherwise add a copy per run and teach nothing new; the
        first goal it verified for stands for it."""
        if task.plan is None:
            return None
        digest = plan_digest(task.plan)
        known = next((t.template_id for t in await self._learned(task.tenant) if t.digest() == digest), None)
        if known is not None:
            return known
        key = (task.tenant, digest)
        lesson = self._learning.get(key)  # the same plan on its way in: that lesson is this one's
        if lesson is None:
            lesson = self._learning[key] = asyncio.ensure_future(self._learn_batch(task))
            lesson.add_done_callback(lambda _: self._learning.pop(key, None))
        return await asyncio.shield(lesson)

    @serve.batch(max_batch_size=LEARN_BATCH, batch_wait_timeout_s=LEARN_BATCH_WAIT_S)
    async def _learn_batch(self, batch: list[Task]) -> list[str]:
        """Lessons from tasks that ended together: one embedding batch (MiniLM embeds 64 short
        goals in little more than the time of one) and one transaction; a plan that comes
        twice in the batch is learned once."""
        firsts: dict[tuple[str, str], Task] = {}
        for t in batch:
            firsts.setdefault((t.tenant, plan_digest(t.plan)), t)
        tasks = list(firsts.values())
        goals = [t.goal if t.iteration == 1 else f"{t.goal}\n{t.requirements[-1]}" for t in tasks]
        embeddings = await asyncio.to_thread(self.offline.embed_many, goals)
        templates = [LearnedTemplate(goal=goal, embedding=embedding, plan=task.plan, task_id=task.id,
                                     acceptance_tests=task.acceptance_tests, source=task.plan_source or "submitted",
                                     template_id=f"{task.id}:{task.iteration}", plan_digest=digest)
                     for (_, digest), task, goal, embedding in zip(firsts, tasks, goals, embeddings)]
        await self.store.save_learned([
            {"template_id": t.template_id, "tenant": task.tenant, "goal": t.goal, "embedding": t.embedding,
             "body": t.model_dump(mode="json", exclude={"goal", "embedding", "template_id"})}
            for task, t in zip(tasks, templates)])
        for task, fresh in zip(tasks, templates):
            if task.tenant in self._cache:  # keep the cache, with this lesson in it
                expires, learned = self._cache[task.tenant]
                kept = [t for t in learned if t.template_id != fresh.template_id]
                self._cache[task.tenant] = (expires, [fresh, *kept])
        learned = {key: f"{t.id}:{t.iteration}" for key, t in firsts.items()}
        return [learned[(t.tenant, plan_digest(t.plan))] for t in batch]

    async def templates(self, tenant: str) -> list[dict[str, Any]]:
        built_in = [{"kind": "built_in", **t} for t in list_templates()]
        learned = [{"kind": "learned", "template_id": r["template_id"], "goal": r["goal"],
                    "source": r["body"].get("source"), "nodes": len(r["body"].get("plan", {}).get("nodes", [])),
                    "created_at": r["created_at"].isoformat() if hasattr(r["created_at"], "isoformat")
                    else str(r["created_at"])} for r in await self.store.learned(tenant)]
        return built_in + learned


async def _outcome(proposal: Awaitable[PlanProposal], what: str) -> PlanResult:
    """A model planner's answer, or why there is none, as a value that crosses Serve."""
    try:
        return PlanResult(proposal=await proposal)
    except PlanningFailed as exc:
        return PlanResult(failure=exc.reason, calls=exc.calls)
    except LLMUnavailable as exc:
        return PlanResult.from_unavailable(exc)
    except LLMRequestError as exc:
        return PlanResult(failure=f"the model refused the {what} request: {exc.message}")


class PlannerClient:
    """The Planner deployment as the runner's PlannerPort."""

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle
        # (tenant, plan digest) -> (until, template id): plans this replica saw learned lately.
        self._learned: OrderedDict[tuple[str, str], tuple[float, str]] = OrderedDict()

    @staticmethod
    def _unwrap(result: PlanResult) -> PlanProposal:
        if result.unavailable is not None:
            raise LLMUnavailable(result.unavailable, retryable=result.retryable)
        if result.proposal is None:
            raise PlanningFailed(result.failure or "the planner gave no plan", result.calls)
        return result.proposal

    async def plan(self, ctx: PlanningContext) -> PlanProposal:
        return self._unwrap(await self.handle.plan.remote(ctx, task_carrier(ctx.task_id)))

    async def correct(self, ctx: PlanningContext) -> PlanProposal:
        return self._unwrap(await self.handle.correct.remote(ctx, task_carrier(ctx.task_id)))

    async def learn(self, task: Task) -> str | None:
        """A plan this replica saw learned for the tenant in the last LEARNED_SEEN_S is not sent
        again: the Planner would find it among its lessons and answer the same id, and that
        request (a whole task to send and read) cost more than the rest of a repeated plan's
        lesson. A lesson is best effort: one skipped while its template was replaced loses nothing."""
        if task.plan is None:
            return None
        key, now = (task.tenant, plan_digest(task.plan)), time.monotonic()
        seen = self._learned.get(key)
        if seen is not None and seen[0] > now:
            return seen[1]
        template_id = await self.handle.learn.remote(task)
        if template_id is not None:
            self._learned[key] = (now + LEARNED_SEEN_S, template_id)
            self._learned.move_to_end(key)
            while len(self._learned) > LEARNED_SEEN_MAX:
                self._learned.popitem(last=False)
        return template_id

"""The model-backed planner: goal -> validated Plan + acceptance tests, and failed verdicts
-> a corrective sub-plan covering only what failed.

The model answers in JSON whose schema comes from the Pydantic models (structured output).
Whatever it returns is checked like a submitted plan (JSON, schema, cycles, tools, args); a
faulty answer goes back to the model with the validation error, at most `max_repairs` times,
after which planning fails with the last error as the reason. No Ray here: the Planner
deployment wraps this, and tests drive it with a fake or scripted model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from troupe.llm import ChatRequest, LLMClient, LLMRequestError, LLMUsage
from troupe.models import AcceptanceTest, Plan, PlanNode, Verdict
from troupe.plan_schema import constrained_plan_schema
from troupe.plans import PlanError, validate_plan

__all__ = ["CorrectionDraft", "PlanDraft", "PlanProposal", "PlanningContext", "PlanningFailed", "ModelPlanner"]

MAX_REPAIRS = 2
TEMPLATE_EXAMPLE_CHARS = 12_000
"""A built-in template is shown whole (agent nodes' instructions make it longer than a learned plan)."""


class PlanDraft(BaseModel):
    """What the model must answer when planning."""

    pinned_requirements: list[str] = Field(
        default_factory=list,
        description="Every explicit requirement stated in the goal and follow-ups (format, length, "
                    "sources, things to include or avoid), each as one short imperative sentence.")
    nodes: list[PlanNode] = Field(min_length=1, max_length=100)
    acceptance_tests: list[AcceptanceTest] = Field(default_factory=list, max_length=20)


class CorrectionDraft(BaseModel):
    """What the model must answer when correcting: only the nodes to add or redo."""

    diagnosis: str = Field("", description="Why the failed tests failed, in one or two sentences.")
    nodes: list[PlanNode] = Field(
        min_length=1, max_length=50,
        description="New nodes, or nodes with an existing id to run again with a new definition.")


class PlanningContext(BaseModel):
    """Everything the planner may use; built by the Conductor from the task's state."""

    task_id: str
    tenant: str = "default"
    goal: str
    requirements: list[str] = Field(default_factory=list)
    pinned_requirements: list[str] = Field(default_factory=list)
    history: list[dict[str, Any]] = Field(default_factory=list, description="Earlier iterations.")
    artifacts: list[str] = Field(default_factory=list, description="Names of artifacts already published.")
    attachments: list[str] = Field(default_factory=list)
    examples: list[dict[str, Any]] = Field(default_factory=list, description="Similar plans that passed before.")
    project: str | None = None
    memories: list[str] = Field(default_factory=list, description="What the tenant asked to keep, from earlier tasks.")
    # correction only
    plan: Plan | None = None
    acceptance_tests: list[AcceptanceTest] = Field(default_factory=list)
    outputs: dict[str, Any] = Field(default_factory=dict)
    failed: list[Verdict] = Field(default_factory=list)
    guidance: str | None = None
    interrupt: str | None = Field(default=None, description="A message the user sent to interrupt the running plan.")


class PlanProposal(BaseModel):
    plan: Plan
    acceptance_tests: list[AcceptanceTest] = Field(default_factory=list)
    pinned_requirements: list[str] = Field(default_factory=list)
    source: str = "llm"
    calls: list[LLMUsage] = Field(default_factory=list)
    repairs: int = 0


class PlanningFailed(Exception):
    def __init__(self, reason: str, calls: list[LLMUsage] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.calls = calls or []

    def __reduce__(self):  # crosses the Serve boundary with its calls
        return (PlanningFailed, (self.reason, self.calls))


_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.MULTILINE)


def parse_json(text: str | None, finish_reason: str | None = None) -> Any:
    """The JSON object in a model's answer; tolerates a Markdown fence around it. An answer
    cut off at the token limit says so, since that, not the model's JSON, is what to fix."""
    if not text or not text.strip():
        raise ValueError("the answer was empty; reply with one JSON object")
    body = _FENCE.sub("", text.strip())
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        if finish_reason == "length":
            raise ValueError(f"the answer was cut off at the token limit after {len(text)} characters, before its "
                             "JSON ended; answer with a shorter JSON object (or raise the engine's max_tokens)") from None
        raise ValueError(f"the answer is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def _schema_format(model: type[BaseModel], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": model.__name__,
                                                   "schema": schema or model.model_json_schema()}}


def _draft_problems(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:20]]


def pinned_block(pinned: list[str]) -> str:
    """The requirements every model call of a task carries."""
    if not pinned:
        return ""
    return "Pinned requirements (the user stated these; never drop them):\n" + "\n".join(f"- {r}" for r in pinned)


def memory_block(memories: list[str]) -> str:
    """What the user told Troupe in earlier tasks and it kept (GET /v1/memory)."""
    if not memories:
        return ""
    return ("Remembered from the user's earlier tasks (follow these unless this goal says otherwise):\n"
            + "\n".join(f"- {m}" for m in memories))


RULES = """\
A plan is a DAG of nodes. Each node is either
- kind "tool": calls `tool` with `args` once (retried on transient errors), or
- kind "agent": a tool-calling loop that may call any of its `tools` until it can answer
  `instructions`; use it only where the next call depends on what earlier calls return.
Args and instructions may use upstream outputs: "{{node_id.output}}" or "{{node_id.output.field.0}}";
a node must list every node it references in `deps`. Independent nodes run in parallel.
Acceptance tests check the result: check_type is one of exists, contains, regex, json_schema,
min_count, all_nodes_done (deterministic; params name an `artifact` file or a `node` output and its
`field`), row_count, schema, chart_exists (params.artifact: a data file or chart), llm_judge
(params.rubric, judged by a model) or citations_supported.
Write the deliverable with a tool that writes files (e.g. write_report, render_report), so it is published."""


class ModelPlanner:
    """Plans and corrects with a model; `tools` maps tool names to registry entries (for
    validation) and `specs` are their schemas shown to the model."""

    def __init__(self, llm: LLMClient, tools: Mapping[str, Any], specs: list[dict[str, Any]],
                 *, max_repairs: int = MAX_REPAIRS, constrained: bool = False):
        self.llm = llm
        self.tools = tools
        self.specs = specs
        self.max_repairs = max_repairs
        self.constrained = constrained
        """Plans are asked for with troupe/plan_schema.py's schema (each node one tool's call,
        numbered, bounded) rather than the models' own: for small local models."""

    def _system(self, ctx: PlanningContext, purpose: str) -> str:
        tools = "\n".join(f"- {s['name']}: {s.get('description', '')}\n  args schema: "
                          f"{json.dumps(s.get('parameters', s.get('args_schema', {})), separators=(',', ':'))}"
                          for s in self.specs)
        return "\n\n".join(filter(None, [
            f"You are Troupe's planner. {purpose} Answer with one JSON object only.",
            RULES, "Available tools:\n" + tools, pinned_block(ctx.pinned_requirements), memory_block(ctx.memories)]))

    def _goal_text(self, ctx: PlanningContext) -> str:
        parts = [f"Goal: {ctx.goal}"]
        if ctx.requirements:
            parts.append("Requirements and follow-ups, oldest first:\n" + "\n".join(f"- {r}" for r in ctx.requirements))
        if ctx.history:
            parts.append("Earlier iterations of this task (their artifacts are still published; build on them "
                         "and do not ask again for anything already given):\n"
                         + json.dumps(ctx.history, ensure_ascii=False, default=str)[:12_000])
        if ctx.artifacts:
            parts.append("Published artifacts: " + ", ".join(ctx.artifacts))
        if ctx.attachments:
            parts.append("The user attached files; they are ingested into collection 'attachments' "
                         "(search_documents finds them): " + ", ".join(ctx.attachments))
        for ex in ctx.examples[:3]:
            head = (f"The built-in plan template {ex['template']!r} fits this goal; use its plan unless the goal "
                    "asks for something it does not do:\n") if ex.get("template") else \
                "A similar goal that was planned and verified before:\n"
            parts.append(head + json.dumps(ex, ensure_ascii=False, default=str)[:TEMPLATE_EXAMPLE_CHARS
                                                                                 if ex.get("template") else 6000])
        return "\n\n".join(parts)

    async def plan(self, ctx: PlanningContext) -> PlanProposal:
        messages = [{"role": "system", "content": self._system(ctx, "Plan how to reach the user's goal.")},
                    {"role": "user", "content": self._goal_text(ctx)}]

        def check(value: Any) -> PlanProposal:
            draft = PlanDraft.model_validate(value)
            plan = Plan(nodes=draft.nodes)
            validate_plan(plan, self.tools)
            pinned = list(dict.fromkeys([*ctx.pinned_requirements, *draft.pinned_requirements]))
            return PlanProposal(plan=plan, acceptance_tests=draft.acceptance_tests, pinned_requirements=pinned)

        schema = constrained_plan_schema(self.specs) if self.constrained else None
        return await self._converse(ctx, messages, PlanDraft, check, json_schema=schema)

    async def correct(self, ctx: PlanningContext) -> PlanProposal:
        assert ctx.plan is not None
        state = {
            "plan": ctx.plan.model_dump(mode="json", exclude_defaults=True),
            "acceptance_tests": [t.model_dump(mode="json", exclude_defaults=True) for t in ctx.acceptance_tests],
            "node_outputs": ctx.outputs,
            "failed_tests": [v.model_dump() for v in ctx.failed],
        }
        if ctx.interrupt:
            del state["failed_tests"]
            why = (f"While the plan ran, the user sent this message:\n{ctx.interrupt}\n\nIt is now a pinned "
                   "requirement. Return only the nodes that make the result honour it: new nodes (they may depend "
                   "on finished ones) or nodes with an existing id to run again with a new definition. Nodes without "
                   "an output have not finished.")
        else:
            why = "The plan ran, but these acceptance tests failed. Return only the nodes that fix them: new nodes " \
                  "(they may depend on finished ones) or nodes with an existing id to run again with a new definition."
        user = (self._goal_text(ctx) + "\n\n" + why + " Do not repeat work that succeeded.\n\n"
                + json.dumps(state, ensure_ascii=False, default=str)[:20_000])
        if ctx.guidance:
            user += f"\n\nThe user's guidance: {ctx.guidance}"
        messages = [{"role": "system", "content": self._system(ctx, "Correct a plan whose result failed its tests.")},
                    {"role": "user", "content": user}]

        def check(value: Any) -> PlanProposal:
            draft = CorrectionDraft.model_validate(value)
            merged = merge_correction(ctx.plan, draft.nodes)
            validate_plan(merged, self.tools)
            return PlanProposal(plan=Plan(nodes=draft.nodes), pinned_requirements=ctx.pinned_requirements)

        return await self._converse(ctx, messages, CorrectionDraft, check)

    async def _converse(self, ctx: PlanningContext, messages: list[dict[str, Any]], schema: type[BaseModel],
                        check: Any, json_schema: dict[str, Any] | None = None) -> PlanProposal:
        calls: list[LLMUsage] = []
        problem = ""
        response_format: dict[str, Any] | None = _schema_format(schema, json_schema)
        for attempt in range(self.max_repairs + 1):
            try:
                reply = await self.llm.chat(ChatRequest(group="reason", messages=messages, task_id=ctx.task_id,
                                                        response_format=response_format, temperature=0))
            except LLMRequestError:
                if response_format is None:
                    raise
                # Many local servers reject structured output: ask for the schema in words instead.
                response_format = None
                messages = [*messages[:-1], {**messages[-1], "content": messages[-1]["content"]
                            + "\n\nAnswer with JSON matching this JSON Schema:\n"
                            + json.dumps(schema.model_json_schema(), separators=(",", ":"))}]
                reply = await self.llm.chat(ChatRequest(group="reason", messages=messages, task_id=ctx.task_id,
                                                        temperature=0))
            calls.append(reply.usage)
            try:
                proposal = check(parse_json(reply.content, reply.finish_reason))
            except ValidationError as exc:
                problem = "the JSON does not match the schema: " + "; ".join(_draft_problems(exc))
            except PlanError as exc:
                problem = str(exc)
            except ValueError as exc:
                problem = str(exc)
            else:
                proposal.calls, proposal.repairs = calls, attempt
                return proposal
            messages = [*messages, reply.assistant_message(),
                        {"role": "user", "content": f"That answer cannot be used: {problem}. "
                                                    "Reply with the corrected JSON object only."}]
        raise PlanningFailed(f"the model's plan was still invalid after {self.max_repairs} repairs: {problem}", calls)


def merge_correction(plan: Plan, nodes: list[PlanNode]) -> Plan:
    """The plan after a correction (as the reducer applies it): same ids redefined, new appended."""
    merged = {n.id: n for n in plan.nodes}
    for n in nodes:
        merged[n.id] = n
    return Plan(nodes=list(merged.values()))

"""Shared contracts: the Pydantic models every process agrees on (and the REST schema)."""

from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "AcceptanceTest",
    "Approval",
    "Artifact",
    "Budget",
    "Usage",
    "CheckType",
    "Event",
    "EventType",
    "NodeState",
    "NodeStatus",
    "Plan",
    "PlanNode",
    "Priority",
    "RetryPolicy",
    "Task",
    "TaskStatus",
    "Verdict",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class TaskStatus(StrEnum):
    queued = "queued"
    planning = "planning"
    executing = "executing"
    verifying = "verifying"
    publishing = "publishing"
    waiting_for_input = "waiting_for_input"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.done, TaskStatus.failed, TaskStatus.cancelled)


class Priority(StrEnum):
    high = "high"
    normal = "normal"
    low = "low"

    @property
    def rank(self) -> int:
        """Lower runs first; stored so the dispatch queue can ORDER BY it."""
        return {"high": 0, "normal": 1, "low": 2}[self.value]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetryPolicy(_Strict):
    max_attempts: int = Field(3, ge=1, le=20, description="Attempts in all, the first included.")
    backoff_s: float = Field(0.5, ge=0, le=600, description="Delay before the first retry.")
    max_backoff_s: float = Field(30.0, ge=0, le=3600)
    jitter: bool = Field(True, description="Randomise each delay (full jitter) to spread retries.")

    def delay_s(self, attempt: int, rand: float) -> float:
        """Delay after failed `attempt` (1-based); `rand` in [0, 1) makes it testable."""
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return base * rand if self.jitter else base


NODE_ID_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"


class PlanNode(_Strict):
    id: str = Field(pattern=NODE_ID_PATTERN, description="Unique within the plan; used in references.")
    kind: Literal["tool", "agent"] = "tool"
    tool: str | None = Field(None, description="The tool to call (kind=tool).")
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Tool arguments; a string may reference upstream outputs as {{node.output}} "
        "or {{node.output.field}}.",
    )
    deps: list[str] = Field(default_factory=list, description="Ids of nodes that must finish first.")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout_s: float = Field(300.0, gt=0, le=86_400)
    side_effects: bool | None = Field(
        None, description="Overrides the tool's own declaration when set."
    )
    # kind=agent: a tool-calling loop over `tools` until the model gives a final answer.
    instructions: str | None = Field(
        None, max_length=20_000,
        description="Agent nodes: what to achieve; may reference upstream outputs like args do.")
    tools: list[str] = Field(default_factory=list, max_length=50, description="Agent nodes: the tools it may call.")
    max_steps: int = Field(8, ge=1, le=1000, description="Agent nodes: model turns before the node stops; "
                                                          "older turns are compacted to fit the model's window.")
    model_group: Literal["fast", "reason"] = Field("fast", description="Agent nodes: the model group it uses.")
    owns: list[str] = Field(
        default_factory=list, max_length=50,
        description="Workspace files this node writes (glob patterns such as 'project/app/*'): a failed check "
                    "that names a file and line in one of them is routed back to this node to fix.")


class Plan(_Strict):
    nodes: list[PlanNode] = Field(min_length=1, max_length=500)

    def node(self, node_id: str) -> PlanNode:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)


CheckType = Literal["exists", "contains", "regex", "json_schema", "min_count", "all_nodes_done",
                    "llm_judge", "citations_supported", "row_count", "schema", "chart_exists",
                    "tests_passed", "review_scores", "human_approval"]
DETERMINISTIC_CHECKS = frozenset({"exists", "contains", "regex", "json_schema", "min_count", "all_nodes_done",
                                  "row_count", "schema", "chart_exists", "tests_passed", "review_scores",
                                  "human_approval"})


class AcceptanceTest(_Strict):
    id: str = Field(pattern=NODE_ID_PATTERN)
    description: str = ""
    check_type: CheckType
    threshold: float | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class Verdict(BaseModel):
    test_id: str
    passed: bool
    reason: str
    citations: list[dict[str, Any]] = Field(default_factory=list)
    """citations_supported: each citation checked (n, claim, source, best passage, score, supported)."""
    locations: list[dict[str, Any]] = Field(default_factory=list)
    """Where the failure is: {file, line, error} each (tests_passed, review_scores); a correction
    goes to the node that owns the file (troupe/routing.py)."""
    awaiting: str | None = None
    """Not failed but not decided yet: "approval" while a human_approval test waits for the user."""


class Artifact(BaseModel):
    name: str
    media_type: str
    size: int
    sha256: str
    uri: str


class EventType(StrEnum):
    submitted = "task.submitted"
    status = "task.status"
    dispatched = "task.dispatched"
    cancel_requested = "task.cancel_requested"
    message = "message.received"
    plan_set = "plan.set"
    node_started = "node.started"
    tool_called = "tool.called"
    tool_result = "tool.result"
    node_retry = "node.retry"
    node_done = "node.done"
    node_failed = "node.failed"
    verdicts = "verify.verdicts"
    artifact = "artifact.published"
    # autonomy: model calls, requirements, budgets, corrections, follow-ups
    llm_called = "llm.called"
    requirements_pinned = "requirements.pinned"
    budget_raised = "budget.raised"
    plan_corrected = "plan.corrected"
    agent_step = "agent.step"
    iteration_started = "iteration.started"
    interrupted = "task.interrupted"
    context_compacted = "context.compacted"
    attachments_ingested = "attachments.ingested"


class Event(BaseModel):
    task_id: str
    seq: int
    ts: datetime
    type: EventType
    payload: dict[str, Any] = Field(default_factory=dict)
    trace_id: str | None = None


class NodeStatus(StrEnum):
    pending = "pending"
    running = "running"
    retrying = "retrying"
    done = "done"
    failed = "failed"


class NodeState(BaseModel):
    id: str
    status: NodeStatus = NodeStatus.pending
    round: int = 0
    """The correction round that (re)defined the node; 0 for the iteration's first plan."""
    attempts: int = 0
    tool_calls: int = 0
    output: Any = None
    error: str | None = None
    outcome_unknown: bool = False
    """A call was recorded but not its result: the process driving it died mid-call."""
    transcript: list[dict[str, Any]] = Field(default_factory=list)
    """Agent nodes: the conversation after the instructions (assistant turns, tool results)."""
    compacted: int = 0
    """Agent nodes: transcript messages before this index reach the model as `digest` (troupe/context.py)."""
    digest: str | None = None
    unknown_calls: list[str] = Field(default_factory=list)
    """Agent nodes: call ids recorded as called with no result yet."""
    confirmed_runs: int | None = None
    """The user answered `retry` about this run of the node's call in doubt: it may run again, once."""
    confirmed_calls: dict[str, int | None] = Field(default_factory=dict)
    """Agent nodes: the same answer about an agent's calls in doubt, by call id (kept in the log,
    so a drive that resumes after a crash does not ask again)."""


class Budget(_Strict):
    max_cost_usd: float = Field(1.0, ge=0, le=10_000, description="Model spend before the task pauses.")
    max_llm_calls: int = Field(50, ge=0, le=100_000, description="Model calls before the task pauses.")


class Approval(BaseModel):
    """A reply to an approval request: `round` is the correction round it approves or rejects."""

    round: int
    reply: str


class Usage(BaseModel):
    llm_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0

    def exceeded(self, budget: Budget) -> str | None:
        """Why the next model call would break the budget, or None."""
        if self.llm_calls >= budget.max_llm_calls:
            return f"the task made {self.llm_calls} model calls, its max_llm_calls is {budget.max_llm_calls}"
        if self.cost_usd >= budget.max_cost_usd:
            return f"the task spent ${self.cost_usd:.4f} on models, its max_cost_usd is ${budget.max_cost_usd:g}"
        return None


class Task(BaseModel):
    id: str
    tenant: str = "default"
    goal: str
    status: TaskStatus = TaskStatus.queued
    priority: Priority = Priority.normal
    requirements: list[str] = Field(default_factory=list)
    plan: Plan | None = None
    acceptance_tests: list[AcceptanceTest] = Field(default_factory=list)
    iteration: int = 1
    nodes: dict[str, NodeState] = Field(default_factory=dict)
    verdicts: list[Verdict] = Field(default_factory=list)
    artifacts: list[Artifact] = Field(default_factory=list)
    messages: list[str] = Field(default_factory=list)
    queued_messages: list[str] = Field(default_factory=list)
    """Follow-ups sent while the task ran (on_running=enqueue): they start the next iteration once this one ends."""
    interrupts: list[str] = Field(default_factory=list)
    """Messages sent with on_running=interrupt that the runner has not acted on yet."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    reason: str | None = None
    cancel_requested: bool = False
    reply: str | None = None
    """The user's answer to the question that put the task in waiting_for_input."""
    waiting_on: str | None = None
    """Why the task waits: side_effects, budget, verification, model, approval."""
    resume_status: TaskStatus | None = None
    """The status a waiting task goes back to."""
    approval: Approval | None = None
    """The user's reply to the latest approval request (human_approval tests) and its round."""
    in_doubt: list[dict[str, Any]] = Field(default_factory=list)
    """While waiting on side_effects: each call in doubt (node, tool, args, key, runs, what is known)."""
    pinned_requirements: list[str] = Field(default_factory=list)
    """Explicit requirements found in the goal and follow-ups; every model call of the task sees them."""
    budget: Budget = Field(default_factory=Budget)
    usage: Usage = Field(default_factory=Usage)
    max_corrections: int = 3
    corrections: int = 0
    """Corrective sub-plans in this iteration."""
    history: list[dict[str, Any]] = Field(default_factory=list)
    """Earlier iterations: their requirement, plan and node outputs (follow-ups' context)."""
    attachments: list[str] = Field(default_factory=list)
    attachments_ingested: bool = False
    plan_source: str | None = None
    """Who planned: submitted, llm, template:<name>, learned:<task id>."""
    last_seq: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, v: str) -> str:
        return v or "default"

"""What each Troupe dashboard shows: panels as plain data (title, PromQL, what a bad value means).

Kept apart from the Grafana builder (dashboards/build.py) so the tests can evaluate every
query against a real Prometheus without Grafana. Queries use fixed windows, not Grafana's
`$__rate_interval`, so Prometheus's HTTP API evaluates them as they are.

Ray exports a metric `troupe_x` as `ray_troupe_x` (counters with `_total`), one series per
process (WorkerId label): every query aggregates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

M = "ray_troupe_"
"""Exported name prefix: Ray's exporter puts `ray_` before troupe.metrics.PREFIX."""

QUEUE_WAIT_SLO_S = 30
"""The queue wait p95 the Overview draws and the QueueWaitOverSLO alert enforces."""


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    """What the panel shows and what a bad value means."""
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    width: int = 12


@dataclass(frozen=True)
class Board:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def _q(expr: str, legend: str = "") -> tuple[Query, ...]:
    return (Query(expr, legend),)


def _p95(metric: str, by: str = "") -> str:
    group = f"le{', ' + by if by else ''}"
    return f"histogram_quantile(0.95, sum by ({group}) (rate({M}{metric}_bucket[5m])))"


OVERVIEW = Board("troupe-overview", "Troupe / Overview", "Throughput, success, queue wait against its SLO, spend.", (
    Panel("Tasks finished per minute", "Tasks reaching done, failed or cancelled, by status. A rising failed line, "
          "or done falling while submissions hold, means tasks are breaking: open the Runtime board.",
          _q(f"sum by (status) (rate({M}tasks_finished_total[5m])) * 60", "{{status}}"), "short", width=8),
    Panel("Success rate", "Share of finished tasks that ended done over 15 minutes. Below 0.8 the FailureRate "
          "alert fires; look at failed nodes by tool and model errors.",
          _q(f'sum(rate({M}tasks_finished_total{{status="done"}}[15m])) / '
             f"sum(rate({M}tasks_finished_total[15m]))", "success"), "percentunit", "stat", width=4),
    Panel("Submissions per minute", "Tasks accepted by the Gateway, by tenant. A tenant far above its usual rate "
          "may be a runaway client (its rate limit and queue caps still hold).",
          _q(f"sum by (tenant) (rate({M}tasks_submitted_total[5m])) * 60", "{{tenant}}"), width=12),
    Panel("Queue wait p50 / p95 against the SLO", f"Time from queued to taken by a Conductor. p95 above the "
          f"{QUEUE_WAIT_SLO_S} s SLO means dispatch capacity (max_running_tasks, Conductor replicas) is short "
          "or a tenant is at its cap.",
          (Query(f"histogram_quantile(0.5, sum by (le) (rate({M}task_queue_wait_seconds_bucket[5m])))", "p50"),
           Query(_p95("task_queue_wait_seconds"), "p95"),
           Query(f"vector({QUEUE_WAIT_SLO_S})", "SLO")), "s"),
    Panel("Tasks queued, running and waiting", "Tasks not ended by state. Queued growing while running stays "
          "flat means dispatch is saturated; waiting growing means tasks need users or a model.",
          _q(f"sum by (state) (max by (tenant, state) ({M}tasks))", "{{state}}")),
    Panel("Time to done p95", "Submission to terminal status, by status. A long tail on done means slow tools or "
          "models; read node latency on the Runtime board.",
          _q(_p95("task_duration_seconds", "status"), "{{status}}"), "s"),
    Panel("Model spend per hour (USD)", "LiteLLM-priced spend of all model calls, as a rate per hour. Above the "
          "budget in the CostBurnRate alert: the Models board names the group, GET /v1/usage the tenant.",
          _q(f"sum(rate({M}model_cost_usd_total[1h])) * 3600", "USD/h"), "currencyUSD"),
))

RUNTIME = Board("troupe-runtime", "Troupe / Runtime", "Nodes, retries, re-dispatches, waiting reasons.", (
    Panel("Node latency p95 by tool", "Node start to done or failed, retries included. A tool far above its usual "
          "p95 is slow or retrying: check its tool errors on the Tools board.",
          _q(_p95("node_duration_seconds", "tool"), "{{tool}}"), "s"),
    Panel("Orchestration overhead p95 by tool", "An attempt's wall time outside the tool (dispatch, call ledger, "
          "event writes). Above ~0.5 s the store or the Conductor is the bottleneck, not the tool.",
          _q(_p95("node_overhead_seconds", "tool"), "{{tool}}"), "s"),
    Panel("Nodes finished per minute", "Nodes done or failed, by tool. Failed nodes trigger corrections; a tool "
          "that only fails is misconfigured or its dependency is down.",
          _q(f"sum by (tool, status) (rate({M}nodes_finished_total[5m])) * 60", "{{tool}} {{status}}")),
    Panel("Retries and timeouts per minute", "Failed attempts the runner retries and calls it stopped waiting "
          "for, by tool. Rising timeouts mean the tool's timeout_s is too short or its service hangs.",
          (Query(f"sum by (tool) (rate({M}tool_retries_total[5m])) * 60", "retry {{tool}}"),
           Query(f"sum by (tool) (rate({M}tool_timeouts_total[5m])) * 60", "timeout {{tool}}"))),
    Panel("Re-dispatches per minute", "Tasks dispatched again because their driver was lost (Conductor replica "
          "died, lost call, silent heartbeat). A steady rate means replicas crash: see the Ray dashboard.",
          # `or vector(0)`: the counter has no series until the first re-dispatch, which is the usual case.
          _q(f"sum by (reason) (rate({M}redispatches_total[5m])) * 60 or vector(0)", "{{reason}}")),
    Panel("Tasks waiting, by reason", "Tasks paused for the user: budget (raise it), model (none answers), "
          "side_effects (a call in doubt needs a retry decision), verification. Growth means users are not "
          "answering or a model is down.",
          _q(f"max by (reason) ({M}tasks_waiting)", "{{reason}}")),
    Panel("Budget pauses and corrections per hour", "Tasks that spent their budget, and corrective sub-plans. "
          "Many corrections per task means plans or models are weak for the goals given.",
          (Query(f"sum(rate({M}budget_pauses_total[1h])) * 3600", "budget pauses"),
           Query(f"sum(rate({M}corrections_total[1h])) * 3600", "corrections"))),
    Panel("Verdicts by check", "Acceptance test results by check kind. A check kind that mostly fails is too "
          "strict or its tool output changed.",
          _q(f"sum by (check, result) (rate({M}verdicts_total[15m])) * 60", "{{check}} {{result}}")),
    Panel("Supervisor heartbeat age", "Seconds since the Supervisor's last dispatch pass. Above 60 s nothing is "
          "dispatched: the NoSupervisorHeartbeat alert fires.",
          _q(f"time() - max({M}supervisor_heartbeat_timestamp_seconds)", "age"), "s", "stat"),
))

MODELS = Board("troupe-models", "Troupe / Models", "Calls, tokens, cost, latency, errors, cooldowns per group.", (
    Panel("Model calls per minute", "Attempts per deployment, by outcome. Errors with retries and fallbacks "
          "still let tasks go on; errors on every deployment of a group pause them (waiting on model).",
          _q(f"sum by (group, deployment, status) (rate({M}model_calls_total[5m])) * 60",
             "{{group}} {{deployment}} {{status}}")),
    Panel("Model error ratio", "Failed attempts over all attempts, per group. Above 0.2 the endpoint is "
          "failing or rate limiting: check its last error in GET /v1/models status.",
          _q(f'sum by (group) (rate({M}model_calls_total{{status="error"}}[15m])) / '
             f"sum by (group) (rate({M}model_calls_total[15m]))", "{{group}}"), "percentunit"),
    Panel("Latency p95", "One attempt's latency per deployment. A jump means the engine is saturated "
          "(add replicas) or a hosted API is slow.",
          _q(_p95("model_latency_seconds", "group, deployment"), "{{group}} {{deployment}}"), "s"),
    Panel("Tokens per minute", "Prompt (in) and completion (out) tokens per group. A surge of input tokens "
          "means contexts are growing: check compaction and attachments.",
          _q(f"sum by (group, direction) (rate({M}model_tokens_total[5m])) * 60", "{{group}} {{direction}}")),
    Panel("Spend per hour (USD)", "LiteLLM-priced spend per group and deployment. Local engines cost 0.",
          _q(f"sum by (group, deployment) (rate({M}model_cost_usd_total[1h])) * 3600", "{{group}} {{deployment}}"),
          "currencyUSD"),
    Panel("Deployments cooling down", "Deployments LiteLLM cooled down after failures, against the group's total. "
          "When all of a group cool down nothing answers: the ModelGroupCoolingDown alert fires.",
          (Query(f"max by (group) ({M}model_deployments_cooling_down)", "cooling {{group}}"),
           Query(f"max by (group) ({M}model_deployments)", "total {{group}}"))),
))

TOOLS = Board("troupe-tools", "Troupe / Tools and browser", "Tool runs, errors and latency; browser operations.", (
    Panel("Tool runs per minute", "Runs in the tool pools by tool and outcome. An error share that rises for "
          "one tool points at that tool's dependency (site, MCP server, sandbox).",
          _q(f"sum by (tool, status) (rate({M}tool_calls_total[5m])) * 60", "{{tool}} {{status}}")),
    Panel("Tool error ratio", "Errors over runs per tool over 15 minutes. Near 1 the tool is broken; the runner "
          "retries retryable errors, then fails the node.",
          _q(f'sum by (tool) (rate({M}tool_calls_total{{status="error"}}[15m])) / '
             f"sum by (tool) (rate({M}tool_calls_total[15m]))", "{{tool}}"), "percentunit"),
    Panel("Tool latency p95", "A run as its pool measured it. Compare with node latency: the gap is retries "
          "and orchestration.",
          _q(_p95("tool_duration_seconds", "tool"), "{{tool}}"), "s"),
    Panel("Browser operations per minute", "Browse, click, crawl ... by outcome. Errors climbing together "
          "means Chromium is crashing or sites block it.",
          _q(f"sum by (op, status) (rate({M}browser_ops_total[5m])) * 60", "{{op}} {{status}}")),
    Panel("Browser sessions and launches", "Sessions open over all BrowserPool replicas, and Chromium starts in "
          "the last hour. Sessions near max_sessions x replicas means tasks wait for a slot (add replicas); "
          "launches above the replica count mean Chromium crashes or hangs and is relaunched (memory?).",
          (Query(f"sum({M}browser_sessions)", "sessions"),
           Query(f"sum(increase({M}browser_launches_total[1h]))", "launches (1h)")), width=12),
    Panel("Live event streams", "Open SSE streams (opened minus closed, over all Gateway replicas). A steady "
          "climb with flat task counts means clients do not close their streams.",
          _q(f"sum({M}sse_streams_opened_total) - sum({M}sse_streams_closed_total)", "streams"),
          kind="stat", width=6),
))

INGESTION = Board("troupe-ingestion", "Troupe / Ingestion", "Files and chunks into semantic memory.", (
    Panel("Files per minute by outcome", "Files settled: stored, unchanged, duplicate, near_duplicate, failed. "
          "The rate of all outcomes is the ingestion throughput (docs/s x 60).",
          _q(f"sum by (status) (rate({M}ingest_files_total[5m])) * 60", "{{status}}")),
    Panel("Ingest failure ratio", "Failed files over all files, 30 minutes. Above 0.1 the IngestFailures alert "
          "fires: the job's report names each file's reason (parser, encoding, size).",
          _q(f'sum(rate({M}ingest_files_total{{status="failed"}}[30m])) / '
             f"sum(rate({M}ingest_files_total[30m]))", "failed"), "percentunit", "stat"),
    Panel("Chunks stored per minute", "Chunks embedded and written, by tenant. Zero while files are stored "
          "means documents parse to no text.",
          _q(f"sum by (tenant) (rate({M}ingest_chunks_total[5m])) * 60", "{{tenant}}")),
))

BOARDS = (OVERVIEW, RUNTIME, MODELS, TOOLS, INGESTION)


def all_queries() -> list[tuple[str, str, str]]:
    """(board uid, panel title, expr) for every query of every board."""
    return [(b.uid, p.title, q.expr) for b in BOARDS for p in b.panels for q in p.queries]

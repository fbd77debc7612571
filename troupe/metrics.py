"""Troupe's Prometheus metrics: every metric, its labels and the helpers that record it.

Metrics go through `ray.util.metrics`, so each process (Gateway, Conductor, tool pools, the
Supervisor) reports to its node's Ray metrics agent, which serves them for Prometheus beside
Ray's and Serve's own. Labels stay bounded: tenant, priority, status, tool, model group and
deployment, reason; never a task id. Outside a Ray worker (in-process tests, the CLI) every
helper does nothing.

The runtime core calls one helper per fact (one line each), so metrics never shape its code.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = [
    "PREFIX",
    "dispatched",
    "enabled",
    "ingest_finished",
    "browser_op",
    "browser_pool",
    "model_call",
    "model_cooldowns",
    "node_attempt_started",
    "redispatched",
    "sample_queue",
    "sse_client",
    "task_ended",
    "task_events",
    "task_submitted",
    "tool_call",
    "tool_timeout",
]

log = logging.getLogger("troupe.metrics")

PREFIX = "troupe_"
"""Every Troupe metric's name starts with this (Ray's exporter adds nothing in front of it)."""

# Seconds. Queue waits and task times span sub-second (an idle system) to an hour (a backlog).
_WAIT_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_CALL_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# name -> (kind, description, label names[, histogram boundaries]). One table, so the
# dashboards and alerts (dashboards/) and the tests can list what exists.
SPECS: dict[str, tuple[Any, ...]] = {
    "tasks_submitted": ("counter", "Tasks accepted by the Gateway.", ("tenant", "priority")),
    "tasks_finished": ("counter", "Tasks that reached a terminal status.", ("tenant", "status")),
    "task_queue_wait_seconds": ("histogram", "Time a task waited queued before a Conductor took it.",
                                ("tenant", "priority"), _WAIT_S),
    "task_duration_seconds": ("histogram", "Submission to terminal status.", ("tenant", "status"), _WAIT_S),
    "tasks": ("gauge", "Tasks not ended, by dispatch state (queued, running, waiting).", ("tenant", "state")),
    "tasks_waiting": ("gauge", "Tasks waiting for the user, by reason (budget, model, side_effects, ...).",
                      ("reason",)),
    "supervisor_heartbeat_timestamp_seconds": ("gauge", "Unix time of the Supervisor's last dispatch pass.", ()),
    "redispatches": ("counter", "Tasks dispatched again after losing their driver.", ("reason",)),
    "nodes_finished": ("counter", "Plan nodes done or failed.", ("tool", "status")),
    "node_duration_seconds": ("histogram", "Node start to done or failed, retries included.", ("tool",), _CALL_S),
    "node_overhead_seconds": ("histogram", "An attempt's wall time outside the tool itself (dispatch, ledger, "
                                           "event writes).", ("tool",), _CALL_S),
    "tool_calls": ("counter", "Tool runs in the tool pools, by outcome (ok, error).", ("tool", "status")),
    "tool_duration_seconds": ("histogram", "A tool run as its pool measured it.", ("tool",), _CALL_S),
    "tool_retries": ("counter", "Failed attempts the runner retries.", ("tool",)),
    "tool_timeouts": ("counter", "Tool calls the runner stopped waiting for.", ("tool",)),
    "model_calls": ("counter", "Model calls per deployment attempt, by outcome (ok, error).",
                    ("group", "deployment", "status")),
    "model_tokens": ("counter", "Model tokens, direction in (prompt) or out (completion).",
                     ("group", "deployment", "direction")),
    "model_cost_usd": ("counter", "Model spend in USD as LiteLLM prices it.", ("group", "deployment")),
    "model_latency_seconds": ("histogram", "One model call attempt.", ("group", "deployment"), _CALL_S),
    "model_deployments": ("gauge", "Deployments configured per model group.", ("group",)),
    "model_deployments_cooling_down": ("gauge", "Deployments of the group LiteLLM is cooling down.", ("group",)),
    "budget_pauses": ("counter", "Tasks paused because their budget was spent.", ("tenant",)),
    "verdicts": ("counter", "Acceptance test verdicts, by check kind and result.", ("check", "result")),
    "corrections": ("counter", "Corrective sub-plans.", ("tenant",)),
    "ingest_files": ("counter", "Files settled by ingestion, by outcome.", ("tenant", "status")),
    "ingest_chunks": ("counter", "Chunks stored by ingestion.", ("tenant",)),
    "browser_ops": ("counter", "Browser pool operations (browse, click, crawl, ...), by outcome.",
                    ("op", "status")),
    "browser_sessions": ("gauge", "Browser sessions open in a BrowserPool replica (one per task using it).", ()),
    "browser_launches": ("counter", "Chromium starts in a BrowserPool replica: its first, then each relaunch "
                                    "after a crash or a hang.", ()),
    # Counters, not a gauge: Ray exports a gauge only while it is set, and a replica sets its
    # stream count only when a stream opens or closes. Open streams = opened - closed.
    "sse_streams_opened": ("counter", "Live event streams opened on the Gateway.", ()),
    "sse_streams_closed": ("counter", "Live event streams closed (ended, or the client went away).", ()),
}


def enabled() -> bool:
    """Whether helpers record: in a Ray worker or driver, not in plain in-process runs."""
    import ray

    return ray.is_initialized()


_on = enabled


def _safe(fn: Any) -> Any:
    """Metrics never fail the caller: a metrics bug or a broken agent costs a log line, not a task."""
    if asyncio.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except Exception:
                log.warning("metrics not recorded by %s", fn.__name__, exc_info=True)
        return wrapped_async

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception:
            log.warning("metrics not recorded by %s", fn.__name__, exc_info=True)
    return wrapped


@functools.cache
def _metric(name: str) -> Any:
    """Created once per process, on first use: Ray registers a metric in the process that makes it."""
    from ray.util import metrics as rm

    kind, description, labels, *bounds = SPECS[name]
    full = PREFIX + name
    if kind == "counter":
        return rm.Counter(full, description, tag_keys=labels)
    if kind == "gauge":
        return rm.Gauge(full, description, tag_keys=labels)
    return rm.Histogram(full, description, boundaries=list(bounds[0]), tag_keys=labels)


def _record(name: str, value: float, **tags: Any) -> None:
    """Metrics never fail the caller: a broken metrics agent costs a log line, not a task."""
    if not _on():
        return
    try:
        m = _metric(name)
        tags = {k: str(v) for k, v in tags.items()}
        kind = SPECS[name][0]
        if kind == "counter":
            if value > 0:
                m.inc(value, tags=tags)
        elif kind == "gauge":
            m.set(value, tags=tags)
        else:
            m.observe(value, tags=tags)
    except Exception:
        log.debug("metric %s not recorded", name, exc_info=True)


# -- Gateway ------------------------------------------------------------------------------

@_safe
def task_submitted(tenant: str, priority: Any) -> None:
    _record("tasks_submitted", 1, tenant=tenant, priority=getattr(priority, "value", priority))


@contextlib.contextmanager
def sse_client() -> Iterator[None]:
    """Around one live event stream."""
    _record("sse_streams_opened", 1)
    try:
        yield
    finally:
        _record("sse_streams_closed", 1)


# -- Supervisor ---------------------------------------------------------------------------

_last_sample = [0.0]
_seen_states: set[tuple[str, str]] = set()
_seen_reasons: set[str] = set()
SAMPLE_EVERY_S = 5.0


@_safe
def dispatched(rows: Iterable[Any], epochs: dict[str, int]) -> None:
    """Queue wait of each task a dispatch pass leased: its row was last touched when it was
    queued (submission, a reply, a wake-up), so now minus updated_at is how long it waited."""
    if not _on():
        return
    from troupe.models import utcnow

    now = utcnow()
    for row in rows:
        if row.task_id in epochs:
            _record("task_queue_wait_seconds", max(0.0, (now - row.updated_at).total_seconds()),
                    tenant=row.tenant, priority=row.priority.value)
            # The queue gauge's next sample exports this tenant's series even when its tasks end
            # between two samples: a tenant that ran tasks reads 0 when drained, never absent.
            _seen_states.update({(row.tenant, "queued"), (row.tenant, "running")})


@_safe
def redispatched(reason: str) -> None:
    _record("redispatches", 1, reason=reason)


@_safe
async def sample_queue(store: Any) -> None:
    """The Supervisor's heartbeat, and every SAMPLE_EVERY_S the counts of tasks not ended by
    tenant, dispatch state and waiting reason (one grouped query on the tasks table)."""
    if not _on():
        return
    _record("supervisor_heartbeat_timestamp_seconds", time.time())
    if time.monotonic() - _last_sample[0] < SAMPLE_EVERY_S:
        return
    _last_sample[0] = time.monotonic()
    from sqlalchemy import func, select

    from memory.schema import tasks
    from memory.store import DISPATCHED, PENDING, WAITING

    names = {PENDING: "queued", DISPATCHED: "running", WAITING: "waiting"}
    try:
        async with store.reader.connect() as conn:
            rows = (await conn.execute(
                select(tasks.c.tenant, tasks.c.dispatch_state, tasks.c.waiting_on, func.count())
                .where(tasks.c.dispatch_state.in_(list(names)))
                .group_by(tasks.c.tenant, tasks.c.dispatch_state, tasks.c.waiting_on))).all()
    except Exception:
        log.debug("could not sample the queue", exc_info=True)
        return
    states: dict[tuple[str, str], int] = {}
    reasons: dict[str, int] = {}
    for tenant, state, waiting_on, n in rows:
        states[(tenant, names[state])] = states.get((tenant, names[state]), 0) + n
        if state == WAITING:
            reasons[waiting_on or "other"] = reasons.get(waiting_on or "other", 0) + n
    # Label sets seen before and now empty go to 0, so a drained queue reads 0, not its last value.
    _seen_states.update(states)
    _seen_reasons.update(reasons)
    for tenant, state in _seen_states:
        _record("tasks", states.get((tenant, state), 0), tenant=tenant, state=state)
    for reason in _seen_reasons | {"budget", "model", "side_effects"}:
        _record("tasks_waiting", reasons.get(reason, 0), reason=reason)


@_safe
async def task_ended(store: Any, task_id: str, status: str) -> None:
    """A terminal status written outside a runner (the Supervisor failing or cancelling a task)."""
    if not _on():
        return
    try:
        row = await store.get(task_id)
    except Exception:
        return
    if row is not None:
        _finished(row.tenant, status, row.created_at)


def _finished(tenant: str, status: str, created_at: Any) -> None:
    from troupe.models import utcnow

    _record("tasks_finished", 1, tenant=tenant, status=status)
    _record("task_duration_seconds", max(0.0, (utcnow() - created_at).total_seconds()), tenant=tenant, status=status)


# -- runner (Conductor) --------------------------------------------------------------------

_node_started: dict[tuple[str, str], float] = {}
"""(task, node) -> when its first attempt started in this process; an attempt's own start is in _attempt_started."""
_attempt_started: dict[tuple[str, str], float] = {}
_MAX_OPEN_NODES = 100_000  # a bound on the start times kept, should nodes of a dead driver never end


@_safe
def node_attempt_started(task_id: str, node_id: str) -> None:
    """A node's attempt began now. The runner says so when it issues the call, since a fast
    call's `node.started` is appended with its result; the event then changes nothing."""
    if _on() and len(_node_started) < _MAX_OPEN_NODES:
        now = time.monotonic()
        _node_started.setdefault((task_id, node_id), now)
        _attempt_started.setdefault((task_id, node_id), now)


@_safe
def task_events(store: Any, task: Any, events: Iterable[Any]) -> None:
    """What a runner just wrote, folded into `task`: counts each fact exactly once, at the
    write that records it (a replay after a crash writes nothing, so counts nothing)."""
    if not _on():
        return
    from troupe.models import EventType, TaskStatus

    for e in events:
        p = e.payload
        if e.type == EventType.status:
            status = TaskStatus(p["status"])
            if status.terminal and task.created_at is not None:  # the runner's state has it: no read
                _finished(task.tenant, status.value, task.created_at)
            elif status.terminal:
                _spawn(task_ended(store, task.id, status.value))
            elif status == TaskStatus.waiting_for_input and p.get("waiting_on") == "budget":
                _record("budget_pauses", 1, tenant=task.tenant)
        elif e.type == EventType.node_started:
            node_attempt_started(task.id, p["node_id"])
        elif e.type == EventType.tool_result and "duration_s" in p:
            started = _attempt_started.pop((task.id, p["node_id"]), None)
            if started is not None:
                _record("node_overhead_seconds", max(0.0, time.monotonic() - started - p["duration_s"]),
                        tool=_tool(task, p["node_id"]))
        elif e.type in (EventType.node_done, EventType.node_failed):
            tool = _tool(task, p["node_id"])
            started = _node_started.pop((task.id, p["node_id"]), None)
            _attempt_started.pop((task.id, p["node_id"]), None)
            _record("nodes_finished", 1, tool=tool, status="done" if e.type == EventType.node_done else "failed")
            if started is not None:
                _record("node_duration_seconds", time.monotonic() - started, tool=tool)
        elif e.type == EventType.node_retry:
            _attempt_started.pop((task.id, p["node_id"]), None)  # the next attempt starts anew
            _record("tool_retries", 1, tool=_tool(task, p["node_id"]))
        elif e.type == EventType.verdicts:
            kinds = {t.id: str(getattr(t.check_type, "value", t.check_type)) for t in task.acceptance_tests}
            for v in p.get("verdicts", []):
                _record("verdicts", 1, check=kinds.get(v.get("test_id"), "other"),
                        result="pass" if v.get("passed") else "fail")
        elif e.type == EventType.plan_corrected:
            _record("corrections", 1, tenant=task.tenant)


def _tool(task: Any, node_id: str) -> str:
    """The node's tool, `agent` for agent nodes; never free text from a model."""
    node = next((n for n in (task.plan.nodes if task.plan else []) if n.id == node_id), None)
    if node is None:
        return "unknown"
    return node.tool or "agent"


_background: set[asyncio.Task] = set()


def _spawn(coro: Any) -> None:
    try:
        job = asyncio.get_running_loop().create_task(coro)
    except RuntimeError:
        coro.close()
        return
    _background.add(job)  # keep a reference until it ends, or the loop may drop it
    job.add_done_callback(_background.discard)


@_safe
def tool_timeout(tool: str) -> None:
    _record("tool_timeouts", 1, tool=tool)


# -- tool pools, browser, models, ingestion ------------------------------------------------

@_safe
def tool_call(tool: str, ok: bool, duration_s: float) -> None:
    """`tool` must be a registered name (callers map unknown names to `unknown`)."""
    _record("tool_calls", 1, tool=tool, status="ok" if ok else "error")
    _record("tool_duration_seconds", duration_s, tool=tool)


@_safe
def browser_op(op: str, ok: bool) -> None:
    _record("browser_ops", 1, op=op, status="ok" if ok else "error")


@_safe
def browser_pool(sessions: int, new_launches: int) -> None:
    """A BrowserPool replica's sessions now, and Chromium starts since its last report."""
    _record("browser_sessions", sessions)
    _record("browser_launches", new_launches)


@_safe
def model_call(group: str, deployment: str, ok: bool, latency_s: float, *, tokens_in: int = 0,
               tokens_out: int = 0, cost_usd: float = 0.0) -> None:
    _record("model_calls", 1, group=group, deployment=deployment, status="ok" if ok else "error")
    _record("model_latency_seconds", latency_s, group=group, deployment=deployment)
    _record("model_tokens", tokens_in, group=group, deployment=deployment, direction="in")
    _record("model_tokens", tokens_out, group=group, deployment=deployment, direction="out")
    _record("model_cost_usd", cost_usd, group=group, deployment=deployment)


@_safe
def model_cooldowns(deployments: list[dict[str, Any]], cooling: Iterable[str]) -> None:
    """Per group: deployments configured and cooling down (all of them cooling = nothing answers)."""
    cooling = set(cooling)
    totals: dict[str, list[int]] = {}
    for d in deployments:
        t = totals.setdefault(d["group"], [0, 0])
        t[0] += 1
        t[1] += d["id"] in cooling
    for group, (total, cool) in totals.items():
        _record("model_deployments", total, group=group)
        _record("model_deployments_cooling_down", cool, group=group)


@_safe
def ingest_finished(tenant: str, files: Iterable[Any]) -> None:
    """One ingest run's file outcomes (stored, unchanged, duplicate, near_duplicate, failed)."""
    chunks = 0
    for f in files:
        _record("ingest_files", 1, tenant=tenant, status=f.status.value)
        chunks += f.chunks
    _record("ingest_chunks", chunks, tenant=tenant)

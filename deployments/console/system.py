"""What the System page shows besides health: the dispatch queue by tenant and priority, and
links to the Ray dashboard and Grafana where the operator configured them."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from datetime import timedelta
from typing import Any

from deployments.console.listing import age
from memory.store import DISPATCHED, PENDING, WAITING, EventStore
from troupe.models import Priority, utcnow

__all__ = ["ENV_GRAFANA_URL", "ENV_RAY_DASHBOARD_URL", "health_entry", "links", "models", "queue_by_tenant",
           "recent_errors"]

log = logging.getLogger(__name__)

ENV_RAY_DASHBOARD_URL = "TROUPE_RAY_DASHBOARD_URL"
ENV_GRAFANA_URL = "TROUPE_GRAFANA_URL"
_QUEUE_ROWS = 5000  # counted per state; a queue longer than this shows as "5000+"
_RUNNING_ROWS = 25  # the running tasks listed one by one; the rest are counted
_MODELS_TIMEOUT_S = 5.0  # the page must render even when the LLM router is stuck


async def queue_by_tenant(store: EventStore) -> dict[str, Any]:
    """Tasks queued, running and waiting, per tenant and priority, across every tenant, and the
    running tasks one by one."""
    counts: Counter[tuple[str, str, str]] = Counter()
    capped = False
    running = []
    for state in (PENDING, DISPATCHED, WAITING):
        rows = await store.by_dispatch_state(state, limit=_QUEUE_ROWS)
        capped = capped or len(rows) == _QUEUE_ROWS
        counts.update((r.tenant, r.priority.value, state) for r in rows)
        if state == DISPATCHED:
            running = rows
    keys = sorted({(t, p) for t, p, _ in counts}, key=lambda k: (k[0], Priority(k[1]).rank))
    now = utcnow()
    # The running tasks themselves, the oldest first.
    return {"capped": capped, "rows": [{"tenant": t, "priority": p, "queued": counts[t, p, PENDING],
                                        "running": counts[t, p, DISPATCHED], "waiting": counts[t, p, WAITING]}
                                       for t, p in keys],
            "running": [{"task_id": r.task_id, "tenant": r.tenant, "goal": r.goal, "status": r.status.value,
                         "priority": r.priority.value, "age": age(r.created_at, now)}
                        for r in sorted(running, key=lambda r: r.created_at)[:_RUNNING_ROWS]],
            "running_more": max(0, len(running) - _RUNNING_ROWS)}


async def recent_errors(store: EventStore, *, hours: int = 24, limit: int = 10) -> list[dict[str, Any]]:
    """The latest failed tasks of every tenant, with why each failed (from its log)."""
    since = utcnow() - timedelta(hours=hours)
    errors = []
    for row in await store.recently_failed(since, limit=limit):
        task = await store.load_task(row.task_id)
        errors.append({"task_id": row.task_id, "tenant": row.tenant, "goal": row.goal,
                       "reason": (task.reason if task else None) or "no reason recorded",
                       "at": row.updated_at.strftime("%Y-%m-%d %H:%M:%S")})
    return errors


async def models(llm: Any) -> dict[str, Any]:
    """The LLM router's model groups and deployments (no secrets): calls, failures, the last
    error and whether LiteLLM has each one cooling down; or why that is unknown."""
    if llm is None:
        return {"configured": False, "why": "This application has no LLM router deployment"}
    try:
        status = await asyncio.wait_for(llm.status.remote(), _MODELS_TIMEOUT_S)
    except Exception as exc:  # a stuck or failed router: the page says so instead of failing
        log.warning("System page: the LLM router's status is unavailable", exc_info=True)
        return {"configured": False, "why": f"The LLM router did not answer: {type(exc).__name__}"}
    if not status.get("configured"):
        return {"configured": False, "why": "No model groups are configured (the offline fallbacks run)"}
    return status


def links() -> list[dict[str, str]]:
    """The operator's consoles, from the environment; only http(s) URLs are linked."""
    found = []
    for label, var in (("Ray dashboard", ENV_RAY_DASHBOARD_URL), ("Grafana", ENV_GRAFANA_URL)):
        url = os.environ.get(var, "").strip()
        if url.startswith(("http://", "https://")):
            found.append({"label": label, "url": url})
    return found


def health_entry(name: str, value: Any) -> dict[str, Any]:
    """One part of the health report for the page: its `ok` and `status` as a badge, the
    rest as nested entries."""
    entry: dict[str, Any] = {"name": name.replace("_", " "), "ok": None, "status": None, "children": [],
                             "value": None, "replicas": None}
    if isinstance(value, dict):
        entry["ok"] = value.get("ok") if isinstance(value.get("ok"), bool) else None
        entry["status"] = str(value["status"]).lower() if isinstance(value.get("status"), str) else None
        entry["children"] = [health_entry(k, v) for k, v in value.items() if k not in ("ok", "status", "replicas")]
        if isinstance(value.get("replicas"), dict):  # a Serve deployment's replicas by state, in words
            n = sum(value["replicas"].values())
            entry["replicas"] = f"{n} replica{'' if n == 1 else 's'}" + (
                f": {', '.join(f'{k} {state}' for state, k in value['replicas'].items())}" if n else "")
    elif isinstance(value, list):
        entry["value"] = ", ".join(map(str, value)) or "none"
    else:
        entry["value"] = "—" if value is None else str(value)
    return entry

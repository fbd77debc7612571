"""Model usage, summed from what is already recorded: `llm.called` events (task calls, by the
task's tenant) and the `model_usage` table (calls through the OpenAI-compatible API).

Sums run in SQL (JSON fields of the event payload read with SQLAlchemy's JSON accessors, on
SQLite and PostgreSQL alike), so a long history costs one grouped scan, not a row per call."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from memory.access import model_usage
from memory.schema import events, tasks
from troupe.models import EventType

__all__ = ["GroupBy", "UsageRow", "usage"]

GroupBy = Literal["tenant", "model", "day"]


@dataclass
class UsageRow:
    key: str
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0

    def add(self, calls: Any, tokens_in: Any, tokens_out: Any, cost: Any) -> None:
        self.calls += int(calls or 0)
        self.tokens_in += int(tokens_in or 0)
        self.tokens_out += int(tokens_out or 0)
        self.cost_usd += float(cost or 0.0)


async def usage(engine: AsyncEngine, group_by: GroupBy, *, since: datetime, until: datetime,
                tenant: str | None = None) -> list[dict[str, Any]]:
    """Calls, tokens and USD per tenant, model group or UTC day, tasks and API together."""
    p = events.c.payload
    task_key = {"tenant": tasks.c.tenant, "model": p["group"].as_string(), "day": func.date(events.c.ts)}[group_by]
    task_q = (select(task_key, func.count(), func.sum(p["tokens_in"].as_integer()),
                     func.sum(p["tokens_out"].as_integer()), func.sum(p["cost_usd"].as_float()))
              .select_from(events.join(tasks, tasks.c.task_id == events.c.task_id))
              .where(events.c.type == EventType.llm_called.value, events.c.ts >= since, events.c.ts < until)
              .group_by(task_key))
    api_key = {"tenant": model_usage.c.tenant, "model": model_usage.c.model,
               "day": func.date(model_usage.c.ts)}[group_by]
    api_q = (select(api_key, func.count(), func.sum(model_usage.c.tokens_in), func.sum(model_usage.c.tokens_out),
                    func.sum(model_usage.c.cost_usd))
             .where(model_usage.c.ts >= since, model_usage.c.ts < until).group_by(api_key))
    if tenant is not None:
        task_q = task_q.where(tasks.c.tenant == tenant)
        api_q = api_q.where(model_usage.c.tenant == tenant)
    rows: dict[str, UsageRow] = {}
    async with engine.connect() as conn:
        for q in (task_q, api_q):
            for key, *sums in (await conn.execute(q)).all():
                key = str(key) if key is not None else "unknown"
                rows.setdefault(key, UsageRow(key)).add(*sums)
    return [{**asdict(r), "cost_usd": round(r.cost_usd, 6)} for r in sorted(rows.values(), key=lambda r: r.key)]

"""Long-term memory across tasks, per tenant (and project): each memory keeps where it was
said (task, and which part of it). Written by the Planner when it plans an iteration, read
back into the planning of later tasks; listed and deleted through /v1/memory."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError

from memory.schema import memories
from memory.store import EventStore, _utc
from troupe.models import utcnow

__all__ = ["MemoryRow", "MemoryStore"]


@dataclass(frozen=True)
class MemoryRow:
    memory_id: str
    tenant: str
    project: str | None
    kind: str
    text: str
    task_id: str | None
    source: str
    embedding: list[float] | None
    created_at: datetime

    def public(self) -> dict[str, Any]:
        return {"memory_id": self.memory_id, "kind": self.kind, "text": self.text, "project": self.project,
                "source": {"task_id": self.task_id, "where": self.source}, "created_at": self.created_at.isoformat()}


def _key(text: str) -> str:
    return hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()


def _row(r: Any) -> MemoryRow:
    return MemoryRow(r.memory_id, r.tenant, r.project, r.kind, r.text, r.task_id, r.source, r.embedding,
                     _utc(r.created_at))


class MemoryStore:
    def __init__(self, store: EventStore):
        self.store = store

    async def remember(self, tenant: str, kind: str, text: str, *, source: str, task_id: str | None = None,
                       project: str | None = None, embedding: list[float] | None = None) -> MemoryRow | None:
        """Keep `text` for the tenant; None when it is kept already (the same words, any case),
        so a replayed planning step or a repeated preference adds nothing."""
        values = {"memory_id": f"mem_{uuid.uuid4().hex[:16]}", "tenant": tenant, "project": project, "kind": kind,
                  "text": text, "text_key": _key(text), "task_id": task_id, "source": source,
                  "embedding": embedding, "created_at": utcnow()}
        try:
            async with self.store.writer.begin() as conn:
                await conn.execute(memories.insert().values(**values))
        except IntegrityError:
            return None
        return _row(type("R", (), values))

    async def list(self, tenant: str, *, project: str | None = None, every_project: bool = False,
                   limit: int = 500) -> list[MemoryRow]:
        """The tenant's memories, newest first: tenant-wide ones and, given a project, that
        project's (or, with every_project, all of them)."""
        q = select(memories).where(memories.c.tenant == tenant)
        if not every_project:
            scope = memories.c.project.is_(None)
            q = q.where(scope if project is None else or_(scope, memories.c.project == project))
        q = q.order_by(memories.c.created_at.desc(), memories.c.memory_id).limit(limit)
        async with self.store.reader.connect() as conn:
            return [_row(r) for r in await conn.execute(q)]

    async def forget(self, tenant: str, memory_id: str) -> bool:
        async with self.store.writer.begin() as conn:
            result = await conn.execute(delete(memories).where(memories.c.tenant == tenant,
                                                               memories.c.memory_id == memory_id))
        return result.rowcount > 0

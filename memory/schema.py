"""Tables of the event store. The Alembic migration in memory/migrations creates them."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# One row per task: the seq counter and lease epoch that make appends atomic and fenced,
# plus a projection of the log (status, dispatch state) that listing and the queue read.
tasks = Table(
    "tasks",
    metadata,
    Column("task_id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("goal", Text, nullable=False),
    Column("status", String(32), nullable=False),
    Column("priority_rank", Integer, nullable=False),
    Column("dispatch_state", String(16), nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True)),  # the driver's last sign of life (watchdog)
    Column("waiting_on", String(32)),  # what a waiting task waits for (side_effects, budget, model ...)
    # The reduced state at snapshot_seq (see EventStore.load_task): reads cost the events after it only.
    Column("snapshot", JSON),
    Column("snapshot_seq", BigInteger),
    Index("ix_tasks_tenant_created", "tenant", "created_at", "task_id"),
    Index("ix_tasks_queue", "dispatch_state", "priority_rank", "created_at"),
    Index("ix_tasks_tenant_queue", "dispatch_state", "tenant", "priority_rank", "created_at"),
)

# The append-only log, the source of truth: (task_id, seq) is dense and unique.
events = Table(
    "events",
    metadata,
    Column("task_id", String(64), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("ts", DateTime(timezone=True), nullable=False),
    Column("type", String(64), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("trace_id", String(32)),
)

# The idempotency ledger: one row per tool call key. The executing side claims a row
# (`running`) before it runs the call and records the outcome (`executed`) after; the
# runner's `tool.result` append marks it `recorded` in the same transaction. A recorded or
# executed outcome is returned instead of running again; a `running` row whose heartbeat
# stopped is a call in doubt.
tool_calls = Table(
    "tool_calls",
    metadata,
    Column("idempotency_key", String(255), primary_key=True),
    Column("task_id", String(64), nullable=False),
    Column("node_id", String(64), nullable=False),
    Column("tool", String(128), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("runs", Integer, nullable=False),
    Column("run_id", String(32)),
    Column("outcome", JSON),
    Column("result_seq", BigInteger),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_tool_calls_task", "task_id"),
)

# Procedural memory: a verified plan and its goal's embedding, reused for similar goals.
learned_templates = Table(
    "learned_templates",
    metadata,
    Column("template_id", String(96), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("goal", Text, nullable=False),
    Column("embedding", JSON, nullable=False),
    Column("body", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_learned_tenant", "tenant", "created_at"),
)

# Long-term memory (memory/memories.py): what a tenant told Troupe to keep across tasks,
# with where it was said; recalled into the planning of later tasks.
memories = Table(
    "memories",
    metadata,
    Column("memory_id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("project", String(128)),
    Column("kind", String(16), nullable=False),
    Column("text", Text, nullable=False),
    Column("text_key", String(64), nullable=False),
    Column("task_id", String(64)),
    Column("source", String(64), nullable=False),
    Column("embedding", JSON),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("tenant", "text_key", name="uq_memories_tenant_text"),
    Index("ix_memories_tenant", "tenant", "created_at"),
)

# Schedules (troupe/schedules.py): a task template fired at each slot of a cron or every_s rule.
schedules = Table(
    "schedules",
    metadata,
    Column("schedule_id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("name", String(128), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("paused", Boolean, nullable=False),
    Column("anchor", DateTime(timezone=True), nullable=False),  # every_s slots are anchor + k * every_s
    Column("next_at", DateTime(timezone=True), nullable=False),  # the first slot not yet decided
    Column("last_task_id", String(64)),
    Column("created_by", String(128)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("tenant", "name", name="uq_schedules_tenant_name"),
    Index("ix_schedules_due", "paused", "next_at"),
)

# One row per slot decided: its primary key is the claim, so a slot fires at most once across
# scheduler restarts and replicas; a `claimed` row not yet `fired` is submitted again with the
# same idempotency key, so it fires exactly once.
schedule_runs = Table(
    "schedule_runs",
    metadata,
    Column("schedule_id", String(64), primary_key=True),
    Column("slot_at", DateTime(timezone=True), primary_key=True),
    Column("state", String(16), nullable=False),  # claimed, fired, skipped
    Column("task_id", String(64)),
    Column("detail", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_schedule_runs_state", "state"),
)

# Webhooks out: a tenant's subscriptions to task events, and a durable outbox of deliveries
# (written in the same transaction as the status event that causes them).
webhooks = Table(
    "webhooks",
    metadata,
    Column("webhook_id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("url", Text, nullable=False),
    Column("events", JSON, nullable=False),
    Column("secret", String(128), nullable=False),  # needed to sign; shown once at creation
    Column("created_by", String(128)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_webhooks_tenant", "tenant"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("delivery_id", String(64), primary_key=True),
    Column("webhook_id", String(64), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("event", String(32), nullable=False),
    Column("task_id", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("payload", JSON, nullable=False),
    Column("state", String(16), nullable=False),  # pending, delivered, failed
    Column("attempts", Integer, nullable=False),
    Column("next_at", DateTime(timezone=True), nullable=False),
    Column("last_status", Integer),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_deliveries_due", "state", "next_at"),
    Index("ix_deliveries_webhook", "webhook_id", "created_at"),
)

# Webhooks in: a signed URL (POST /v1/hooks/{trigger_id}) that submits a task from a template.
triggers = Table(
    "triggers",
    metadata,
    Column("trigger_id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("name", String(128), nullable=False),
    Column("task", JSON, nullable=False),
    Column("secret", String(128), nullable=False),
    Column("created_by", String(128)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_triggers_tenant", "tenant"),
)

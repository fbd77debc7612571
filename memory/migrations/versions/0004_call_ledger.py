"""The idempotency ledger of tool calls, the driver's heartbeat, and a per-tenant queue index.

Revision ID: 0004_call_ledger
Revises: 0003_ingest_jobs
"""
import sqlalchemy as sa
from alembic import op

revision = "0004_call_ledger"
down_revision = "0003_ingest_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tool_calls",
        sa.Column("idempotency_key", sa.String(255), primary_key=True),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("tool", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("runs", sa.Integer, nullable=False),
        sa.Column("run_id", sa.String(32)),
        sa.Column("outcome", sa.JSON),
        sa.Column("result_seq", sa.BigInteger),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_tool_calls_task", "tool_calls", ["task_id"])
    op.add_column("tasks", sa.Column("heartbeat_at", sa.DateTime(timezone=True)))
    op.create_index("ix_tasks_tenant_queue", "tasks", ["dispatch_state", "tenant", "priority_rank", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_tenant_queue", "tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("heartbeat_at")
    op.drop_index("ix_tool_calls_task", "tool_calls")
    op.drop_table("tool_calls")

"""The event store: tasks (counter, lease, projection) and events (append-only log).

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("task_id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("goal", sa.Text, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("priority_rank", sa.Integer, nullable=False),
        sa.Column("dispatch_state", sa.String(16), nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_tasks_tenant_created", "tasks", ["tenant", "created_at", "task_id"])
    op.create_index("ix_tasks_queue", "tasks", ["dispatch_state", "priority_rank", "created_at"])
    op.create_table(
        "events",
        sa.Column("task_id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("trace_id", sa.String(32)),
    )


def downgrade() -> None:
    op.drop_table("events")
    op.drop_index("ix_tasks_queue", table_name="tasks")
    op.drop_index("ix_tasks_tenant_created", table_name="tasks")
    op.drop_table("tasks")

"""Schedules and the slots they fired (a slot's row is its claim: exactly once per slot).

Revision ID: 0009_schedules_webhooks
Revises: 0008_task_snapshots
"""
import sqlalchemy as sa
from alembic import op

revision = "0009_schedules_webhooks"
down_revision = "0008_task_snapshots"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("schedule_id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False),
        sa.Column("anchor", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_task_id", sa.String(64)),
        sa.Column("created_by", sa.String(128)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("tenant", "name", name="uq_schedules_tenant_name"),
    )
    op.create_index("ix_schedules_due", "schedules", ["paused", "next_at"])
    op.create_table(
        "schedule_runs",
        sa.Column("schedule_id", sa.String(64), primary_key=True),
        sa.Column("slot_at", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("task_id", sa.String(64)),
        sa.Column("detail", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_schedule_runs_state", "schedule_runs", ["state"])


def downgrade() -> None:
    op.drop_index("ix_schedule_runs_state", "schedule_runs")
    op.drop_table("schedule_runs")
    op.drop_index("ix_schedules_due", "schedules")
    op.drop_table("schedules")

"""Long-term memory: what a tenant asked Troupe to keep across tasks, with its provenance.

Revision ID: 0010_memories
Revises: 0009_schedules_webhooks
"""
import sqlalchemy as sa
from alembic import op

revision = "0010_memories"
down_revision = "0009_schedules_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "memories",
        sa.Column("memory_id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("project", sa.String(128)),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("text_key", sa.String(64), nullable=False),
        sa.Column("task_id", sa.String(64)),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("embedding", sa.JSON),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("tenant", "text_key", name="uq_memories_tenant_text"),
    )
    op.create_index("ix_memories_tenant", "memories", ["tenant", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_memories_tenant", "memories")
    op.drop_table("memories")

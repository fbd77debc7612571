"""Procedural memory: plans that passed verification, with their goal's embedding.

Revision ID: 0002_learned
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002_learned"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "learned_templates",
        sa.Column("template_id", sa.String(96), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("goal", sa.Text, nullable=False),
        sa.Column("embedding", sa.JSON, nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_learned_tenant", "learned_templates", ["tenant", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_learned_tenant", table_name="learned_templates")
    op.drop_table("learned_templates")

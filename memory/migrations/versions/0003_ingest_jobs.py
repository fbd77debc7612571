"""Ingestion jobs: what `POST /v1/collections/{name}/ingest` started, its progress and report.

Revision ID: 0003_ingest_jobs
Revises: 0002_learned
"""
import sqlalchemy as sa
from alembic import op

revision = "0003_ingest_jobs"
down_revision = "0002_learned"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ingest_jobs",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("collection", sa.String(128), nullable=False),
        sa.Column("scope", sa.JSON, nullable=False),
        sa.Column("sources", sa.JSON, nullable=False),
        sa.Column("source_root", sa.Text),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("progress", sa.JSON),
        sa.Column("report", sa.JSON),
        sa.Column("error", sa.Text),
        sa.Column("rev", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_ingest_jobs_status", "ingest_jobs", ["status", "created_at"])
    op.create_index("ix_ingest_jobs_tenant", "ingest_jobs", ["tenant", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_ingest_jobs_tenant", table_name="ingest_jobs")
    op.drop_index("ix_ingest_jobs_status", table_name="ingest_jobs")
    op.drop_table("ingest_jobs")

"""A snapshot of a task's reduced state on its row, so that reading a task (and starting a
drive) costs the same for a log of ten events as for one of a hundred thousand: the
snapshot, then the events after it.

Revision ID: 0008_task_snapshots
Revises: 0007_waiting_on
"""
import sqlalchemy as sa
from alembic import op

revision = "0008_task_snapshots"
down_revision = "0007_waiting_on"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("snapshot", sa.JSON))
        batch.add_column(sa.Column("snapshot_seq", sa.BigInteger))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("snapshot_seq")
        batch.drop_column("snapshot")

"""What a waiting task waits on, projected onto its row, so the Supervisor can find the
tasks waiting on a model without reading their logs.

Revision ID: 0007_waiting_on
Revises: 0006_console_sessions
"""
import sqlalchemy as sa
from alembic import op

revision = "0007_waiting_on"
down_revision = "0006_console_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("waiting_on", sa.String(32)))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("waiting_on")

"""Access control: API keys (hashes only), the audit log, model usage through the API.

Revision ID: 0005_access
Revises: 0004_call_ledger
"""
import sqlalchemy as sa
from alembic import op

revision = "0005_access"
down_revision = "0004_call_ledger"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_by", sa.String(32)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.Column("bootstrap", sa.Integer, unique=True),
    )
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant", "created_at"])
    op.create_table(
        "audit_log",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(32)),
        sa.Column("tenant", sa.String(128)),
        sa.Column("role", sa.String(16)),
        sa.Column("action", sa.String(200), nullable=False),
        sa.Column("target", sa.Text),
        sa.Column("outcome", sa.Integer, nullable=False),
        sa.Column("client", sa.String(64)),
        sa.Column("detail", sa.Text),
    )
    op.create_index("ix_audit_ts", "audit_log", ["ts"])
    op.create_index("ix_audit_tenant", "audit_log", ["tenant", "id"])
    op.create_table(
        "model_usage",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(32)),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("tokens_in", sa.Integer, nullable=False),
        sa.Column("tokens_out", sa.Integer, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
        sa.Column("streamed", sa.Boolean, nullable=False),
    )
    op.create_index("ix_model_usage_tenant", "model_usage", ["tenant", "ts"])


def downgrade() -> None:
    op.drop_table("model_usage")
    op.drop_table("audit_log")
    op.drop_table("api_keys")

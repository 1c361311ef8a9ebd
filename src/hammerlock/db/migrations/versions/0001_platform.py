"""Platform: API keys, idempotency records, the audit outbox.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", ID, primary_key=True),
        sa.Column("principal_id", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("expires_us", sa.BigInteger, nullable=True),
        sa.Column("revoked_us", sa.BigInteger, nullable=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.CheckConstraint(
            "role IN ('admin','operator','reviewer','auditor','seller','bidder','service')",
            name="role_known",
        ),
    )
    op.create_index("ix_api_keys_principal_id", "api_keys", ["principal_id"])

    op.create_table(
        "idempotency_keys",
        sa.Column("scope", ID, nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("lease_token", sa.String(32), nullable=True),
        sa.Column("lease_expires_us", sa.BigInteger, nullable=True),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("headers", sa.Text, nullable=True),
        sa.Column("body", sa.LargeBinary, nullable=True),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("expires_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("scope", "key", name="pk_idempotency_keys"),
        sa.CheckConstraint("state IN ('in_flight','complete')", name="state_known"),
    )
    op.create_index("ix_idempotency_keys_expires_us", "idempotency_keys", ["expires_us"])

    op.create_table(
        "audit_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("ts_us", sa.BigInteger, nullable=False),
        sa.Column("action", sa.String(128), nullable=False),
        sa.Column("event", sa.Text, nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("hammerlock migrations are forward-only (docs/adr/0002)")

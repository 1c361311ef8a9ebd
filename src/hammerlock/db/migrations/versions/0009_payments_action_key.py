"""Payments: ``payment_intents.action_key`` on databases migrated before it existed.

The column (the caller's key of the action in flight, so a retry resumes it: docs/payments.md)
was added to 0005 after 0005 had already shipped in a checkpoint. A database that ran that
earlier 0005 lacks it; this adds it there and does nothing where 0005 already made it
(migrations are forward-only: a shipped migration is never the place for a change).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("payment_intents")}
    if "action_key" not in columns:
        op.add_column("payment_intents", sa.Column("action_key", sa.String(320), nullable=True))


def downgrade() -> None:
    raise RuntimeError("hammerlock migrations are forward-only")

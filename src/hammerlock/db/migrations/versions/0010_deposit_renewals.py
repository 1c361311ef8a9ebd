"""Auctions: ``deposit_renewals``, a durable record of each renewal attempt of a deposit.

One row per attempt (per deposit row version), written before the new authorization is asked
for and moved along as the attempt goes (``open`` → ``declined`` | ``swapped`` → ``done``, or
``swapped`` → ``undone`` → ``done``, or ``open`` → ``done`` when the settling pass voids it).
The scheduler settles every ``open``, ``swapped`` or
``undone`` row, whichever process made it and whatever restarted since (ADR 0019).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deposit_renewals",
        sa.Column("deposit_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("old_intent", sa.String(64), nullable=False),
        sa.Column("payments_key", sa.String(255), nullable=False),
        sa.Column("intent_id", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("retry_at_us", sa.BigInteger, nullable=True),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_deposit_renewals_state", "deposit_renewals", ["state"])


def downgrade() -> None:
    raise RuntimeError("hammerlock migrations are forward-only")

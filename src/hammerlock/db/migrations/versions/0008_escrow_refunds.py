"""Escrow: cancel a paid order never shipped, refunds after release, re-resolution, chargebacks,
sellers' payout destinations (docs/escrow.md, ADR 0012).

- ``escrow_orders.paid_us``: when the order turned ``paid`` (the ship window runs from it;
  orders paid before this migration fall back to ``updated_us``);
- ``escrow_orders.paid_out`` / ``payout_amount``: what the gateway has paid out to the seller so
  far, and the amount of the payout under ``payout_key`` (a re-resolution may release more after
  a first payout: the next payout, under a new key, is the difference);
- ``escrow_orders.chargebacks`` / ``chargeback_covered``: what chargebacks took back, by payment
  intent (JSON), and how much of it a resolution paid back from escrow to
  ``platform:chargebacks:{CUR}``;
- ``party_payout_destinations``: a seller's payout destination at the gateway (an account id,
  at most 128 characters, never a card number), one row per seller, replaced when it changes
  (the audit log keeps the history).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("escrow_orders") as batch:
        batch.add_column(sa.Column("paid_us", sa.BigInteger, nullable=True))
        batch.add_column(
            sa.Column("paid_out", sa.BigInteger, nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(
            sa.Column("payout_amount", sa.BigInteger, nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(
            sa.Column("chargebacks", sa.Text, nullable=False, server_default=sa.text("'{}'"))
        )
        batch.add_column(
            sa.Column(
                "chargeback_covered", sa.BigInteger, nullable=False, server_default=sa.text("0")
            )
        )
    op.execute(
        "UPDATE escrow_orders SET paid_out = released_to_seller WHERE payout_status = 'paid'"
    )
    op.execute(
        "UPDATE escrow_orders SET payout_amount = released_to_seller WHERE payout_key IS NOT NULL"
    )

    op.create_table(
        "party_payout_destinations",
        sa.Column("seller_id", sa.String(64), primary_key=True),
        sa.Column("gateway_account", sa.String(128), nullable=False),
        sa.Column("updated_by_principal", sa.String(128), nullable=True),
        sa.Column("updated_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    raise RuntimeError("hammerlock migrations are forward-only")

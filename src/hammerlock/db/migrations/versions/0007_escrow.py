"""Escrow: orders after a lot closes, and each order's timeline.

An order is a state machine updated under its row lock (``SELECT … FOR UPDATE`` on PostgreSQL;
SQLite serializes writers already) and a ``version``; ``escrow_order_events`` is append-only (the
order's timeline). Its money lives on the ledger (``escrow:{order}`` and friends), never here.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BIG = sa.BigInteger


def upgrade() -> None:
    op.create_table(
        "escrow_orders",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("lot_id", sa.String(64), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("seller_id", sa.String(64), nullable=False),
        sa.Column("buyer_id", sa.String(64), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("hammer_price", BIG, nullable=False),
        sa.Column("buyer_premium_bps", sa.Integer, nullable=False),
        sa.Column("seller_commission_bps", sa.Integer, nullable=False),
        sa.Column("premium", BIG, nullable=False),
        sa.Column("commission", BIG, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("payment_window_s", BIG, nullable=False),
        sa.Column("inspection_period_s", BIG, nullable=False),
        sa.Column("pay_by_us", BIG, nullable=False),
        sa.Column("deposit_intent_id", sa.String(64), nullable=True),
        sa.Column("deposit_in_escrow", BIG, nullable=False),
        sa.Column("payment_intent_id", sa.String(64), nullable=True),
        sa.Column("gateway", sa.String(32), nullable=True),
        sa.Column("carrier", sa.String(16), nullable=True),
        sa.Column("tracking_number", sa.String(40), nullable=True),
        sa.Column("shipped_us", BIG, nullable=True),
        sa.Column("delivered_us", BIG, nullable=True),
        sa.Column("inspection_ends_us", BIG, nullable=True),
        sa.Column("dispute_reason", sa.String(1000), nullable=True),
        sa.Column("refunded_amount", BIG, nullable=False),
        sa.Column("refund_plan", sa.Text, nullable=False),
        sa.Column("refund_ids", sa.Text, nullable=False),
        sa.Column("refunds_outstanding", sa.Integer, nullable=False),
        sa.Column("released_to_seller", BIG, nullable=False),
        sa.Column("released_to_revenue", BIG, nullable=False),
        sa.Column("payout_status", sa.String(16), nullable=False),
        sa.Column("payout_key", sa.String(128), nullable=True),
        sa.Column("payout_id", sa.String(128), nullable=True),
        sa.Column("runner_up_bidder_id", sa.String(64), nullable=True),
        sa.Column("runner_up_amount", BIG, nullable=True),
        sa.Column("offer_status", sa.String(16), nullable=False),
        sa.Column("offer_expires_us", BIG, nullable=True),
        sa.Column("offer_order_id", sa.String(64), nullable=True),
        sa.Column("parent_order_id", sa.String(64), nullable=True),
        sa.Column("created_us", BIG, nullable=False),
        sa.Column("updated_us", BIG, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.UniqueConstraint("lot_id", "generation"),
        sa.CheckConstraint("hammer_price > 0", name="hammer_positive"),
        sa.CheckConstraint("premium >= 0 AND commission >= 0", name="fees_non_negative"),
        sa.CheckConstraint("commission <= hammer_price", name="commission_within_hammer"),
        sa.CheckConstraint(
            "refunded_amount >= 0 AND refunded_amount <= hammer_price + premium",
            name="refund_within_total",
        ),
    )
    op.create_index("ix_escrow_orders_status", "escrow_orders", ["status", "updated_us"])
    op.create_index("ix_escrow_orders_buyer", "escrow_orders", ["buyer_id"])
    op.create_index("ix_escrow_orders_seller", "escrow_orders", ["seller_id"])

    op.create_table(
        "escrow_order_events",
        sa.Column("order_id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("at_us", BIG, nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(128), nullable=True),
        sa.Column("details", sa.Text, nullable=False),
    )


def downgrade() -> None:
    raise RuntimeError("hammerlock migrations are forward-only")

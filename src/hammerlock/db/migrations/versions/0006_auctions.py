"""Auctions: parties (bidders, sellers) and their cards on file; lots, bids and bidder deposits.

A lot is a state machine updated under its row lock (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite
serializes writers already) and a ``version``; bids are append-only apart from an admin's
retraction, which marks the row and never deletes it. ``(lot_id, seq)`` is the strict, gap-free
per-lot sequence of accepted bids.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BIG = sa.BigInteger


def upgrade() -> None:
    op.create_table(
        "parties",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        sa.Column("created_by_principal", sa.String(128), nullable=True),
        sa.Column("created_us", BIG, nullable=False),
        sa.CheckConstraint("kind IN ('bidder', 'seller')", name="kind_known"),
    )

    op.create_table(
        "party_cards",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("bidder_id", sa.String(64), nullable=False),
        sa.Column("payment_method", sa.String(128), nullable=False),
        sa.Column("brand", sa.String(32), nullable=True),
        sa.Column("last4", sa.String(4), nullable=True),
        sa.Column("created_us", BIG, nullable=False),
        sa.UniqueConstraint("bidder_id", "payment_method"),
    )
    op.create_index("ix_party_cards_bidder_id", "party_cards", ["bidder_id", "created_us"])

    op.create_table(
        "lots",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("seller_id", sa.String(64), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("estimate", BIG, nullable=False),
        sa.Column("starting_price", BIG, nullable=False),
        sa.Column("reserve_price", BIG, nullable=False),
        sa.Column("buy_now_price", BIG, nullable=True),
        sa.Column("increments", sa.Text, nullable=False),
        sa.Column("starts_at_us", BIG, nullable=False),
        sa.Column("ends_at_us", BIG, nullable=False),
        sa.Column("latest_end_us", BIG, nullable=False),
        sa.Column("soft_close_s", sa.Integer, nullable=False),
        sa.Column("soft_close_cap_s", sa.Integer, nullable=False),
        sa.Column("buyer_premium_bps", sa.Integer, nullable=False),
        sa.Column("seller_commission_bps", sa.Integer, nullable=False),
        sa.Column("deposit_bps", sa.Integer, nullable=False),
        sa.Column("deposit_amount", BIG, nullable=False),
        sa.Column("payment_window_s", sa.Integer, nullable=False),
        sa.Column("inspection_period_s", sa.Integer, nullable=False),
        sa.Column("current_price", BIG, nullable=True),
        sa.Column("leading_bidder_id", sa.String(64), nullable=True),
        sa.Column("leading_max", BIG, nullable=True),
        sa.Column("runner_up_id", sa.String(64), nullable=True),
        sa.Column("runner_up_max", BIG, nullable=True),
        sa.Column("bid_count", sa.Integer, nullable=False),
        sa.Column("last_seq", BIG, nullable=False),
        sa.Column("extensions", sa.Integer, nullable=False),
        sa.Column("hammer_price", BIG, nullable=True),
        sa.Column("winner_id", sa.String(64), nullable=True),
        sa.Column("close_reason", sa.String(16), nullable=True),
        sa.Column("closed_us", BIG, nullable=True),
        sa.Column("deposits_released", sa.Boolean, nullable=False),
        sa.Column("created_by_principal", sa.String(128), nullable=True),
        sa.Column("created_us", BIG, nullable=False),
        sa.Column("updated_us", BIG, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.CheckConstraint("estimate >= 0", name="estimate_non_negative"),
        sa.CheckConstraint("starting_price > 0", name="starting_price_positive"),
        sa.CheckConstraint("reserve_price >= 0", name="reserve_non_negative"),
        sa.CheckConstraint("ends_at_us <= latest_end_us", name="ends_within_cap"),
    )
    op.create_index("ix_lots_status", "lots", ["status", "ends_at_us"])
    op.create_index("ix_lots_seller_id", "lots", ["seller_id"])

    op.create_table(
        "lot_bids",
        sa.Column("lot_id", sa.String(64), primary_key=True),
        sa.Column("seq", BIG, primary_key=True),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("bidder_id", sa.String(64), nullable=False),
        sa.Column("max_amount", BIG, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("price_after", BIG, nullable=False),
        sa.Column("leader_after", sa.String(64), nullable=False),
        sa.Column("placed_us", BIG, nullable=False),
        sa.Column("retracted_us", BIG, nullable=True),
        sa.Column("retracted_by", sa.String(128), nullable=True),
        sa.Column("retraction_reason", sa.String(500), nullable=True),
        sa.Column("created_by_key_id", sa.String(64), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.UniqueConstraint("id"),
        sa.UniqueConstraint("created_by_key_id", "idempotency_key"),
        sa.CheckConstraint("max_amount > 0", name="max_amount_positive"),
        sa.CheckConstraint("seq > 0", name="seq_positive"),
    )
    op.create_index("ix_lot_bids_bidder_id", "lot_bids", ["bidder_id", "lot_id"])

    op.create_table(
        "lot_deposits",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("lot_id", sa.String(64), nullable=False),
        sa.Column("bidder_id", sa.String(64), nullable=False),
        sa.Column("amount", BIG, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("account", sa.String(128), nullable=False),
        sa.Column("payment_intent", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_by_key_id", sa.String(64), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("created_us", BIG, nullable=False),
        sa.Column("updated_us", BIG, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.UniqueConstraint("created_by_key_id", "idempotency_key"),
        sa.CheckConstraint("amount > 0", name="amount_positive"),
    )
    op.create_index("ix_lot_deposits_lot_id", "lot_deposits", ["lot_id", "bidder_id"])
    op.create_index("ix_lot_deposits_status", "lot_deposits", ["status"])


def downgrade() -> None:
    raise RuntimeError("hammerlock migrations are forward-only")

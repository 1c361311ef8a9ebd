"""Payments: intents, refunds, inbound gateway events; risk reviews and their approvals.

Intents and refunds are state machines (updated under a ``version`` compare-and-set); their
history is the audit log and the ledger, both append-only. ``risk_review_approvals`` is
append-only (an approval is never withdrawn; a decision is a new state of the review).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BIG = sa.BigInteger


def upgrade() -> None:
    op.create_table(
        "payment_intents",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("amount", BIG, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("capture_method", sa.String(16), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("payment_method", sa.String(128), nullable=True),
        sa.Column("gateway", sa.String(32), nullable=False),
        sa.Column("destination_account", sa.String(128), nullable=False),
        sa.Column("customer", sa.String(128), nullable=True),
        sa.Column("description", sa.String(500), nullable=True),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("return_url", sa.String(2048), nullable=True),
        sa.Column("created_by_key_id", sa.String(64), nullable=True),
        sa.Column("created_by_principal", sa.String(128), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("action_key", sa.String(320), nullable=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("pending_op", sa.String(16), nullable=True),
        sa.Column("pending_key", sa.String(128), nullable=True),
        sa.Column("pending_amount", BIG, nullable=True),
        sa.Column("pending_since_us", BIG, nullable=True),
        sa.Column("authorize_key", sa.String(128), nullable=True),
        sa.Column("charge_id", sa.String(128), nullable=True),
        sa.Column("amount_capturable", BIG, nullable=False),
        sa.Column("amount_received", BIG, nullable=False),
        sa.Column("amount_refunded", BIG, nullable=False),
        sa.Column("last_error_code", sa.String(64), nullable=True),
        sa.Column("last_error_message", sa.String(500), nullable=True),
        sa.Column("last_decline_code", sa.String(64), nullable=True),
        sa.Column("next_action_url", sa.String(2048), nullable=True),
        sa.Column("card_brand", sa.String(32), nullable=True),
        sa.Column("card_last4", sa.String(4), nullable=True),
        sa.Column("card_fingerprint", sa.String(64), nullable=True),
        sa.Column("card_country", sa.String(2), nullable=True),
        sa.Column("authorization_expires_us", BIG, nullable=True),
        sa.Column("review_id", sa.String(64), nullable=True),
        sa.Column("canceled_reason", sa.String(64), nullable=True),
        sa.Column("created_us", BIG, nullable=False),
        sa.Column("updated_us", BIG, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.UniqueConstraint("created_by_key_id", "idempotency_key"),
        sa.CheckConstraint("amount > 0", name="amount_positive"),
        sa.CheckConstraint(
            "amount_received + amount_capturable <= amount", name="captured_within_amount"
        ),
        sa.CheckConstraint("amount_refunded <= amount_received", name="refunded_within_received"),
    )
    op.create_index("ix_payment_intents_status", "payment_intents", ["status", "updated_us"])
    op.create_index("ix_payment_intents_fingerprint", "payment_intents", ["card_fingerprint"])
    op.create_index("ix_payment_intents_customer", "payment_intents", ["customer"])

    op.create_table(
        "payment_refunds",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("payment_intent", sa.String(64), nullable=False),
        sa.Column("amount", BIG, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("refund_key", sa.String(128), nullable=False),
        sa.Column("source_account", sa.String(128), nullable=False),
        sa.Column("gateway_refund_id", sa.String(128), nullable=True),
        sa.Column("review_id", sa.String(64), nullable=True),
        sa.Column("failure_code", sa.String(64), nullable=True),
        sa.Column("created_by_key_id", sa.String(64), nullable=True),
        sa.Column("created_by_principal", sa.String(128), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("pending_since_us", BIG, nullable=True),
        sa.Column("created_us", BIG, nullable=False),
        sa.Column("updated_us", BIG, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.UniqueConstraint("created_by_key_id", "idempotency_key"),
        sa.UniqueConstraint("refund_key"),
        sa.CheckConstraint("amount > 0", name="amount_positive"),
    )
    op.create_index("ix_payment_refunds_intent", "payment_refunds", ["payment_intent"])
    op.create_index("ix_payment_refunds_status", "payment_refunds", ["status"])

    op.create_table(
        "payment_gateway_events",
        sa.Column("gateway", sa.String(32), primary_key=True),
        sa.Column("event_id", sa.String(128), primary_key=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("received_us", BIG, nullable=False),
    )

    op.create_table(
        "risk_reviews",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("payment_intent", sa.String(64), nullable=False),
        sa.Column("refund_id", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("approvals_required", sa.Integer, nullable=False),
        sa.Column("score", sa.Integer, nullable=False),
        sa.Column("reasons", sa.Text, nullable=False),
        sa.Column("expires_us", BIG, nullable=False),
        sa.Column("created_by_principal", sa.String(128), nullable=True),
        sa.Column("decided_by", sa.String(128), nullable=True),
        sa.Column("note", sa.String(1000), nullable=True),
        sa.Column("created_us", BIG, nullable=False),
        sa.Column("decided_us", BIG, nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.CheckConstraint("approvals_required BETWEEN 1 AND 2", name="approvals_required_range"),
    )
    op.create_index("ix_risk_reviews_status", "risk_reviews", ["status", "created_us"])
    op.create_table(
        "risk_review_approvals",
        sa.Column("review_id", sa.String(64), primary_key=True),
        sa.Column("reviewer_id", sa.String(128), primary_key=True),
        sa.Column("at_us", BIG, nullable=False),
    )


def downgrade() -> None:
    raise RuntimeError("hammerlock migrations are forward-only")

"""Outbound webhooks: the event outbox and every delivery attempt.

``webhook_events`` is written in the transaction of the change it announces (a transactional
outbox); its delivery columns (``status``, ``attempts``, ``next_attempt_us``, the claim) are the
only ones that change afterwards. ``webhook_attempts`` is append-only (triggers on both backends).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BIG = sa.BigInteger
SEQ = sa.BigInteger().with_variant(sa.Integer, "sqlite")
EVENT_ID = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "webhook_events",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", EVENT_ID, nullable=False, unique=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("created_us", BIG, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_us", BIG, nullable=False),
        sa.Column("claim_token", sa.String(32), nullable=True),
        sa.Column("finished_us", BIG, nullable=True),
        sa.CheckConstraint("status IN ('pending','delivered','failed')", name="status_known"),
        sa.CheckConstraint("attempts >= 0", name="attempts_non_negative"),
    )
    op.create_index(
        "ix_webhook_events_status_next_attempt_us",
        "webhook_events",
        ["status", "next_attempt_us"],
    )
    op.create_index("ix_webhook_events_type", "webhook_events", ["type", "seq"])

    op.create_table(
        "webhook_attempts",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("event_id", EVENT_ID, sa.ForeignKey("webhook_events.id"), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("ts_us", BIG, nullable=False),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("error", sa.String(200), nullable=True),
        sa.Column("duration_ms", sa.Integer, nullable=False),
        sa.UniqueConstraint("event_id", "attempt", name="uq_webhook_attempts_event_id_attempt"),
        sa.CheckConstraint("attempt >= 1 AND duration_ms >= 0", name="attempt_positive"),
    )
    _append_only("webhook_attempts")


def _append_only(table: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        # hammerlock_refuse_change() comes from migration 0002.
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION hammerlock_refuse_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION hammerlock_refuse_change()"
        )
        return
    for verb in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, 'hammerlock: {verb} on {table} is not allowed "
            "(append-only)'); END"
        )


def downgrade() -> None:
    raise NotImplementedError("hammerlock migrations are forward-only (docs/adr/0002)")

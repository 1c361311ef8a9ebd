"""The audit outbox table (name fixed: operators point their tools at it)."""

from __future__ import annotations

import sqlalchemy as sa

from hammerlock.db.metadata import metadata

__all__ = ["audit_outbox"]

audit_outbox = sa.Table(
    "audit_outbox",
    metadata,
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

"""The audit outbox table (name fixed: operators point their tools at it)."""

from __future__ import annotations

import sqlalchemy as sa

from hammerlock.db.metadata import metadata

__all__ = [
    "audit_log",
    "audit_outbox",
    "audit_signing_keys",
    "audit_state",
    "audit_tree_heads",
    "audit_tree_tiles",
]

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

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),
    sa.Column("ts_us", sa.BigInteger, nullable=False),
    sa.Column("action", sa.String(128), nullable=False),
    sa.Column("actor_id", sa.String(128), nullable=True),
    sa.Column("resource_type", sa.String(64), nullable=True),
    sa.Column("resource_id", sa.String(256), nullable=True),
    sa.Column("canonical", sa.Text, nullable=False),
    sa.Column("leaf_hash", sa.String(64), nullable=False),
)

audit_tree_heads = sa.Table(
    "audit_tree_heads",
    metadata,
    sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("root_hash", sa.String(64), nullable=False),
    sa.Column("timestamp", sa.String(40), nullable=False),
    sa.Column("ts_us", sa.BigInteger, nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("signature", sa.String(128), nullable=False),
)

audit_tree_tiles = sa.Table(
    "audit_tree_tiles",
    metadata,
    sa.Column("level", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

audit_signing_keys = sa.Table(
    "audit_signing_keys",
    metadata,
    sa.Column("key_id", sa.String(64), primary_key=True),
    sa.Column("algorithm", sa.String(16), nullable=False),
    sa.Column("public_key", sa.String(64), nullable=False),
    sa.Column("created_us", sa.BigInteger, nullable=False),
)

audit_state = sa.Table(
    "audit_state",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=True),
    sa.Column("lease_expires_us", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("position", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("frontier", sa.Text, nullable=False, server_default="[]"),
    sa.Column("last_head_us", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("updated_us", sa.BigInteger, nullable=False, server_default="0"),
)

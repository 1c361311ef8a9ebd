"""Audit: the sequenced Merkle log, signed tree heads, tiles for proofs, subsystem state.

``audit_log``, ``audit_tree_heads`` and ``audit_tree_tiles`` are append-only (triggers on both
backends). ``audit_state`` holds leases and positions (the sequencer's frontier, relay cursors)
and is the only mutable table here.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BIG = sa.BigInteger
HEX = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("seq", BIG, primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("ts_us", BIG, nullable=False),
        sa.Column("action", sa.String(128), nullable=False),
        sa.Column("actor_id", sa.String(128), nullable=True),
        sa.Column("resource_type", sa.String(64), nullable=True),
        sa.Column("resource_id", sa.String(256), nullable=True),
        sa.Column("canonical", sa.Text, nullable=False),
        sa.Column("leaf_hash", HEX, nullable=False),
        sa.CheckConstraint("seq >= 0", name="seq_non_negative"),
    )
    op.create_index("ix_audit_log_ts_us", "audit_log", ["ts_us"])
    op.create_index("ix_audit_log_action", "audit_log", ["action", "seq"])
    op.create_index("ix_audit_log_actor", "audit_log", ["actor_id", "seq"])
    op.create_index("ix_audit_log_resource", "audit_log", ["resource_type", "resource_id", "seq"])

    op.create_table(
        "audit_tree_heads",
        sa.Column("size", BIG, primary_key=True, autoincrement=False),
        sa.Column("root_hash", HEX, nullable=False),
        sa.Column("timestamp", sa.String(40), nullable=False),
        sa.Column("ts_us", BIG, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
    )

    op.create_table(
        "audit_tree_tiles",
        sa.Column("level", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("idx", BIG, primary_key=True, autoincrement=False),
        sa.Column("hash", HEX, nullable=False),
    )

    op.create_table(
        "audit_signing_keys",
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("created_us", BIG, nullable=False),
    )

    op.create_table(
        "audit_state",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("lease_expires_us", BIG, nullable=False, server_default="0"),
        sa.Column("position", BIG, nullable=False, server_default="0"),
        sa.Column("frontier", sa.Text, nullable=False, server_default="[]"),
        sa.Column("last_head_us", BIG, nullable=False, server_default="0"),
        sa.Column("updated_us", BIG, nullable=False, server_default="0"),
    )
    op.execute("INSERT INTO audit_state (name) VALUES ('sequencer')")
    for table in ("audit_log", "audit_tree_heads", "audit_tree_tiles", "audit_signing_keys"):
        _append_only(table)


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

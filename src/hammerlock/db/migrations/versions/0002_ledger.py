"""Ledger: accounts with their four balances, immutable transfers, holds.

Invariants the database itself enforces (docs/invariants.md): amounts > 0, balances >= 0, limit
flags (pending included) on every account row, one transfer per id, one resolution per hold,
and no UPDATE or DELETE of a transfer row (triggers on both backends).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BIG = sa.BigInteger
ACCOUNT_ID = sa.String(128)
SEQ = sa.BigInteger().with_variant(sa.Integer, "sqlite")

# Account flag bits (hammerlock.ledger.model.AccountFlag).
_DEBITS_LIMITED = 1
_CREDITS_LIMITED = 2


def _balances(prefix: str = "") -> list[sa.Column[int]]:
    names = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")
    return [sa.Column(f"{prefix}{n}", BIG, nullable=False, server_default="0") for n in names]


def upgrade() -> None:
    op.create_table(
        "ledger_accounts",
        sa.Column("id", ACCOUNT_ID, primary_key=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("flags", sa.Integer, nullable=False),
        sa.Column("metadata", sa.Text, nullable=False),
        *_balances(),
        sa.Column("created_us", BIG, nullable=False),
        sa.CheckConstraint(
            "debits_pending >= 0 AND debits_posted >= 0 AND credits_pending >= 0 "
            "AND credits_posted >= 0",
            name="balances_non_negative",
        ),
        sa.CheckConstraint(
            f"(flags & {_DEBITS_LIMITED}) = 0 OR debits_pending + debits_posted <= credits_posted",
            name="debits_within_credits",
        ),
        sa.CheckConstraint(
            f"(flags & {_CREDITS_LIMITED}) = 0 "
            "OR credits_pending + credits_posted <= debits_posted",
            name="credits_within_debits",
        ),
    )

    op.create_table(
        "ledger_transfers",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", ACCOUNT_ID, nullable=False),
        sa.Column(
            "debit_account_id", ACCOUNT_ID, sa.ForeignKey("ledger_accounts.id"), nullable=False
        ),
        sa.Column(
            "credit_account_id", ACCOUNT_ID, sa.ForeignKey("ledger_accounts.id"), nullable=False
        ),
        sa.Column("amount", BIG, nullable=False),
        sa.Column("requested_amount", BIG, nullable=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("code", sa.String(32), nullable=False),
        sa.Column("requested_code", sa.String(32), nullable=True),
        sa.Column("flags", sa.Integer, nullable=False),
        sa.Column("pending_id", ACCOUNT_ID, nullable=True),
        sa.Column("timeout_s", sa.Integer, nullable=False),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("timestamp_us", BIG, nullable=False),
        sa.Column("expires_us", BIG, nullable=True),
        *_balances("dr_"),
        *_balances("cr_"),
        sa.CheckConstraint("amount > 0", name="amount_positive"),
        sa.CheckConstraint("debit_account_id <> credit_account_id", name="accounts_differ"),
        sa.UniqueConstraint("id", name="uq_ledger_transfers_id"),
        sa.UniqueConstraint("pending_id", name="uq_ledger_transfers_pending_id"),
    )
    op.create_index("ix_ledger_transfers_debit", "ledger_transfers", ["debit_account_id", "seq"])
    op.create_index("ix_ledger_transfers_credit", "ledger_transfers", ["credit_account_id", "seq"])

    op.create_table(
        "ledger_holds",
        sa.Column(
            "transfer_id", ACCOUNT_ID, sa.ForeignKey("ledger_transfers.id"), primary_key=True
        ),
        sa.Column("debit_account_id", ACCOUNT_ID, nullable=False),
        sa.Column("credit_account_id", ACCOUNT_ID, nullable=False),
        sa.Column("amount", BIG, nullable=False),
        sa.Column("expires_us", BIG, nullable=True),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("resolved_us", BIG, nullable=True),
        sa.CheckConstraint("amount > 0", name="amount_positive"),
        sa.CheckConstraint("state IN ('pending','posted','voided','expired')", name="state_known"),
    )
    pending_only = sa.text("state = 'pending'")
    op.create_index(
        "ix_ledger_holds_due",
        "ledger_holds",
        ["expires_us"],
        postgresql_where=pending_only,
        sqlite_where=pending_only,
    )
    op.create_index(
        "ix_ledger_holds_debit_due",
        "ledger_holds",
        ["debit_account_id", "expires_us"],
        postgresql_where=pending_only,
        sqlite_where=pending_only,
    )
    op.create_index(
        "ix_ledger_holds_credit_due",
        "ledger_holds",
        ["credit_account_id", "expires_us"],
        postgresql_where=pending_only,
        sqlite_where=pending_only,
    )
    _immutable("ledger_transfers")


def _immutable(table: str) -> None:
    """No UPDATE and no DELETE, ever: corrections are new rows."""
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(
            """
            CREATE OR REPLACE FUNCTION hammerlock_refuse_change() RETURNS trigger AS $$
            BEGIN
              RAISE EXCEPTION 'hammerlock: % on % is not allowed (append-only)',
                TG_OP, TG_TABLE_NAME USING ERRCODE = 'raise_exception';
            END $$ LANGUAGE plpgsql
            """
        )
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION hammerlock_refuse_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION hammerlock_refuse_change()"
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'hammerlock: {verb} on {table} is not allowed "
                "(append-only)'); END"
            )


def downgrade() -> None:
    raise NotImplementedError("hammerlock migrations are forward-only (docs/adr/0002)")

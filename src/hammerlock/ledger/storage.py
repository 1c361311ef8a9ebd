"""Ledger tables and queries. Only ``ledger.service`` imports this module.

Locking (PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already serialises writers), one order
everywhere (ADR 0016): accounts with a limit, for writing, in id order, when a batch reads them
→ the rows of the holds it resolves → unconstrained accounts, for writing, in id order, at commit
(they are only share-locked before; a balancing transfer's unconstrained side is locked at this
place in the order too, when read). So two batches never deadlock on each other, and every
conflicting change (a limit check, two resolutions of one hold, a close) is serialised. What the
locks cannot serialise — the same transfer id sent twice at once, on other accounts or on
unconstrained ones — the unique index catches at commit, and the group-commit writer retries
the batch (domain services send a transfer id only under their own row lock: an intent's, an
order's).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import RowMapping

from hammerlock.db.metadata import metadata
from hammerlock.db.rows import carrying
from hammerlock.db.uow import UnitOfWork
from hammerlock.ledger.model import (
    AccountFlag,
    AccountInput,
    AccountState,
    Balances,
    Hold,
    HoldState,
    Snapshot,
    TransferFlag,
    TransferRecord,
)

__all__ = [
    "Lock",
    "accounts",
    "holds",
    "transfers",
]

BIG = sa.BigInteger
ID = sa.String(128)
_BALANCE_NAMES = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")
_CHUNK = 1_000


def _balance_columns(prefix: str = "") -> list[sa.Column[Any]]:
    return [
        sa.Column(f"{prefix}{n}", BIG, nullable=False, server_default="0") for n in _BALANCE_NAMES
    ]


accounts = sa.Table(
    "ledger_accounts",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("code", sa.String(32), nullable=False),
    sa.Column("flags", sa.Integer, nullable=False),
    sa.Column("metadata", sa.Text, nullable=False),
    *_balance_columns(),
    sa.Column("created_us", BIG, nullable=False),
)

transfers = sa.Table(
    "ledger_transfers",
    metadata,
    sa.Column(
        "seq", BIG().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    sa.Column("id", ID, nullable=False, unique=True),
    sa.Column("debit_account_id", ID, sa.ForeignKey("ledger_accounts.id"), nullable=False),
    sa.Column("credit_account_id", ID, sa.ForeignKey("ledger_accounts.id"), nullable=False),
    sa.Column("amount", BIG, nullable=False),
    sa.Column("requested_amount", BIG, nullable=True),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("code", sa.String(32), nullable=False),
    sa.Column("requested_code", sa.String(32), nullable=True),
    sa.Column("flags", sa.Integer, nullable=False),
    sa.Column("pending_id", ID, nullable=True, unique=True),
    sa.Column("timeout_s", sa.Integer, nullable=False),
    sa.Column("metadata", sa.Text, nullable=False),
    sa.Column("timestamp_us", BIG, nullable=False),
    sa.Column("expires_us", BIG, nullable=True),
    *_balance_columns("dr_"),
    *_balance_columns("cr_"),
)

holds = sa.Table(
    "ledger_holds",
    metadata,
    sa.Column("transfer_id", ID, sa.ForeignKey("ledger_transfers.id"), primary_key=True),
    sa.Column("debit_account_id", ID, nullable=False),
    sa.Column("credit_account_id", ID, nullable=False),
    sa.Column("amount", BIG, nullable=False),
    sa.Column("expires_us", BIG, nullable=True),
    sa.Column("state", sa.String(8), nullable=False),
    sa.Column("resolved_us", BIG, nullable=True),
)


# The transfers that post or void a hold, joined to the hold's own (pending) transfer.
_resolutions = transfers.alias("resolution")


def _chunks(values: Iterable[str]) -> Iterable[list[str]]:
    items = sorted(set(values))
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _balances(row: RowMapping, prefix: str = "") -> Balances:
    return Balances(*(row[prefix + n] for n in _BALANCE_NAMES))


def account_from_row(row: RowMapping) -> AccountState:
    return AccountState(
        id=row["id"],
        currency=row["currency"],
        code=row["code"],
        flags=AccountFlag(row["flags"]),
        metadata=row["metadata"],
        balances=_balances(row),
    )


def transfer_from_row(row: RowMapping) -> TransferRecord:
    return TransferRecord(
        id=row["id"],
        debit_account_id=row["debit_account_id"],
        credit_account_id=row["credit_account_id"],
        amount=row["amount"],
        requested_amount=row["requested_amount"],
        currency=row["currency"],
        code=row["code"],
        requested_code=row["requested_code"],
        flags=TransferFlag(row["flags"]),
        pending_id=row["pending_id"],
        timeout_s=row["timeout_s"],
        metadata=row["metadata"],
        timestamp_us=row["timestamp_us"],
        expires_us=row["expires_us"],
        debit_after=_balances(row, "dr_"),
        credit_after=_balances(row, "cr_"),
    )


def _hold(row: RowMapping) -> Hold:
    return Hold(
        transfer_id=row["transfer_id"],
        debit_account_id=row["debit_account_id"],
        credit_account_id=row["credit_account_id"],
        amount=row["amount"],
        expires_us=row["expires_us"],
        state=HoldState(row["state"]),
        resolved_us=row["resolved_us"],
    )


# --- reads --------------------------------------------------------------------------------


class Lock(enum.Enum):
    """Row-lock strength for reading accounts (PostgreSQL; SQLite serialises writers anyway).

    - ``SHARE``: FOR KEY SHARE — the account cannot be closed (``UPDATE``) meanwhile, but other
      transactions may still move its balances: how unconstrained accounts are read.
    - ``WRITE``: FOR NO KEY UPDATE — exclusive among writers of the balances, still compatible
      with ``SHARE`` readers: accounts with a limit, and every account at write time.
    - ``CLOSE``: FOR UPDATE — waits for every transaction holding the account in any mode.
    """

    SHARE = "share"
    WRITE = "write"
    CLOSE = "close"


# The reads below are built once (a statement built per call costs a cache key derived from its
# values on every call); their id lists are expanding parameters.
_IDS = "ids"


@functools.cache
def _lock_accounts(strength: Lock | None) -> sa.Select[Any]:
    """``strength``: the lock (PostgreSQL), None for none."""
    query = (
        sa.select(accounts)
        .where(accounts.c.id.in_(sa.bindparam(_IDS, expanding=True)))
        .order_by(accounts.c.id)
    )
    if strength is not None:
        query = query.with_for_update(
            read=strength is Lock.SHARE, key_share=strength is not Lock.CLOSE
        )
    return query


async def lock_accounts(
    uow: UnitOfWork, ids: Iterable[str], strength: Lock | None = Lock.WRITE
) -> dict[str, AccountState]:
    """Read (and on PostgreSQL lock, in id order) the accounts that exist among ``ids``;
    ``strength=None`` reads them without a lock."""
    found: dict[str, AccountState] = {}
    query = _lock_accounts(strength if uow.is_postgres else None)
    for chunk in _chunks(ids):
        for row in (await uow.conn.execute(query, {_IDS: chunk})).mappings():
            found[row["id"]] = account_from_row(row)
    return found


_FETCH_TRANSFERS = sa.select(transfers).where(
    transfers.c.id.in_(sa.bindparam(_IDS, expanding=True))
)


async def fetch_transfers(uow: UnitOfWork, ids: Iterable[str]) -> dict[str, TransferRecord]:
    found: dict[str, TransferRecord] = {}
    for chunk in _chunks(ids):
        rows = await uow.conn.execute(_FETCH_TRANSFERS, {_IDS: chunk})
        for row in rows.mappings():
            found[row["id"]] = transfer_from_row(row)
    return found


@functools.cache
def _fetch_holds(locked: bool) -> sa.Select[Any]:
    query = sa.select(holds).where(holds.c.transfer_id.in_(sa.bindparam(_IDS, expanding=True)))
    if locked:
        query = query.order_by(holds.c.transfer_id).with_for_update()
    return query


async def fetch_holds(
    uow: UnitOfWork, transfer_ids: Iterable[str], *, lock: bool = False
) -> dict[str, Hold]:
    """The holds of ``transfer_ids``; with ``lock``, their rows locked (PostgreSQL) in id
    order, so two transactions resolving one hold take turns even when no account lock
    orders them (a hold between two unconstrained accounts)."""
    found: dict[str, Hold] = {}
    query = _fetch_holds(lock and uow.is_postgres)
    for chunk in _chunks(transfer_ids):
        rows = await uow.conn.execute(query, {_IDS: chunk})
        for row in rows.mappings():
            found[row["transfer_id"]] = _hold(row)
    return found


_DUE_HOLDS_TOUCHING = sa.select(holds).where(
    holds.c.state == HoldState.PENDING.value,
    holds.c.expires_us <= sa.bindparam("now_us", type_=BIG),
    sa.or_(
        holds.c.debit_account_id.in_(sa.bindparam(_IDS, expanding=True)),
        holds.c.credit_account_id.in_(sa.bindparam(_IDS, expanding=True)),
    ),
)


async def due_holds_touching(
    uow: UnitOfWork, account_ids: Iterable[str], now_us: int
) -> dict[str, Hold]:
    found: dict[str, Hold] = {}
    for chunk in _chunks(account_ids):
        rows = await uow.conn.execute(_DUE_HOLDS_TOUCHING, {_IDS: chunk, "now_us": now_us})
        for row in rows.mappings():
            found[row["transfer_id"]] = _hold(row)
    return found


async def due_holds(uow: UnitOfWork, now_us: int, limit: int) -> list[Hold]:
    rows = await uow.conn.execute(
        sa.select(holds)
        .where(holds.c.state == HoldState.PENDING.value, holds.c.expires_us <= now_us)
        .order_by(holds.c.expires_us, holds.c.transfer_id)
        .limit(limit)
    )
    return [_hold(r) for r in rows.mappings()]


async def get_account(uow: UnitOfWork, account_id: str) -> AccountState | None:
    row = (
        (await uow.conn.execute(sa.select(accounts).where(accounts.c.id == account_id)))
        .mappings()
        .first()
    )
    return None if row is None else account_from_row(row)


async def get_transfer(uow: UnitOfWork, transfer_id: str) -> TransferRecord | None:
    row = (
        (await uow.conn.execute(sa.select(transfers).where(transfers.c.id == transfer_id)))
        .mappings()
        .first()
    )
    return None if row is None else transfer_from_row(row)


async def statement(
    uow: UnitOfWork, account_id: str, *, after_seq: int, limit: int
) -> list[tuple[int, TransferRecord]]:
    query = (
        sa.select(transfers)
        .where(
            sa.or_(
                transfers.c.debit_account_id == account_id,
                transfers.c.credit_account_id == account_id,
            ),
            transfers.c.seq > after_seq,
        )
        .order_by(transfers.c.seq)
        .limit(limit)
    )
    return [(r["seq"], transfer_from_row(r)) for r in (await uow.conn.execute(query)).mappings()]


async def sum_debited(uow: UnitOfWork, account_id: str, *, code: str, id_prefix: str) -> int:
    """Σ amount of the transfers out of ``account_id`` with ``code`` whose id starts with
    ``id_prefix`` (read through the debit index: bounded by that account's transfers)."""
    t = transfers
    total = (
        await uow.conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(t.c.amount), 0)).where(
                t.c.debit_account_id == account_id,
                t.c.code == code,
                t.c.id.startswith(id_prefix, autoescape=True),
            )
        )
    ).scalar_one()
    return int(total)


# --- writes -------------------------------------------------------------------------------


async def insert_accounts(uow: UnitOfWork, new: Sequence[AccountInput], now_us: int) -> set[str]:
    """Insert the accounts whose ids are free; returns the ids inserted. An id a concurrent
    transaction took first (after our read found it free) is skipped, not an error."""
    if not new:
        return set()
    insert = pg_insert(accounts) if uow.is_postgres else sqlite_insert(accounts)
    rows = await uow.conn.execute(
        insert.on_conflict_do_nothing(index_elements=[accounts.c.id]).returning(accounts.c.id),
        [
            {
                "id": a.id,
                "currency": a.currency,
                "code": a.code,
                "flags": int(a.flags),
                "metadata": a.metadata,
                "created_us": now_us,
            }
            for a in new
        ],
    )
    return set(rows.scalars())


async def set_account_flags(uow: UnitOfWork, account_id: str, flags: AccountFlag) -> None:
    await uow.conn.execute(
        accounts.update().where(accounts.c.id == account_id).values(flags=int(flags))
    )


def _balance_values(prefix: str, b: Balances) -> dict[str, int]:
    return {
        f"{prefix}debits_pending": b.debits_pending,
        f"{prefix}debits_posted": b.debits_posted,
        f"{prefix}credits_pending": b.credits_pending,
        f"{prefix}credits_posted": b.credits_posted,
    }


async def write_changes(
    uow: UnitOfWork,
    snapshot: Snapshot,
    before: dict[str, Balances],
    *,
    along: tuple[sa.Insert, dict[str, Any]] | None = None,
) -> bool:
    """Persist a snapshot's accepted changes: transfers, holds, one UPDATE per account.

    ``along``: another INSERT for the same transaction (the request's audit event) and its
    parameters (none named like a transfer column). On PostgreSQL, when the batch inserts one
    transfer (a request's usual shape), that INSERT carries it, the new hold and the balance
    UPDATEs as data-modifying CTEs, which PostgreSQL always runs to completion: one round trip
    for all (`_write_one`). Returns whether ``along`` ran; if not, the caller runs it.
    """
    if uow.is_postgres and len(snapshot.new_transfers) == 1 and len(snapshot.new_holds) <= 1:
        await _write_one(uow, snapshot, before, along)
        await _update_holds(uow, snapshot)
        return along is not None
    if snapshot.new_transfers:
        rows = [_transfer_row(t) for t in snapshot.new_transfers]
        await uow.conn.execute(transfers.insert(), rows)
    if snapshot.new_holds:
        await uow.conn.execute(holds.insert(), [_hold_row(h) for h in snapshot.new_holds.values()])
    await _update_holds(uow, snapshot)
    await _update_balances(uow, snapshot, before)
    return False


def _transfer_row(t: TransferRecord) -> dict[str, Any]:
    return {
        "id": t.id,
        "debit_account_id": t.debit_account_id,
        "credit_account_id": t.credit_account_id,
        "amount": t.amount,
        "requested_amount": t.requested_amount,
        "currency": t.currency,
        "code": t.code,
        "requested_code": t.requested_code,
        "flags": int(t.flags),
        "pending_id": t.pending_id,
        "timeout_s": t.timeout_s,
        "metadata": t.metadata,
        "timestamp_us": t.timestamp_us,
        "expires_us": t.expires_us,
        **_balance_values("dr_", t.debit_after),
        **_balance_values("cr_", t.credit_after),
    }


def _hold_row(h: Hold) -> dict[str, Any]:
    return {
        "transfer_id": h.transfer_id,
        "debit_account_id": h.debit_account_id,
        "credit_account_id": h.credit_account_id,
        "amount": h.amount,
        "expires_us": h.expires_us,
        "state": h.state.value,
        "resolved_us": h.resolved_us,
    }


# A batch of one transfer (a domain's post: an authorization, a capture, a payout), on
# PostgreSQL: its transfer INSERT carries, as data-modifying CTEs, the request's audit event,
# its new hold and each account's balance UPDATE — one round trip instead of up to four. Every
# account it updates is already locked by this transaction (limited ones when read, the others
# by `flush`), so the statement takes no row lock of its own but the foreign keys' share locks.
_HOLD_INSERT = holds.insert().values(
    {c.name: sa.bindparam(f"hold_{c.name}", type_=c.type) for c in holds.columns}
)


@functools.cache
def _balance_update(n: int) -> sa.Update:
    """The balance UPDATE of one account, its parameters named ``b{n}_…``."""
    c = accounts.c
    return (
        accounts.update()
        .where(c.id == sa.bindparam(f"b{n}_id", type_=ID))
        .values(
            debits_pending=c.debits_pending + sa.bindparam(f"b{n}_dp", type_=BIG),
            debits_posted=c.debits_posted + sa.bindparam(f"b{n}_dpo", type_=BIG),
            credits_pending=c.credits_pending + sa.bindparam(f"b{n}_cp", type_=BIG),
            credits_posted=c.credits_posted + sa.bindparam(f"b{n}_cpo", type_=BIG),
        )
    )


@functools.cache
def _insert_one(columns: tuple[str, ...], along: tuple[Any, ...]) -> sa.Insert:
    """One transfer's INSERT with ``along`` as data-modifying CTEs, built once per shape."""
    values: dict[str, Any] = {name: sa.bindparam(f"transfer_{name}") for name in columns}
    statement: sa.Insert = carrying(transfers.insert().values(values), along)
    return statement


async def _write_one(
    uow: UnitOfWork,
    snapshot: Snapshot,
    before: dict[str, Balances],
    along: tuple[sa.Insert, dict[str, Any]] | None,
) -> None:
    [t] = snapshot.new_transfers
    row = _transfer_row(t)
    params: dict[str, Any] = {f"transfer_{k}": v for k, v in row.items()}
    ctes: list[Any] = []
    if along is not None:
        ctes.append(along[0])
        params.update(along[1])
    for h in snapshot.new_holds.values():
        ctes.append(_HOLD_INSERT)
        params.update({f"hold_{k}": v for k, v in _hold_row(h).items()})
    for n, delta in enumerate(_balance_deltas(snapshot, before)):
        ctes.append(_balance_update(n))
        # b_id, d_dp, … → b{n}_id, b{n}_dp, …
        params.update({f"b{n}_{k.split('_', 1)[1]}": v for k, v in delta.items()})
    await uow.conn.execute(_insert_one(tuple(row), tuple(ctes)), params)


async def _update_holds(uow: UnitOfWork, snapshot: Snapshot) -> None:
    if snapshot.changed_holds:
        result = await uow.conn.execute(
            holds.update()
            .where(
                holds.c.transfer_id == sa.bindparam("b_id"),
                holds.c.state == HoldState.PENDING.value,
            )
            .values(state=sa.bindparam("b_state"), resolved_us=sa.bindparam("b_resolved")),
            [
                {"b_id": h.transfer_id, "b_state": h.state.value, "b_resolved": h.resolved_us}
                for h in snapshot.changed_holds.values()
            ],
        )
        if result.rowcount not in (-1, len(snapshot.changed_holds)):
            raise RuntimeError("a hold changed state under its account lock")


def _balance_deltas(snapshot: Snapshot, before: dict[str, Balances]) -> list[dict[str, Any]]:
    """What each account's balances moved by (in id order; accounts that did not move left
    out), as ``b_id``, ``d_dp``, ``d_dpo``, ``d_cp``, ``d_cpo``."""
    params = []
    for account_id in sorted(snapshot.touched_accounts):
        old, new = before[account_id], snapshot.accounts[account_id].balances
        if old == new:
            continue
        params.append(
            {
                "b_id": account_id,
                "d_dp": new.debits_pending - old.debits_pending,
                "d_dpo": new.debits_posted - old.debits_posted,
                "d_cp": new.credits_pending - old.credits_pending,
                "d_cpo": new.credits_posted - old.credits_posted,
            }
        )
    return params


async def _update_balances(
    uow: UnitOfWork, snapshot: Snapshot, before: dict[str, Balances]
) -> None:
    params = _balance_deltas(snapshot, before)
    if not params:
        return
    c = accounts.c
    await uow.conn.execute(
        accounts.update()
        .where(c.id == sa.bindparam("b_id"))
        .values(
            debits_pending=c.debits_pending + sa.bindparam("d_dp"),
            debits_posted=c.debits_posted + sa.bindparam("d_dpo"),
            credits_pending=c.credits_pending + sa.bindparam("d_cp"),
            credits_posted=c.credits_posted + sa.bindparam("d_cpo"),
        ),
        params,
    )


# --- invariant check (`hammerlock ledger check`) -------------------------------------------


async def currency_totals(uow: UnitOfWork) -> list[RowMapping]:
    c = accounts.c
    query = sa.select(
        c.currency,
        sa.func.sum(c.debits_posted).label("debits_posted"),
        sa.func.sum(c.credits_posted).label("credits_posted"),
        sa.func.sum(c.debits_pending).label("debits_pending"),
        sa.func.sum(c.credits_pending).label("credits_pending"),
    ).group_by(c.currency)
    return list((await uow.conn.execute(query)).mappings())


async def recomputed_mismatches(uow: UnitOfWork, limit: int) -> list[RowMapping]:
    """Accounts whose stored balances differ from the sums of their transfers and holds."""
    t, h, a = transfers, holds, accounts
    posted = (
        sa.select(
            t.c.debit_account_id.label("account_id"),
            t.c.amount.label("dpo"),
            sa.literal(0).label("cpo"),
        )
        .where(t.c.flags.op("&")(int(TransferFlag.PENDING | TransferFlag.VOID_PENDING)) == 0)
        .union_all(
            sa.select(t.c.credit_account_id, sa.literal(0), t.c.amount).where(
                t.c.flags.op("&")(int(TransferFlag.PENDING | TransferFlag.VOID_PENDING)) == 0
            )
        )
        .subquery()
    )
    # Pending from the transfers too: a hold no transfer resolved, unless it expired (the one
    # resolution that is no transfer; `hold_mismatches` vouches for the expired rows).
    held = (
        sa.select(t.c.debit_account_id, t.c.credit_account_id, t.c.amount)
        .where(
            t.c.flags.op("&")(int(TransferFlag.PENDING)) != 0,
            ~sa.exists().where(_resolutions.c.pending_id == t.c.id),
            ~sa.exists().where(h.c.transfer_id == t.c.id, h.c.state == HoldState.EXPIRED.value),
        )
        .cte("held")
    )
    pending = (
        sa.select(
            held.c.debit_account_id.label("account_id"),
            held.c.amount.label("dp"),
            sa.literal(0).label("cp"),
        )
        .union_all(sa.select(held.c.credit_account_id, sa.literal(0), held.c.amount))
        .subquery()
    )
    posted_sum = (
        sa.select(
            posted.c.account_id,
            sa.func.sum(posted.c.dpo).label("dpo"),
            sa.func.sum(posted.c.cpo).label("cpo"),
        )
        .group_by(posted.c.account_id)
        .subquery()
    )
    pending_sum = (
        sa.select(
            pending.c.account_id,
            sa.func.sum(pending.c.dp).label("dp"),
            sa.func.sum(pending.c.cp).label("cp"),
        )
        .group_by(pending.c.account_id)
        .subquery()
    )
    exp_dpo = sa.func.coalesce(posted_sum.c.dpo, 0)
    exp_cpo = sa.func.coalesce(posted_sum.c.cpo, 0)
    exp_dp = sa.func.coalesce(pending_sum.c.dp, 0)
    exp_cp = sa.func.coalesce(pending_sum.c.cp, 0)
    query = (
        sa.select(
            a.c.id,
            a.c.flags,
            a.c.debits_posted,
            a.c.credits_posted,
            a.c.debits_pending,
            a.c.credits_pending,
            exp_dpo.label("expected_debits_posted"),
            exp_cpo.label("expected_credits_posted"),
            exp_dp.label("expected_debits_pending"),
            exp_cp.label("expected_credits_pending"),
        )
        .select_from(
            a.outerjoin(posted_sum, posted_sum.c.account_id == a.c.id).outerjoin(
                pending_sum, pending_sum.c.account_id == a.c.id
            )
        )
        .where(
            sa.or_(
                a.c.debits_posted != exp_dpo,
                a.c.credits_posted != exp_cpo,
                a.c.debits_pending != exp_dp,
                a.c.credits_pending != exp_cp,
                sa.and_(
                    a.c.flags.op("&")(int(AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS)) != 0,
                    a.c.debits_pending + a.c.debits_posted > a.c.credits_posted,
                ),
                sa.and_(
                    a.c.flags.op("&")(int(AccountFlag.CREDITS_MUST_NOT_EXCEED_DEBITS)) != 0,
                    a.c.credits_pending + a.c.credits_posted > a.c.debits_posted,
                ),
            )
        )
        .order_by(a.c.id)
        .limit(limit)
    )
    return list((await uow.conn.execute(query)).mappings())


async def hold_mismatches(uow: UnitOfWork, limit: int) -> list[RowMapping]:
    """Holds whose state the transfers contradict: resolved by no (or the other kind of)
    transfer, open though a transfer resolved them, expired before their time, or missing."""
    t, h, r = transfers, holds, _resolutions
    post, void = int(TransferFlag.POST_PENDING), int(TransferFlag.VOID_PENDING)
    resolved_as = sa.case(
        (r.c.flags.op("&")(post) != 0, HoldState.POSTED.value),
        (r.c.flags.op("&")(void) != 0, HoldState.VOIDED.value),
        else_=None,
    )
    state = sa.func.coalesce(h.c.state, "missing")
    wrong = sa.or_(
        h.c.transfer_id.is_(None),
        sa.and_(
            h.c.state.in_([HoldState.PENDING.value, HoldState.EXPIRED.value]),
            r.c.id.is_not(None),
        ),
        sa.and_(
            h.c.state.in_([HoldState.POSTED.value, HoldState.VOIDED.value]),
            sa.or_(r.c.id.is_(None), resolved_as != h.c.state),
        ),
        sa.and_(
            h.c.state == HoldState.EXPIRED.value,
            sa.or_(h.c.expires_us.is_(None), h.c.resolved_us < h.c.expires_us),
        ),
        h.c.amount != t.c.amount,
    )
    query = (
        sa.select(
            t.c.id,
            state.label("state"),
            r.c.id.label("resolved_by"),
            sa.func.coalesce(resolved_as, "").label("resolved_as"),
        )
        .select_from(
            t.outerjoin(h, h.c.transfer_id == t.c.id).outerjoin(r, r.c.pending_id == t.c.id)
        )
        .where(t.c.flags.op("&")(int(TransferFlag.PENDING)) != 0, wrong)
        .order_by(t.c.id)
        .limit(limit)
    )
    return list((await uow.conn.execute(query)).mappings())


async def count_transfers(uow: UnitOfWork) -> int:
    return int(
        (await uow.conn.execute(sa.select(sa.func.count()).select_from(transfers))).scalar_one()
    )

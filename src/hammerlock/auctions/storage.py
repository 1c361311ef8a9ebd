"""The auctions tables and their queries (only ``auctions.service`` imports this).

A lot changes only under its row lock (:func:`get_lot` with ``for_update``: ``SELECT … FOR
UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already makes one writer at a time), and
every write checks ``version`` as well, so a bug that forgot the lock fails loudly instead of
losing a bid. Due lots are claimed with ``FOR UPDATE SKIP LOCKED``: several processes closing
lots never wait on, nor close, the same lot.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any, Final

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import RowMapping

from hammerlock.auctions.model import (
    Band,
    Bid,
    BidKind,
    Deposit,
    DepositStatus,
    Lot,
    LotStatus,
    Renewal,
    RenewalState,
    Standing,
)
from hammerlock.db.metadata import metadata
from hammerlock.db.rows import insert_row, update_versioned
from hammerlock.db.uow import UnitOfWork

__all__ = ["deposit_renewals", "lot_bids", "lot_deposits", "lots"]

BIG = sa.BigInteger

lots = sa.Table(
    "lots",
    metadata,
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
sa.Index("ix_lots_status", lots.c.status, lots.c.ends_at_us)
sa.Index("ix_lots_seller_id", lots.c.seller_id)

lot_bids = sa.Table(
    "lot_bids",
    metadata,
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
sa.Index("ix_lot_bids_bidder_id", lot_bids.c.bidder_id, lot_bids.c.lot_id)

lot_deposits = sa.Table(
    "lot_deposits",
    metadata,
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
sa.Index("ix_lot_deposits_lot_id", lot_deposits.c.lot_id, lot_deposits.c.bidder_id)
sa.Index("ix_lot_deposits_status", lot_deposits.c.status)

# One row per renewal attempt of a deposit (one per deposit row version), written before the
# authorization is asked for; see ``Auctions.renew_deposits`` and ADR 0019.
deposit_renewals = sa.Table(
    "deposit_renewals",
    metadata,
    sa.Column("deposit_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("old_intent", sa.String(64), nullable=False),
    sa.Column("payments_key", sa.String(255), nullable=False),
    sa.Column("intent_id", sa.String(64), nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("retry_at_us", BIG, nullable=True),
    sa.Column("created_us", BIG, nullable=False),
    sa.Column("updated_us", BIG, nullable=False),
)
sa.Index("ix_deposit_renewals_state", deposit_renewals.c.state)


# -- lots ---------------------------------------------------------------------------------------


def _bands_text(bands: tuple[Band, ...]) -> str:
    return orjson.dumps([[b.start, b.step] for b in bands]).decode()


def _lot(row: RowMapping) -> Lot:
    return Lot(
        id=row["id"],
        status=LotStatus(row["status"]),
        seller_id=row["seller_id"],
        title=row["title"],
        description=row["description"],
        currency=row["currency"],
        estimate=row["estimate"],
        starting_price=row["starting_price"],
        reserve_price=row["reserve_price"],
        buy_now_price=row["buy_now_price"],
        increments=tuple(Band(s, t) for s, t in orjson.loads(row["increments"])),
        starts_at_us=row["starts_at_us"],
        ends_at_us=row["ends_at_us"],
        latest_end_us=row["latest_end_us"],
        soft_close_s=row["soft_close_s"],
        soft_close_cap_s=row["soft_close_cap_s"],
        buyer_premium_bps=row["buyer_premium_bps"],
        seller_commission_bps=row["seller_commission_bps"],
        deposit_bps=row["deposit_bps"],
        deposit_amount=row["deposit_amount"],
        payment_window_s=row["payment_window_s"],
        inspection_period_s=row["inspection_period_s"],
        standing=Standing(
            price=row["current_price"],
            leader_id=row["leading_bidder_id"],
            leader_max=row["leading_max"],
            runner_up_id=row["runner_up_id"],
            runner_up_max=row["runner_up_max"],
            bid_count=row["bid_count"],
            last_seq=row["last_seq"],
        ),
        extensions=row["extensions"],
        hammer_price=row["hammer_price"],
        winner_id=row["winner_id"],
        close_reason=row["close_reason"],
        closed_us=row["closed_us"],
        deposits_released=bool(row["deposits_released"]),
        created_by_principal=row["created_by_principal"],
        created_us=row["created_us"],
        updated_us=row["updated_us"],
        version=row["version"],
    )


def _lot_values(lot: Lot) -> dict[str, Any]:
    s = lot.standing
    return {
        "id": lot.id,
        "status": lot.status.value,
        "seller_id": lot.seller_id,
        "title": lot.title,
        "description": lot.description,
        "currency": lot.currency,
        "estimate": lot.estimate,
        "starting_price": lot.starting_price,
        "reserve_price": lot.reserve_price,
        "buy_now_price": lot.buy_now_price,
        "increments": _bands_text(lot.increments),
        "starts_at_us": lot.starts_at_us,
        "ends_at_us": lot.ends_at_us,
        "latest_end_us": lot.latest_end_us,
        "soft_close_s": lot.soft_close_s,
        "soft_close_cap_s": lot.soft_close_cap_s,
        "buyer_premium_bps": lot.buyer_premium_bps,
        "seller_commission_bps": lot.seller_commission_bps,
        "deposit_bps": lot.deposit_bps,
        "deposit_amount": lot.deposit_amount,
        "payment_window_s": lot.payment_window_s,
        "inspection_period_s": lot.inspection_period_s,
        "current_price": s.price,
        "leading_bidder_id": s.leader_id,
        "leading_max": s.leader_max,
        "runner_up_id": s.runner_up_id,
        "runner_up_max": s.runner_up_max,
        "bid_count": s.bid_count,
        "last_seq": s.last_seq,
        "extensions": lot.extensions,
        "hammer_price": lot.hammer_price,
        "winner_id": lot.winner_id,
        "close_reason": lot.close_reason,
        "closed_us": lot.closed_us,
        "deposits_released": lot.deposits_released,
        "created_by_principal": lot.created_by_principal,
        "created_us": lot.created_us,
        "updated_us": lot.updated_us,
        "version": lot.version,
    }


async def insert_lot(uow: UnitOfWork, lot: Lot) -> None:
    await insert_row(uow, lots, _lot_values(lot))


async def get_lot(uow: UnitOfWork, lot_id: str, *, for_update: bool = False) -> Lot | None:
    query = sa.select(lots).where(lots.c.id == lot_id)
    if for_update and uow.is_postgres:
        query = query.with_for_update()
    row = (await uow.conn.execute(query)).mappings().first()
    return None if row is None else _lot(row)


async def lock_lots(
    uow: UnitOfWork, lot_ids: Iterable[str], *, skip_locked: bool = False
) -> tuple[dict[str, Lot], set[str]]:
    """The lots of ``lot_ids`` that exist, locked in id order (one statement; a fixed order so
    two batches over the same lots never deadlock), and — with ``skip_locked`` — the ids of
    those that exist but whose row another transaction holds (not waited for)."""
    ids = sorted(set(lot_ids))
    query = _LOCK_LOTS[(uow.is_postgres, skip_locked and uow.is_postgres)]
    rows = (await uow.conn.execute(query, {"ids": ids})).mappings().all()
    found = {row["id"]: _lot(row) for row in rows}
    missing = [i for i in ids if i not in found]
    if not skip_locked or not missing or not uow.is_postgres:
        return found, set()
    held = await uow.conn.execute(_LOT_IDS, {"ids": missing})
    return found, {str(r[0]) for r in held}


# The bid writer's statements, built once (SQLAlchemy memoizes a statement's cache key on the
# statement object: one built per batch was built and keyed again, ~70-100 µs each).
_IDS: Final[sa.BindParameter[str]] = sa.bindparam("ids", expanding=True)
_SELECT_LOTS = sa.select(lots).where(lots.c.id.in_(_IDS)).order_by(lots.c.id)
_LOCK_LOTS: Final = {  # (PostgreSQL, skip locked) → the statement
    (False, False): _SELECT_LOTS,
    (True, False): _SELECT_LOTS.with_for_update(),
    (True, True): _SELECT_LOTS.with_for_update(skip_locked=True),
}
_LOT_IDS: Final = sa.select(lots.c.id).where(lots.c.id.in_(_IDS))


async def save_lot(uow: UnitOfWork, lot: Lot, *, expected_version: int) -> bool:
    return await update_versioned(uow, lots, _lot_values(lot), expected_version=expected_version)


# Several lots' bidding state in one statement (a bid batch on PostgreSQL): arrays unnested into
# rows, so the SQL text is the same whatever the batch size (one prepared statement).
_SAVE_STANDINGS_PG = sa.text(
    """
    UPDATE lots AS l SET
        status = v.status, ends_at_us = v.ends_at_us, current_price = v.current_price,
        leading_bidder_id = v.leading_bidder_id, leading_max = v.leading_max,
        runner_up_id = v.runner_up_id, runner_up_max = v.runner_up_max,
        bid_count = v.bid_count, last_seq = v.last_seq, extensions = v.extensions,
        updated_us = v.updated_us, version = v.version
    FROM unnest(
        CAST(:id AS text[]), CAST(:expected AS integer[]), CAST(:status AS text[]),
        CAST(:ends_at_us AS bigint[]), CAST(:current_price AS bigint[]),
        CAST(:leading_bidder_id AS text[]), CAST(:leading_max AS bigint[]),
        CAST(:runner_up_id AS text[]), CAST(:runner_up_max AS bigint[]),
        CAST(:bid_count AS integer[]), CAST(:last_seq AS bigint[]),
        CAST(:extensions AS integer[]), CAST(:updated_us AS bigint[]),
        CAST(:version AS integer[])
    ) AS v(id, expected, status, ends_at_us, current_price, leading_bidder_id, leading_max,
           runner_up_id, runner_up_max, bid_count, last_seq, extensions, updated_us, version)
    WHERE l.id = v.id AND l.version = v.expected
    RETURNING l.id
    """
)
_STANDING_COLUMNS = (
    "status",
    "ends_at_us",
    "current_price",
    "leading_bidder_id",
    "leading_max",
    "runner_up_id",
    "runner_up_max",
    "bid_count",
    "last_seq",
    "extensions",
    "updated_us",
    "version",
)


async def save_standings(uow: UnitOfWork, changed: Sequence[tuple[Lot, int]]) -> bool:
    """The bidding state of the lots a bid batch touched, each ``(lot, expected_version)``;
    False when one row did not hold its expected version. One statement on PostgreSQL (and for
    a single lot anywhere); one per lot on SQLite, where statements cost no round trip."""
    if len(changed) == 1 or (changed and not uow.is_postgres):
        for lot, expected in changed:
            if not await save_lot(uow, lot, expected_version=expected):
                return False
        return True
    if not changed:
        return True
    values = [_lot_values(lot) for lot, _ in changed]
    params: dict[str, list[Any]] = {
        "id": [lot.id for lot, _ in changed],
        "expected": [expected for _, expected in changed],
    }
    params |= {c: [v[c] for v in values] for c in _STANDING_COLUMNS}
    written = (await uow.conn.execute(_SAVE_STANDINGS_PG, params)).scalars().all()
    return len(written) == len(changed)


async def claim_due(
    uow: UnitOfWork,
    status: LotStatus,
    *,
    column: str,
    now_us: int,
    skip: Collection[str] = (),
    after: tuple[int, str] | None = None,
) -> Lot | None:
    """One lot in ``status`` whose ``column`` time has come, oldest first, locked for this
    transaction; lots another process holds are skipped (PostgreSQL), SQLite having one writer
    anyway, and so are the lots named in ``skip`` and those at or before ``after`` (a
    ``(time, id)`` cursor)."""
    query = (
        sa.select(lots)
        .where(lots.c.status == status.value, lots.c[column] <= now_us)
        .order_by(lots.c[column], lots.c.id)
        .limit(1)
    )
    if skip:
        query = query.where(lots.c.id.not_in(list(skip)))
    if after is not None:
        query = query.where(sa.tuple_(lots.c[column], lots.c.id) > sa.tuple_(*after))
    if uow.is_postgres:
        query = query.with_for_update(skip_locked=True)
    row = (await uow.conn.execute(query)).mappings().first()
    return None if row is None else _lot(row)


async def any_due(uow: UnitOfWork, *, now_us: int) -> bool:
    """Whether any lot waits to open or close (a cheap read before taking the write lock)."""
    query = (
        sa.select(lots.c.id)
        .where(
            sa.or_(
                sa.and_(lots.c.status == LotStatus.OPEN.value, lots.c.ends_at_us <= now_us),
                sa.and_(lots.c.status == LotStatus.SCHEDULED.value, lots.c.starts_at_us <= now_us),
            )
        )
        .limit(1)
    )
    return (await uow.conn.execute(query)).first() is not None


async def lots_with_unreleased_deposits(
    uow: UnitOfWork, *, limit: int, skip: Collection[str] = (), after: str | None = None
) -> list[str]:
    """Finished lots whose losers' deposits are not all released yet, by id, from after
    ``after`` (read round-robin: a lot whose void stays unresolved must not fill every pass's
    page), but those in ``skip`` (lots whose release failed lately in this process)."""
    query = (
        sa.select(lots.c.id)
        .where(
            lots.c.status.in_(
                [LotStatus.CLOSED.value, LotStatus.UNSOLD.value, LotStatus.SETTLED.value]
            ),
            lots.c.deposits_released.is_(False),
        )
        .order_by(lots.c.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(lots.c.id > after)
    if skip:
        query = query.where(lots.c.id.not_in(list(skip)))
    return [r[0] for r in (await uow.conn.execute(query)).all()]


async def mark_deposits_released(uow: UnitOfWork, lot_id: str) -> None:
    await uow.conn.execute(lots.update().where(lots.c.id == lot_id).values(deposits_released=True))


# -- bids ---------------------------------------------------------------------------------------


def _bid(row: RowMapping) -> Bid:
    return Bid(
        id=row["id"],
        lot_id=row["lot_id"],
        seq=row["seq"],
        bidder_id=row["bidder_id"],
        max_amount=row["max_amount"],
        kind=BidKind(row["kind"]),
        status=row["status"],
        price_after=row["price_after"],
        leader_after=row["leader_after"],
        placed_us=row["placed_us"],
        retracted_us=row["retracted_us"],
        retracted_by=row["retracted_by"],
        retraction_reason=row["retraction_reason"],
    )


async def insert_bid(
    uow: UnitOfWork, bid: Bid, *, key_id: str | None, idempotency_key: str | None
) -> None:
    await uow.conn.execute(
        lot_bids.insert().values(
            lot_id=bid.lot_id,
            seq=bid.seq,
            id=bid.id,
            bidder_id=bid.bidder_id,
            max_amount=bid.max_amount,
            kind=bid.kind.value,
            status=bid.status,
            price_after=bid.price_after,
            leader_after=bid.leader_after,
            placed_us=bid.placed_us,
            created_by_key_id=key_id,
            idempotency_key=idempotency_key,
        )
    )


async def insert_bids(uow: UnitOfWork, rows: Sequence[tuple[Bid, str | None, str | None]]) -> None:
    """Many bids in one statement: (bid, creating key id, its Idempotency-Key)."""
    if not rows:
        return
    await uow.conn.execute(
        lot_bids.insert(),
        [
            {
                "lot_id": bid.lot_id,
                "seq": bid.seq,
                "id": bid.id,
                "bidder_id": bid.bidder_id,
                "max_amount": bid.max_amount,
                "kind": bid.kind.value,
                "status": bid.status,
                "price_after": bid.price_after,
                "leader_after": bid.leader_after,
                "placed_us": bid.placed_us,
                "retracted_us": None,
                "retracted_by": None,
                "retraction_reason": None,
                "created_by_key_id": key_id,
                "idempotency_key": idempotency_key,
            }
            for bid, key_id, idempotency_key in rows
        ],
    )


async def find_bids_by_requests(
    uow: UnitOfWork, requests: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], Bid]:
    """Bids made by (key id, Idempotency-Key) pairs, one statement."""
    pairs = sorted(set(requests))
    if not pairs:
        return {}
    rows = (await uow.conn.execute(_BIDS_BY_REQUESTS, {"pairs": pairs})).mappings().all()
    return {(row["created_by_key_id"], row["idempotency_key"]): _bid(row) for row in rows}


_BIDS_BY_REQUESTS: Final = sa.select(lot_bids).where(
    sa.tuple_(lot_bids.c.created_by_key_id, lot_bids.c.idempotency_key).in_(
        sa.bindparam("pairs", expanding=True)
    )
)


async def find_bid_by_request(uow: UnitOfWork, key_id: str, idempotency_key: str) -> Bid | None:
    t = lot_bids
    row = (
        (
            await uow.conn.execute(
                sa.select(t).where(
                    t.c.created_by_key_id == key_id, t.c.idempotency_key == idempotency_key
                )
            )
        )
        .mappings()
        .first()
    )
    return None if row is None else _bid(row)


async def get_bid(uow: UnitOfWork, bid_id: str) -> Bid | None:
    row = (
        (await uow.conn.execute(sa.select(lot_bids).where(lot_bids.c.id == bid_id)))
        .mappings()
        .first()
    )
    return None if row is None else _bid(row)


async def list_bids(
    uow: UnitOfWork,
    lot_id: str,
    *,
    after_seq: int = 0,
    limit: int = 1_000_000,
    accepted_only: bool = False,
) -> list[Bid]:
    t = lot_bids
    query = sa.select(t).where(t.c.lot_id == lot_id, t.c.seq > after_seq)
    if accepted_only:
        query = query.where(t.c.status == "accepted")
    rows = (await uow.conn.execute(query.order_by(t.c.seq).limit(limit))).mappings().all()
    return [_bid(r) for r in rows]


async def retract_bid(
    uow: UnitOfWork, bid: Bid, *, by: str | None, reason: str, now_us: int
) -> bool:
    t = lot_bids
    result = await uow.conn.execute(
        t.update()
        .where(t.c.lot_id == bid.lot_id, t.c.seq == bid.seq, t.c.status == "accepted")
        .values(status="retracted", retracted_us=now_us, retracted_by=by, retraction_reason=reason)
    )
    return bool(result.rowcount == 1)


# -- deposits -----------------------------------------------------------------------------------


def _deposit(row: RowMapping) -> Deposit:
    return Deposit(
        id=row["id"],
        lot_id=row["lot_id"],
        bidder_id=row["bidder_id"],
        amount=row["amount"],
        currency=row["currency"],
        account=row["account"],
        payment_intent=row["payment_intent"],
        status=DepositStatus(row["status"]),
        created_us=row["created_us"],
        updated_us=row["updated_us"],
        version=row["version"],
    )


async def insert_deposit(
    uow: UnitOfWork, deposit: Deposit, *, key_id: str | None, idempotency_key: str | None
) -> None:
    await uow.conn.execute(
        lot_deposits.insert().values(
            id=deposit.id,
            lot_id=deposit.lot_id,
            bidder_id=deposit.bidder_id,
            amount=deposit.amount,
            currency=deposit.currency,
            account=deposit.account,
            payment_intent=deposit.payment_intent,
            status=deposit.status.value,
            created_by_key_id=key_id,
            idempotency_key=idempotency_key,
            created_us=deposit.created_us,
            updated_us=deposit.updated_us,
            version=deposit.version,
        )
    )


async def get_deposit(uow: UnitOfWork, deposit_id: str) -> Deposit | None:
    t = lot_deposits
    row = (await uow.conn.execute(sa.select(t).where(t.c.id == deposit_id))).mappings().first()
    return None if row is None else _deposit(row)


async def find_deposit_by_request(
    uow: UnitOfWork, key_id: str, idempotency_key: str
) -> Deposit | None:
    t = lot_deposits
    row = (
        (
            await uow.conn.execute(
                sa.select(t).where(
                    t.c.created_by_key_id == key_id, t.c.idempotency_key == idempotency_key
                )
            )
        )
        .mappings()
        .first()
    )
    return None if row is None else _deposit(row)


async def deposits_of(uow: UnitOfWork, lot_id: str, bidder_id: str | None = None) -> list[Deposit]:
    t = lot_deposits
    query = sa.select(t).where(t.c.lot_id == lot_id)
    if bidder_id is not None:
        query = query.where(t.c.bidder_id == bidder_id)
    rows = (await uow.conn.execute(query.order_by(t.c.created_us, t.c.id))).mappings().all()
    return [_deposit(r) for r in rows]


async def set_deposit(
    uow: UnitOfWork,
    deposit_id: str,
    *,
    status: DepositStatus,
    payment_intent: str | None,
    now_us: int,
    expected: tuple[DepositStatus, str | None] | None = None,
) -> bool:
    """Write a deposit's status (and intent, when given). With ``expected`` (status, intent),
    only if the row still holds them: False when another writer changed it meanwhile (a close
    releasing it while its card was being authorized, say)."""
    t = lot_deposits
    values: dict[str, Any] = {
        "status": status.value,
        "updated_us": now_us,
        "version": t.c.version + 1,
    }
    if payment_intent is not None:
        values["payment_intent"] = payment_intent
    query = t.update().where(t.c.id == deposit_id)
    if expected is not None:
        query = query.where(
            t.c.status == expected[0].value,
            t.c.payment_intent.is_not_distinct_from(expected[1]),
        )
    result = await uow.conn.execute(query.values(**values))
    return bool(result.rowcount == 1)


async def renewable_deposits(
    uow: UnitOfWork, *, now_us: int, after_id: str, limit: int
) -> list[tuple[Deposit, int]]:
    """Deposits whose authorization must stay alive, each with when it is needed until: held
    ones on lots still taking bids (until the lot's latest possible end), and kept ones of
    closed lots whose payment window is still running (until the close + ``payment_window_s``,
    when a default captures it)."""
    d, lot = lot_deposits, lots
    window_us = sa.cast(lot.c.payment_window_s, BIG) * 1_000_000
    live = sa.and_(
        d.c.status == DepositStatus.HELD.value,
        lot.c.status.in_([LotStatus.OPEN.value, LotStatus.SCHEDULED.value]),
    )
    awaiting_payment = sa.and_(
        d.c.status == DepositStatus.KEPT.value,
        lot.c.status == LotStatus.CLOSED.value,
        lot.c.closed_us + window_us > now_us,
    )
    rows = (
        (
            await uow.conn.execute(
                sa.select(d, lot.c.latest_end_us, lot.c.closed_us, lot.c.payment_window_s)
                .join(lot, lot.c.id == d.c.lot_id)
                .where(
                    sa.or_(live, awaiting_payment),
                    d.c.payment_intent.is_not(None),
                    d.c.id > after_id,
                )
                .order_by(d.c.id)
                .limit(limit)
            )
        )
        .mappings()
        .all()
    )
    return [(_deposit(r), _needed_until_us(r)) for r in rows]


def _needed_until_us(row: RowMapping) -> int:
    if row["status"] == DepositStatus.KEPT.value:
        return int(row["closed_us"]) + int(row["payment_window_s"]) * 1_000_000
    return int(row["latest_end_us"])


async def bump_deposit(uow: UnitOfWork, deposit: Deposit, *, now_us: int) -> bool:
    """A new version of the deposit row, nothing else changed (only if nobody changed it since):
    a renewal's retry gets a new payments key, shared by whoever reads the new version."""
    t = lot_deposits
    result = await uow.conn.execute(
        t.update()
        .where(t.c.id == deposit.id, t.c.version == deposit.version)
        .values(updated_us=now_us, version=deposit.version + 1)
    )
    return bool(result.rowcount == 1)


async def swap_deposit_intent(
    uow: UnitOfWork, deposit: Deposit, new_intent: str, *, now_us: int
) -> bool:
    """Point a held (or kept) deposit at its renewed authorization (only if nobody changed it
    since)."""
    t = lot_deposits
    result = await uow.conn.execute(
        t.update()
        .where(
            t.c.id == deposit.id,
            t.c.version == deposit.version,
            t.c.status == deposit.status.value,
        )
        .values(payment_intent=new_intent, updated_us=now_us, version=deposit.version + 1)
    )
    return bool(result.rowcount == 1)


# -- deposit renewals ---------------------------------------------------------------------------

_UNSETTLED_RENEWALS = (
    RenewalState.OPEN.value,
    RenewalState.SWAPPED.value,
    RenewalState.UNDONE.value,
)


def _renewal(row: RowMapping) -> Renewal:
    return Renewal(
        deposit_id=row["deposit_id"],
        version=row["version"],
        old_intent=row["old_intent"],
        payments_key=row["payments_key"],
        intent_id=row["intent_id"],
        state=RenewalState(row["state"]),
        retry_at_us=row["retry_at_us"],
        created_us=row["created_us"],
        updated_us=row["updated_us"],
    )


async def record_renewal(
    uow: UnitOfWork, deposit: Deposit, *, old_intent: str, payments_key: str, now_us: int
) -> Renewal:
    """The attempt for the deposit's current version: recorded now, or as another process (or
    an earlier try) recorded it."""
    t = deposit_renewals
    values = {
        "deposit_id": deposit.id,
        "version": deposit.version,
        "old_intent": old_intent,
        "payments_key": payments_key,
        "intent_id": None,
        "state": RenewalState.OPEN.value,
        "retry_at_us": None,
        "created_us": now_us,
        "updated_us": now_us,
    }
    insert = pg_insert(t) if uow.is_postgres else sqlite_insert(t)
    # An open attempt taken up again is touched: the settling pass closes an open attempt with
    # no intent only once nobody has been at it for a while.
    await uow.conn.execute(
        insert.values(**values).on_conflict_do_update(
            index_elements=[t.c.deposit_id, t.c.version],
            set_={"updated_us": now_us},
            where=t.c.state == RenewalState.OPEN.value,
        )
    )
    found = await get_renewal(uow, deposit.id, deposit.version)
    assert found is not None  # inserted, or there already
    return found


async def get_renewal(uow: UnitOfWork, deposit_id: str, version: int) -> Renewal | None:
    t = deposit_renewals
    row = (
        (
            await uow.conn.execute(
                sa.select(t).where(t.c.deposit_id == deposit_id, t.c.version == version)
            )
        )
        .mappings()
        .first()
    )
    return None if row is None else _renewal(row)


async def set_renewal(
    uow: UnitOfWork,
    renewal: Renewal,
    *,
    state: RenewalState,
    now_us: int,
    intent_id: str | None = None,
    retry_at_us: int | None = None,
    expected: Collection[RenewalState] | None = None,
) -> bool:
    """Move an attempt to ``state`` (and record its intent once known), only from one of the
    ``expected`` states (default: the state it was read in). False when it moved meanwhile."""
    t = deposit_renewals
    values: dict[str, Any] = {"state": state.value, "updated_us": now_us}
    if intent_id is not None:
        values["intent_id"] = intent_id
    if retry_at_us is not None:
        values["retry_at_us"] = retry_at_us
    states = [s.value for s in (expected if expected is not None else (renewal.state,))]
    result = await uow.conn.execute(
        t.update()
        .where(
            t.c.deposit_id == renewal.deposit_id,
            t.c.version == renewal.version,
            t.c.state.in_(states),
        )
        .values(**values)
    )
    return bool(result.rowcount == 1)


async def note_renewal_intent(
    uow: UnitOfWork, renewal: Renewal, intent_id: str, now_us: int
) -> bool:
    """Record the intent of an open attempt whose answer is not in (its state unchanged);
    False when the attempt is no longer open (closed by the settling pass meanwhile)."""
    t = deposit_renewals
    result = await uow.conn.execute(
        t.update()
        .where(
            t.c.deposit_id == renewal.deposit_id,
            t.c.version == renewal.version,
            t.c.state == RenewalState.OPEN.value,
            sa.or_(t.c.intent_id.is_(None), t.c.intent_id == intent_id),
        )
        .values(intent_id=intent_id, updated_us=now_us)
    )
    return bool(result.rowcount == 1)


async def unsettled_renewals(
    uow: UnitOfWork, *, after: tuple[str, int], limit: int
) -> list[Renewal]:
    """Attempts that may still leave an authorization held beside the deposit (``open``,
    ``swapped``, ``undone``), in (deposit, version) order after ``after``."""
    t = deposit_renewals
    rows = (
        (
            await uow.conn.execute(
                sa.select(t)
                .where(
                    t.c.state.in_(_UNSETTLED_RENEWALS),
                    sa.tuple_(t.c.deposit_id, t.c.version) > sa.tuple_(*after),
                )
                .order_by(t.c.deposit_id, t.c.version)
                .limit(limit)
            )
        )
        .mappings()
        .all()
    )
    return [_renewal(r) for r in rows]

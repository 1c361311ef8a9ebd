"""The escrow tables and their queries (only ``escrow.service`` imports this).

An order is a state machine saved under a ``version`` compare-and-set (and a row lock on
PostgreSQL); its history is ``escrow_order_events`` (append-only: the timeline), the audit log
and the ledger.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import RowMapping

from hammerlock.db.metadata import metadata
from hammerlock.db.queues import Key
from hammerlock.db.queues import after as after_key
from hammerlock.db.rows import (
    Along,
    insert_row,
    insert_row_with,
    update_versioned,
    update_versioned_with,
)
from hammerlock.db.uow import UnitOfWork
from hammerlock.escrow.model import OfferStatus, Order, OrderStatus, PayoutStatus
from hammerlock.payments.storage import payment_intents

__all__ = ["escrow_order_events", "escrow_orders"]

BIG = sa.BigInteger

escrow_orders = sa.Table(
    "escrow_orders",
    metadata,
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
    sa.Column("paid_us", BIG, nullable=True),  # 0008: the ship window runs from here
    sa.Column("paid_out", BIG, nullable=False, server_default=sa.text("0")),  # 0008
    sa.Column("payout_amount", BIG, nullable=False, server_default=sa.text("0")),  # 0008
    sa.Column("chargebacks", sa.Text, nullable=False, server_default=sa.text("'{}'")),  # 0008
    sa.Column("chargeback_covered", BIG, nullable=False, server_default=sa.text("0")),  # 0008
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
sa.Index("ix_escrow_orders_status", escrow_orders.c.status, escrow_orders.c.updated_us)
sa.Index("ix_escrow_orders_buyer", escrow_orders.c.buyer_id)
sa.Index("ix_escrow_orders_seller", escrow_orders.c.seller_id)

escrow_order_events = sa.Table(
    "escrow_order_events",
    metadata,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("at_us", BIG, nullable=False),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(128), nullable=True),
    sa.Column("details", sa.Text, nullable=False),
)

_JSON_COLUMNS = ("refund_plan", "refund_ids", "chargebacks")
_ENUM_COLUMNS = ("status", "payout_status", "offer_status")


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _order(row: RowMapping) -> Order:
    values = dict(row)
    values["status"] = OrderStatus(values["status"])
    values["payout_status"] = PayoutStatus(values["payout_status"])
    values["offer_status"] = OfferStatus(values["offer_status"])
    for name in _JSON_COLUMNS:
        values[name] = orjson.loads(values[name])
    return Order(**values)


def _values(order: Order) -> dict[str, Any]:
    values = {c.name: getattr(order, c.name) for c in escrow_orders.columns}
    for name in _ENUM_COLUMNS:
        values[name] = values[name].value
    for name in _JSON_COLUMNS:
        values[name] = _dumps(values[name])
    return values


async def insert_order(uow: UnitOfWork, order: Order) -> None:
    await insert_row(uow, escrow_orders, _values(order))


@functools.cache
def _get_order(locked: bool) -> sa.Select[Any]:
    """Built once (a statement built per call costs a cache key derived from its values)."""
    query = sa.select(escrow_orders).where(escrow_orders.c.id == sa.bindparam("order_id"))
    return query.with_for_update() if locked else query


async def get_order(uow: UnitOfWork, order_id: str, *, for_update: bool = False) -> Order | None:
    query = _get_order(for_update and uow.is_postgres)
    row = (await uow.conn.execute(query, {"order_id": order_id})).mappings().first()
    return None if row is None else _order(row)


async def save_order(uow: UnitOfWork, order: Order, *, expected_version: int) -> bool:
    """Write ``order`` if nobody changed it since ``expected_version``; False otherwise."""
    return await update_versioned(
        uow, escrow_orders, _values(order), expected_version=expected_version
    )


async def save_order_with(
    uow: UnitOfWork, order: Order, *, expected_version: int, along: Along
) -> bool:
    """:func:`save_order` and the INSERTs ``along`` (their parameters named apart from
    ``order_…`` and each other) in one statement: PostgreSQL only (data-modifying CTEs). The
    INSERTs run whether or not the version matches: on False the caller rolls back."""
    return await update_versioned_with(
        uow, escrow_orders, _values(order), expected_version=expected_version, prefix="order_",
        along=along,
    )  # fmt: skip


async def insert_order_with(uow: UnitOfWork, order: Order, *, along: Along) -> None:
    """:func:`insert_order` and the INSERTs ``along`` in one statement (PostgreSQL only)."""
    await insert_row_with(uow, escrow_orders, _values(order), prefix="order_", along=along)


def _append_event_statement(prefix: str = "") -> sa.Insert:
    """One statement, built once: the next seq of the order's timeline is read and used by the
    INSERT itself. Callers append after writing the order's row in the same transaction
    (PostgreSQL: that UPDATE holds the row lock; SQLite: ``BEGIN IMMEDIATE`` serializes
    writers), so no two appends race; the (order_id, seq) key is the backstop."""
    t = escrow_order_events
    order_id = sa.bindparam(f"{prefix}order_id", type_=t.c.order_id.type)
    return t.insert().from_select(
        ["order_id", "seq", "at_us", "event", "status", "actor", "details"],
        sa.select(
            order_id,
            sa.func.coalesce(sa.func.max(t.c.seq), 0) + 1,
            sa.bindparam(f"{prefix}at_us", type_=t.c.at_us.type),
            sa.bindparam(f"{prefix}event", type_=t.c.event.type),
            sa.bindparam(f"{prefix}status", type_=t.c.status.type),
            sa.bindparam(f"{prefix}actor", type_=t.c.actor.type),
            sa.bindparam(f"{prefix}details", type_=t.c.details.type),
        ).where(t.c.order_id == order_id),
    )


_APPEND_EVENT = _append_event_statement()
# The same with its parameters named ``event_…``, to ride along another statement.
_APPEND_EVENT_ALONG = _append_event_statement("event_")


def _event_params(
    order_id: str,
    *,
    at_us: int,
    event: str,
    status: OrderStatus,
    actor: str | None,
    details: dict[str, Any],
    prefix: str = "",
) -> dict[str, Any]:
    return {
        f"{prefix}order_id": order_id,
        f"{prefix}at_us": at_us,
        f"{prefix}event": event,
        f"{prefix}status": status.value,
        f"{prefix}actor": actor,
        f"{prefix}details": _dumps(details),
    }


def append_event_insert(
    order_id: str,
    *,
    at_us: int,
    event: str,
    status: OrderStatus,
    actor: str | None,
    details: dict[str, Any],
) -> tuple[sa.Insert, dict[str, Any]]:
    """:func:`append_event` as a statement and its parameters (named ``event_…``), to ride along
    a write of the order's row (which holds its lock: see :func:`_append_event_statement`)."""
    params = _event_params(
        order_id, at_us=at_us, event=event, status=status, actor=actor, details=details,
        prefix="event_",
    )  # fmt: skip
    return _APPEND_EVENT_ALONG, params


async def append_event(
    uow: UnitOfWork,
    order_id: str,
    *,
    at_us: int,
    event: str,
    status: OrderStatus,
    actor: str | None,
    details: dict[str, Any],
) -> None:
    await uow.conn.execute(
        _APPEND_EVENT,
        _event_params(
            order_id, at_us=at_us, event=event, status=status, actor=actor, details=details
        ),
    )


_TIMELINE = (
    sa.select(escrow_order_events)
    .where(escrow_order_events.c.order_id == sa.bindparam("order_id"))
    .order_by(escrow_order_events.c.seq)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)


async def timeline(uow: UnitOfWork, order_id: str, *, limit: int) -> list[dict[str, Any]]:
    params = {"order_id": order_id, "limit": limit}
    rows = (await uow.conn.execute(_TIMELINE, params)).mappings().all()
    return [
        {
            "seq": r["seq"],
            "at_us": r["at_us"],
            "event": r["event"],
            "status": r["status"],
            "actor": r["actor"],
            "details": orjson.loads(r["details"]),
        }
        for r in rows
    ]


_EVENTS_NAMED = (
    sa.select(escrow_order_events.c.details)
    .where(
        escrow_order_events.c.order_id == sa.bindparam("order_id"),
        escrow_order_events.c.event == sa.bindparam("event"),
    )
    .order_by(escrow_order_events.c.seq)
)


async def events_named(uow: UnitOfWork, order_id: str, event: str) -> list[dict[str, Any]]:
    """The details of the order's timeline entries named ``event`` (oldest first)."""
    rows = await uow.conn.execute(_EVENTS_NAMED, {"order_id": order_id, "event": event})
    return [orjson.loads(d) for d in rows.scalars()]


async def ids_where(
    uow: UnitOfWork,
    conditions: Iterable[sa.ColumnElement[bool]],
    *,
    limit: int,
    after: Key | None = None,
) -> list[Key]:
    """``(updated_us, id)`` of orders matching every condition, in that order, from after
    ``after`` (the sweeper's queues, read round-robin: :mod:`hammerlock.db.queues`)."""
    t = escrow_orders
    rows = await uow.conn.execute(
        sa.select(t.c.updated_us, t.c.id)
        .where(*conditions, *after_key(t.c.updated_us, t.c.id, after))
        .order_by(t.c.updated_us, t.c.id)
        .limit(limit)
    )
    return [(r[0], r[1]) for r in rows]


async def order_of_intent(uow: UnitOfWork, intent_id: str) -> str | None:
    """The order paid (or its deposit) by payment intent ``intent_id``, if any."""
    t = escrow_orders
    query = (
        sa.select(t.c.id)
        .where(sa.or_(t.c.payment_intent_id == intent_id, t.c.deposit_intent_id == intent_id))
        .limit(1)
    )
    found = (await uow.conn.execute(query)).scalar()
    return None if found is None else str(found)


def due_for_default(now_us: int) -> list[sa.ColumnElement[bool]]:
    t = escrow_orders
    return [t.c.status == OrderStatus.AWAITING_PAYMENT.value, t.c.pay_by_us <= now_us]


def awaiting_with_intent() -> list[sa.ColumnElement[bool]]:
    t = escrow_orders
    return [t.c.status == OrderStatus.AWAITING_PAYMENT.value, t.c.payment_intent_id.is_not(None)]


def pay_interrupted(
    now_us: int, before_us: int, requested: str, live_deposit: Iterable[str]
) -> list[sa.ColumnElement[bool]]:
    """Orders whose buyer asked to pay (a timeline entry named ``requested``) and whose pay
    stopped before its rest's intent was recorded, untouched since ``before_us`` and still
    before their deadline (after it, the default decides), with the deposit's part still to
    finish: a live authorization (its intent in ``live_deposit``) not yet in escrow, or escrow
    holding the whole total without the order marked paid (the sweeper resumes these). A dead
    deposit has nothing to resume: it never enters the queue."""
    t, e, pi = escrow_orders, escrow_order_events, payment_intents
    asked = sa.exists().where(e.c.order_id == t.c.id, e.c.event == requested)
    live = sa.exists().where(pi.c.id == t.c.deposit_intent_id, pi.c.status.in_(list(live_deposit)))
    return [
        t.c.status == OrderStatus.AWAITING_PAYMENT.value,
        t.c.payment_intent_id.is_(None),
        t.c.updated_us <= before_us,
        t.c.pay_by_us > now_us,
        sa.or_(
            sa.and_(t.c.deposit_intent_id.is_not(None), t.c.deposit_in_escrow == 0, live),
            t.c.deposit_in_escrow >= t.c.hammer_price + t.c.premium,
        ),
        asked,
    ]


def paid_before(before_us: int) -> list[sa.ColumnElement[bool]]:
    """Paid orders not shipped since ``before_us`` (orders paid before migration 0008 have no
    ``paid_us``: their last change stands in)."""
    t = escrow_orders
    return [
        t.c.status == OrderStatus.PAID.value,
        sa.func.coalesce(t.c.paid_us, t.c.updated_us) <= before_us,
    ]


def shipped_before(before_us: int) -> list[sa.ColumnElement[bool]]:
    t = escrow_orders
    return [t.c.status == OrderStatus.SHIPPED.value, t.c.shipped_us <= before_us]


def inspection_over(now_us: int) -> list[sa.ColumnElement[bool]]:
    t = escrow_orders
    return [t.c.status == OrderStatus.DELIVERED.value, t.c.inspection_ends_us <= now_us]


def payout_pending(before_us: int) -> list[sa.ColumnElement[bool]]:
    t = escrow_orders
    return [t.c.payout_status == PayoutStatus.PENDING.value, t.c.updated_us <= before_us]


def payout_no_destination() -> list[sa.ColumnElement[bool]]:
    """Payouts waiting for the seller's payout destination (a queue of its own, so that they
    never crowd out payouts to resume)."""
    t = escrow_orders
    return [t.c.payout_status == PayoutStatus.NO_DESTINATION.value]


def refunds_unstarted(before_us: int) -> list[sa.ColumnElement[bool]]:
    t = escrow_orders
    return [
        t.c.refunds_outstanding > 0,
        t.c.updated_us <= before_us,
    ]


def offers_expiring(now_us: int) -> list[sa.ColumnElement[bool]]:
    t = escrow_orders
    return [t.c.offer_status == OfferStatus.OPEN.value, t.c.offer_expires_us <= now_us]

"""The payments tables and their queries (only ``payments.service`` imports this).

Every state change is a compare-and-set on ``version``: two processes resolving the same intent
(a client's retry and the janitor) both ask the gateway under the same key, and only one of them
commits the outcome; the other sees the new version and re-reads.
"""

from __future__ import annotations

import functools
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
from hammerlock.payments.model import (
    CaptureMethod,
    IntentStatus,
    PaymentIntent,
    PendingOp,
    Purpose,
    Refund,
    RefundReason,
    RefundStatus,
)

__all__ = [
    "gateway_events",
    "payment_intents",
    "payment_refunds",
]

BIG = sa.BigInteger

payment_intents = sa.Table(
    "payment_intents",
    metadata,
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
sa.Index("ix_payment_intents_status", payment_intents.c.status, payment_intents.c.updated_us)
sa.Index("ix_payment_intents_fingerprint", payment_intents.c.card_fingerprint)
sa.Index("ix_payment_intents_customer", payment_intents.c.customer)

payment_refunds = sa.Table(
    "payment_refunds",
    metadata,
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
sa.Index("ix_payment_refunds_intent", payment_refunds.c.payment_intent)
sa.Index("ix_payment_refunds_status", payment_refunds.c.status)

# Inbound gateway webhooks already handled (deduplication by the gateway's event id).
gateway_events = sa.Table(
    "payment_gateway_events",
    metadata,
    sa.Column("gateway", sa.String(32), primary_key=True),
    sa.Column("event_id", sa.String(128), primary_key=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("received_us", BIG, nullable=False),
)


def _intent(row: RowMapping) -> PaymentIntent:
    return PaymentIntent(
        id=row["id"],
        status=IntentStatus(row["status"]),
        amount=row["amount"],
        currency=row["currency"],
        capture_method=CaptureMethod(row["capture_method"]),
        purpose=Purpose(row["purpose"]),
        payment_method=row["payment_method"],
        gateway=row["gateway"],
        destination_account=row["destination_account"],
        customer=row["customer"],
        description=row["description"],
        metadata=orjson.loads(row["metadata"]),
        return_url=row["return_url"],
        created_by_key_id=row["created_by_key_id"],
        created_by_principal=row["created_by_principal"],
        idempotency_key=row["idempotency_key"],
        action_key=row["action_key"],
        attempt=row["attempt"],
        pending_op=PendingOp(row["pending_op"]) if row["pending_op"] else None,
        pending_key=row["pending_key"],
        pending_amount=row["pending_amount"],
        pending_since_us=row["pending_since_us"],
        authorize_key=row["authorize_key"],
        charge_id=row["charge_id"],
        amount_capturable=row["amount_capturable"],
        amount_received=row["amount_received"],
        amount_refunded=row["amount_refunded"],
        last_error_code=row["last_error_code"],
        last_error_message=row["last_error_message"],
        last_decline_code=row["last_decline_code"],
        next_action_url=row["next_action_url"],
        card_brand=row["card_brand"],
        card_last4=row["card_last4"],
        card_fingerprint=row["card_fingerprint"],
        card_country=row["card_country"],
        authorization_expires_us=row["authorization_expires_us"],
        review_id=row["review_id"],
        canceled_reason=row["canceled_reason"],
        created_us=row["created_us"],
        updated_us=row["updated_us"],
        version=row["version"],
    )


def _intent_values(intent: PaymentIntent) -> dict[str, Any]:
    values = {c.name: getattr(intent, c.name) for c in payment_intents.columns}
    values["metadata"] = orjson.dumps(intent.metadata, option=orjson.OPT_SORT_KEYS).decode()
    for name in ("status", "capture_method", "purpose", "pending_op"):
        value = values[name]
        values[name] = None if value is None else value.value
    return values


async def insert_intent(uow: UnitOfWork, intent: PaymentIntent) -> None:
    await insert_row(uow, payment_intents, _intent_values(intent))


async def insert_intent_with(uow: UnitOfWork, intent: PaymentIntent, *, along: Along) -> None:
    """:func:`insert_intent` and the INSERTs ``along`` (their parameters named apart from
    ``intent_…`` and each other: ``audit_…``, ``webhook_…``) in one statement (PostgreSQL
    only)."""
    await insert_row_with(
        uow, payment_intents, _intent_values(intent), prefix="intent_", along=along
    )


async def save_intent_with(
    uow: UnitOfWork, intent: PaymentIntent, *, expected_version: int, along: Along
) -> bool:
    """:func:`save_intent` and the INSERTs ``along`` in one statement (PostgreSQL only: data-
    modifying CTEs). They run whether or not the version matches: on False the caller rolls
    back."""
    return await update_versioned_with(
        uow, payment_intents, _intent_values(intent), expected_version=expected_version,
        prefix="intent_", along=along,
    )  # fmt: skip


@functools.cache
def _get_intent(locked: bool) -> sa.Select[Any]:
    """Built once (a statement built per call costs a cache key derived from its values)."""
    query = sa.select(payment_intents).where(payment_intents.c.id == sa.bindparam("intent_id"))
    return query.with_for_update() if locked else query


async def get_intent(
    uow: UnitOfWork, intent_id: str, *, for_update: bool = False
) -> PaymentIntent | None:
    query = _get_intent(for_update and uow.is_postgres)
    row = (await uow.conn.execute(query, {"intent_id": intent_id})).mappings().first()
    return None if row is None else _intent(row)


_BY_REQUEST = sa.select(payment_intents).where(
    payment_intents.c.created_by_key_id == sa.bindparam("key_id"),
    payment_intents.c.idempotency_key == sa.bindparam("idempotency_key"),
)


async def find_intent_by_request(
    uow: UnitOfWork, key_id: str, idempotency_key: str
) -> PaymentIntent | None:
    params = {"key_id": key_id, "idempotency_key": idempotency_key}
    row = (await uow.conn.execute(_BY_REQUEST, params)).mappings().first()
    return None if row is None else _intent(row)


async def save_intent(uow: UnitOfWork, intent: PaymentIntent, *, expected_version: int) -> bool:
    """Write ``intent`` if nobody changed it since ``expected_version``; False otherwise."""
    return await update_versioned(
        uow, payment_intents, _intent_values(intent), expected_version=expected_version
    )


async def intents_in(
    uow: UnitOfWork,
    statuses: set[IntentStatus],
    *,
    updated_before_us: int,
    limit: int,
    after: Key | None = None,
) -> list[PaymentIntent]:
    """Intents in ``statuses`` untouched since ``updated_before_us``, by (``updated_us``, id),
    from after ``after`` (the janitor's queues, read round-robin: :mod:`hammerlock.db.queues`)."""
    t = payment_intents
    rows = (
        (
            await uow.conn.execute(
                sa.select(t)
                .where(
                    t.c.status.in_([s.value for s in statuses]),
                    t.c.updated_us <= updated_before_us,
                    *after_key(t.c.updated_us, t.c.id, after),
                )
                .order_by(t.c.updated_us, t.c.id)
                .limit(limit)
            )
        )
        .mappings()
        .all()
    )
    return [_intent(r) for r in rows]


async def authorizations_expiring(
    uow: UnitOfWork, *, before_us: int, limit: int, after: Key | None = None
) -> list[PaymentIntent]:
    """Authorizations lapsing before ``before_us``, by (``authorization_expires_us``, id), from
    after ``after``."""
    t = payment_intents
    rows = (
        (
            await uow.conn.execute(
                sa.select(t)
                .where(
                    t.c.status == IntentStatus.REQUIRES_CAPTURE.value,
                    t.c.authorization_expires_us <= before_us,
                    *after_key(t.c.authorization_expires_us, t.c.id, after),
                )
                .order_by(t.c.authorization_expires_us, t.c.id)
                .limit(limit)
            )
        )
        .mappings()
        .all()
    )
    return [_intent(r) for r in rows]


async def count_recent(
    uow: UnitOfWork,
    *,
    fingerprint: str | None,
    customer: str | None,
    since_us: int,
    excluding: str,
) -> tuple[int, int]:
    """Other payments by this card and by this customer since ``since_us`` (velocity rules)."""
    t = payment_intents
    by_card = by_customer = 0
    if fingerprint:
        by_card = (
            await uow.conn.execute(
                sa.select(sa.func.count())
                .select_from(t)
                .where(
                    t.c.card_fingerprint == fingerprint,
                    t.c.created_us >= since_us,
                    t.c.id != excluding,
                )
            )
        ).scalar_one()
    if customer:
        by_customer = (
            await uow.conn.execute(
                sa.select(sa.func.count())
                .select_from(t)
                .where(t.c.customer == customer, t.c.created_us >= since_us, t.c.id != excluding)
            )
        ).scalar_one()
    return int(by_card), int(by_customer)


async def customer_has_history(uow: UnitOfWork, customer: str, before_us: int) -> bool:
    t = payment_intents
    row = (
        await uow.conn.execute(
            sa.select(t.c.id)
            .where(
                t.c.customer == customer,
                t.c.status == IntentStatus.SUCCEEDED.value,
                t.c.created_us < before_us,
            )
            .limit(1)
        )
    ).first()
    return row is not None


# -- refunds ------------------------------------------------------------------------------------


def _refund(row: RowMapping) -> Refund:
    return Refund(
        id=row["id"],
        payment_intent=row["payment_intent"],
        amount=row["amount"],
        currency=row["currency"],
        reason=RefundReason(row["reason"]),
        status=RefundStatus(row["status"]),
        refund_key=row["refund_key"],
        gateway_refund_id=row["gateway_refund_id"],
        review_id=row["review_id"],
        failure_code=row["failure_code"],
        created_by_key_id=row["created_by_key_id"],
        idempotency_key=row["idempotency_key"],
        created_us=row["created_us"],
        updated_us=row["updated_us"],
    )


async def insert_refund(uow: UnitOfWork, values: dict[str, Any]) -> None:
    await insert_row(uow, payment_refunds, values)


async def get_refund(
    uow: UnitOfWork, refund_id: str, *, for_update: bool = False
) -> tuple[Refund, dict[str, Any]] | None:
    query = sa.select(payment_refunds).where(payment_refunds.c.id == refund_id)
    if for_update and uow.is_postgres:
        query = query.with_for_update()
    row = (await uow.conn.execute(query)).mappings().first()
    return None if row is None else (_refund(row), dict(row))


async def find_refund_by_request(
    uow: UnitOfWork, key_id: str, idempotency_key: str
) -> Refund | None:
    t = payment_refunds
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
    return None if row is None else _refund(row)


async def update_refund(
    uow: UnitOfWork, refund_id: str, expected_version: int, **values: Any
) -> bool:
    t = payment_refunds
    result = await uow.conn.execute(
        t.update()
        .where(t.c.id == refund_id, t.c.version == expected_version)
        .values(version=expected_version + 1, **values)
    )
    return bool(result.rowcount == 1)


async def refunds_of(uow: UnitOfWork, intent_id: str) -> list[Refund]:
    t = payment_refunds
    rows = (
        (
            await uow.conn.execute(
                sa.select(t).where(t.c.payment_intent == intent_id).order_by(t.c.created_us)
            )
        )
        .mappings()
        .all()
    )
    return [_refund(r) for r in rows]


async def refunds_reserved(uow: UnitOfWork, intent_id: str) -> int:
    """Refunded or on its way (pending, in review): what a new refund must stay within."""
    t = payment_refunds
    total = (
        await uow.conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(t.c.amount), 0)).where(
                t.c.payment_intent == intent_id,
                t.c.status.in_(
                    [
                        RefundStatus.PENDING.value,
                        RefundStatus.REQUIRES_REVIEW.value,
                        RefundStatus.SUCCEEDED.value,
                    ]
                ),
            )
        )
    ).scalar_one()
    return int(total)


async def pending_refunds(
    uow: UnitOfWork, *, before_us: int, limit: int, after: Key | None = None
) -> list[Key]:
    """``(pending_since_us, id)`` of refunds pending since before ``before_us``, in that order,
    from after ``after``."""
    t = payment_refunds
    rows = await uow.conn.execute(
        sa.select(t.c.pending_since_us, t.c.id)
        .where(
            t.c.status == RefundStatus.PENDING.value,
            t.c.pending_since_us <= before_us,
            *after_key(t.c.pending_since_us, t.c.id, after),
        )
        .order_by(t.c.pending_since_us, t.c.id)
        .limit(limit)
    )
    return [(r[0], r[1]) for r in rows]


async def record_gateway_event(
    uow: UnitOfWork, gateway: str, event_id: str, event_type: str, now_us: int
) -> bool:
    """True the first time this gateway event is seen; False for a duplicate."""
    existing = (
        await uow.conn.execute(
            sa.select(gateway_events.c.event_id).where(
                gateway_events.c.gateway == gateway, gateway_events.c.event_id == event_id
            )
        )
    ).first()
    if existing is not None:
        return False
    await uow.conn.execute(
        gateway_events.insert().values(
            gateway=gateway, event_id=event_id, type=event_type, received_us=now_us
        )
    )
    return True

"""The webhook tables and their queries. Only the webhooks package imports this module.

``webhook_events`` is the outbox: a row is inserted in the caller's transaction and its delivery
columns change afterwards. A deliverer *claims* due rows (``status = 'pending'`` and
``next_attempt_us <= now``) by moving ``next_attempt_us`` past the end of the claim and setting
``claim_token``: that per-event lease keeps other deliverers off the row while the attempt is in
flight (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so concurrent claimers take disjoint rows;
SQLite: the claim runs in a ``BEGIN IMMEDIATE`` transaction, so claimers queue).
``webhook_attempts`` is append-only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa

from hammerlock.db.metadata import metadata
from hammerlock.db.uow import UnitOfWork
from hammerlock.webhooks.model import EventStatus

__all__ = [
    "EVENT_INSERT",
    "AttemptRow",
    "ClaimedEvent",
    "EventRow",
    "attempts_of",
    "claim_due",
    "event_by_id",
    "event_params",
    "expired_due",
    "finish",
    "insert_attempts",
    "insert_event",
    "reschedule",
    "select_events",
    "webhook_attempts",
    "webhook_events",
]

_SEQ = sa.BigInteger().with_variant(sa.Integer, "sqlite")

webhook_events = sa.Table(
    "webhook_events",
    metadata,
    sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("created_us", sa.BigInteger, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_us", sa.BigInteger, nullable=False),
    sa.Column("claim_token", sa.String(32), nullable=True),
    sa.Column("finished_us", sa.BigInteger, nullable=True),
    sa.Index("ix_webhook_events_status_next_attempt_us", "status", "next_attempt_us"),
    sa.Index("ix_webhook_events_type", "type", "seq"),
)

webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), sa.ForeignKey("webhook_events.id"), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("ts_us", sa.BigInteger, nullable=False),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("error", sa.String(200), nullable=True),
    sa.Column("duration_ms", sa.Integer, nullable=False),
    sa.UniqueConstraint("event_id", "attempt", name="uq_webhook_attempts_event_id_attempt"),
)


class EventRow(NamedTuple):
    seq: int
    id: str
    type: str
    created_us: int
    payload: str
    status: str
    attempts: int
    next_attempt_us: int
    finished_us: int | None


class ClaimedEvent(NamedTuple):
    id: str
    created_us: int
    payload: str
    attempt: int  # the number of the attempt about to be made (1-based)


class AttemptRow(NamedTuple):
    event_id: str
    attempt: int
    ts_us: int
    status_code: int | None
    error: str | None
    duration_ms: int


_E = webhook_events.c
_EVENT_COLUMNS = (
    _E.seq,
    _E.id,
    _E.type,
    _E.created_us,
    _E.payload,
    _E.status,
    _E.attempts,
    _E.next_attempt_us,
    _E.finished_us,
)


# One new event as a constant statement with named parameters (``webhook_`` + column): its
# compiled form is cached (``.values(...)`` with the values bound in it costs a cache key on every
# call), and a caller may run it inside a statement of its own, as a PostgreSQL CTE.
EVENT_INSERT = webhook_events.insert().values(
    {
        name: sa.bindparam(f"webhook_{name}", type_=webhook_events.c[name].type)
        for name in ("id", "type", "created_us", "payload", "status", "attempts", "next_attempt_us")
    }
)


def event_params(
    *, event_id: str, event_type: str, created_us: int, payload: str
) -> dict[str, Any]:
    """The parameters of :data:`EVENT_INSERT` for one new (pending) event."""
    return {
        "webhook_id": event_id,
        "webhook_type": event_type,
        "webhook_created_us": created_us,
        "webhook_payload": payload,
        "webhook_status": EventStatus.PENDING.value,
        "webhook_attempts": 0,
        "webhook_next_attempt_us": created_us,
    }


async def insert_event(
    uow: UnitOfWork, *, event_id: str, event_type: str, created_us: int, payload: str
) -> None:
    await uow.conn.execute(
        EVENT_INSERT,
        event_params(
            event_id=event_id, event_type=event_type, created_us=created_us, payload=payload
        ),
    )


async def claim_due(
    uow: UnitOfWork,
    *,
    now_us: int,
    created_after_us: int,
    limit: int,
    claim_until_us: int,
    token: str,
) -> list[ClaimedEvent]:
    """Claim up to ``limit`` due events created after ``created_after_us`` (oldest due first);
    their attempt counters move on."""
    query = (
        sa.select(_E.id, _E.created_us, _E.payload, _E.attempts)
        .where(
            _E.status == EventStatus.PENDING.value,
            _E.next_attempt_us <= now_us,
            _E.created_us > created_after_us,
        )
        .order_by(_E.next_attempt_us, _E.seq)
        .limit(limit)
    )
    if uow.is_postgres:
        query = query.with_for_update(skip_locked=True)
    rows = (await uow.conn.execute(query)).all()
    if not rows:
        return []
    await uow.conn.execute(
        webhook_events.update()
        .where(_E.id.in_([r.id for r in rows]))
        .values(claim_token=token, next_attempt_us=claim_until_us, attempts=_E.attempts + 1)
    )
    return [ClaimedEvent(r.id, int(r.created_us), r.payload, int(r.attempts) + 1) for r in rows]


async def expired_due(
    uow: UnitOfWork, *, now_us: int, created_until_us: int, limit: int
) -> list[tuple[str, int]]:
    """Due (unclaimed) pending events created at or before ``created_until_us``: (id, attempts)."""
    query = (
        sa.select(_E.id, _E.attempts)
        .where(
            _E.status == EventStatus.PENDING.value,
            _E.next_attempt_us <= now_us,
            _E.created_us <= created_until_us,
        )
        .order_by(_E.seq)
        .limit(limit)
    )
    if uow.is_postgres:
        query = query.with_for_update(skip_locked=True)
    return [(r.id, int(r.attempts)) for r in (await uow.conn.execute(query)).all()]


async def insert_attempts(uow: UnitOfWork, attempts: Sequence[AttemptRow]) -> None:
    if attempts:
        await uow.conn.execute(webhook_attempts.insert(), [a._asdict() for a in attempts])


async def finish(
    uow: UnitOfWork, event_id: str, status: EventStatus, *, now_us: int, token: str | None
) -> bool:
    """Mark a pending event delivered or failed; whether it was still pending.

    With ``token``, only while the caller's claim holds (a stale deliverer cannot fail an event
    another is retrying). Without: a 2xx is the truth whoever got it, and an event found
    expired while due has no live claim.
    """
    where = [_E.id == event_id, _E.status == EventStatus.PENDING.value]
    if token is not None:
        where.append(_E.claim_token == token)
    done = await uow.conn.execute(
        webhook_events.update()
        .where(*where)
        .values(status=status.value, finished_us=now_us, claim_token=None)
    )
    return done.rowcount == 1


async def reschedule(uow: UnitOfWork, event_id: str, *, token: str, next_attempt_us: int) -> bool:
    """Set the next attempt of a pending event this caller still holds the claim on."""
    moved = await uow.conn.execute(
        webhook_events.update()
        .where(
            _E.id == event_id,
            _E.status == EventStatus.PENDING.value,
            _E.claim_token == token,
        )
        .values(next_attempt_us=next_attempt_us, claim_token=None)
    )
    return moved.rowcount == 1


def _event(row: Any) -> EventRow:
    return EventRow(
        seq=int(row.seq),
        id=row.id,
        type=row.type,
        created_us=int(row.created_us),
        payload=row.payload,
        status=row.status,
        attempts=int(row.attempts),
        next_attempt_us=int(row.next_attempt_us),
        finished_us=None if row.finished_us is None else int(row.finished_us),
    )


async def select_events(
    uow: UnitOfWork,
    *,
    before_seq: int | None,
    limit: int,
    event_type: str | None = None,
    status: EventStatus | None = None,
) -> list[EventRow]:
    """Newest first: events with ``seq < before_seq`` matching the filters, at most ``limit``."""
    query = sa.select(*_EVENT_COLUMNS).order_by(_E.seq.desc()).limit(limit)
    if before_seq is not None:
        query = query.where(_E.seq < before_seq)
    if event_type is not None:
        query = query.where(_E.type == event_type)
    if status is not None:
        query = query.where(_E.status == status.value)
    return [_event(r) for r in (await uow.conn.execute(query)).all()]


async def event_by_id(uow: UnitOfWork, event_id: str) -> EventRow | None:
    row = (await uow.conn.execute(sa.select(*_EVENT_COLUMNS).where(_E.id == event_id))).first()
    return None if row is None else _event(row)


async def attempts_of(uow: UnitOfWork, event_id: str, *, limit: int) -> list[AttemptRow]:
    a = webhook_attempts.c
    rows = (
        await uow.conn.execute(
            sa.select(a.event_id, a.attempt, a.ts_us, a.status_code, a.error, a.duration_ms)
            .where(a.event_id == event_id)
            .order_by(a.attempt)
            .limit(limit)
        )
    ).all()
    return [
        AttemptRow(
            r.event_id,
            int(r.attempt),
            int(r.ts_us),
            r.status_code,
            r.error,
            int(r.duration_ms),
        )
        for r in rows
    ]

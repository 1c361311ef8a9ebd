"""Recording webhook events in the caller's unit of work, and reading them back.

:func:`enqueue` writes the event in the transaction of the change it announces (the
transactional outbox): a payment's new state and its ``payment_intent.succeeded`` commit
together or not at all. The deliverer (:mod:`hammerlock.webhooks.deliverer`) sends it later,
at least once; receivers deduplicate by the event's ``id``. Events are delivered in no
particular order (a retried event may arrive after a newer one): receivers order by ``created``
or re-fetch the object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from hammerlock.db.uow import UnitOfWork
from hammerlock.webhooks import storage
from hammerlock.webhooks.errors import WebhookEventNotFound
from hammerlock.webhooks.model import EventStatus, WebhookEvent, new_event_id
from hammerlock.webhooks.storage import AttemptRow, EventRow

__all__ = [
    "MAX_ATTEMPTS_SHOWN",
    "EventDetail",
    "Page",
    "enqueue",
    "event_insert",
    "get_event",
    "list_events",
]

MAX_ATTEMPTS_SHOWN = 100  # an event is retried about 18 times over 3 days


async def enqueue(
    uow: UnitOfWork, event_type: str, data: Mapping[str, Any], *, ts_us: int
) -> WebhookEvent:
    """Record a webhook event in ``uow``'s transaction; it is sent once that commits.

    Raises ``ValueError`` for a malformed type or an oversized payload (programming errors).
    """
    event = WebhookEvent(id=new_event_id(), type=event_type, created_us=ts_us, data=data)
    await storage.insert_event(
        uow,
        event_id=event.id,
        event_type=event.type,
        created_us=event.created_us,
        payload=event.body().decode(),
    )
    return event


def event_insert(
    event_type: str, data: Mapping[str, Any], *, ts_us: int
) -> tuple[sa.Insert, dict[str, Any]]:
    """:func:`enqueue` as a statement and its parameters, for a caller that runs it inside one
    of its own (a PostgreSQL CTE: no round trip of its own). The statement is the same object
    every time and its parameters are named ``webhook_…``. The caller must run it, or call
    :func:`enqueue`, in the same transaction. Raises ``ValueError`` as :func:`enqueue` does."""
    event = WebhookEvent(id=new_event_id(), type=event_type, created_us=ts_us, data=data)
    return storage.EVENT_INSERT, storage.event_params(
        event_id=event.id,
        event_type=event.type,
        created_us=event.created_us,
        payload=event.body().decode(),
    )


@dataclass(frozen=True, slots=True)
class Page:
    items: list[EventRow]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class EventDetail:
    event: EventRow
    attempts: list[AttemptRow]

    @property
    def payload(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.event.payload)
        return parsed


async def list_events(
    uow: UnitOfWork,
    *,
    cursor: int | None,
    limit: int,
    event_type: str | None = None,
    status: EventStatus | None = None,
) -> Page:
    """Newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    rows = await storage.select_events(
        uow, before_seq=cursor, limit=limit + 1, event_type=event_type, status=status
    )
    items = rows[:limit]
    more = len(rows) > limit
    return Page(items=items, next_cursor=str(items[-1].seq) if more else None)


async def get_event(uow: UnitOfWork, event_id: str) -> EventDetail:
    row = await storage.event_by_id(uow, event_id)
    if row is None:
        raise WebhookEventNotFound(f"no webhook event {event_id}")
    attempts = await storage.attempts_of(uow, event_id, limit=MAX_ATTEMPTS_SHOWN)
    return EventDetail(event=row, attempts=attempts)

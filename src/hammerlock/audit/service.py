"""Recording audit events inside the caller's unit of work."""

from __future__ import annotations

from collections.abc import Sequence

import rfc8785

from hammerlock.audit.model import MAX_DETAILS_BYTES, AuditEvent
from hammerlock.audit.storage import audit_outbox
from hammerlock.db.uow import UnitOfWork

__all__ = ["canonical_bytes", "record", "record_many"]


def canonical_bytes(event: AuditEvent) -> bytes:
    """RFC 8785 (JCS) bytes of the event object."""
    return rfc8785.dumps(event.to_json_object())


def _row(event: AuditEvent) -> dict[str, object]:
    body = canonical_bytes(event)
    if len(body) > MAX_DETAILS_BYTES * 2:
        raise ValueError(f"audit event {event.action} is too large ({len(body)} bytes)")
    return {
        "event_id": event.event_id,
        "ts_us": event.ts_us,
        "action": event.action,
        "event": body.decode(),
    }


async def record(uow: UnitOfWork, event: AuditEvent) -> None:
    """Write ``event`` to the outbox; it commits or rolls back with the caller's change."""
    await uow.conn.execute(audit_outbox.insert(), [_row(event)])


async def record_many(uow: UnitOfWork, events: Sequence[AuditEvent]) -> None:
    if events:
        await uow.conn.execute(audit_outbox.insert(), [_row(e) for e in events])

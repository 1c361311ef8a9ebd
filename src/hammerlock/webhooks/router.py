"""Webhook log HTTP routes under ``/v1/webhook_events`` (the only module here that knows HTTP).

Admins and operators (``webhooks.read``) see what was sent to the marketplace's endpoint and how
each delivery attempt went: newest first, with the payload exactly as sent.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, StringConstraints

from hammerlock.api.deps import get_container
from hammerlock.api.policy import policy
from hammerlock.api.route import HammerlockRoute
from hammerlock.api.schemas import MAX_SAFE_INT, ListEnvelope
from hammerlock.clock import format_rfc3339
from hammerlock.security.permissions import Permission
from hammerlock.webhooks import service
from hammerlock.webhooks.model import MAX_EVENT_TYPE_LENGTH, EventStatus
from hammerlock.webhooks.storage import AttemptRow, EventRow

__all__ = ["router"]

router = APIRouter(route_class=HammerlockRoute, tags=["webhooks"], prefix="/v1/webhook_events")

_POLICY = policy(Permission.WEBHOOKS_READ)
EventId = Annotated[str, StringConstraints(pattern=r"^we_[A-Za-z0-9]{1,61}$")]
EventType = Annotated[
    str, StringConstraints(max_length=MAX_EVENT_TYPE_LENGTH, pattern=r"^[a-z0-9_.]+$")
]


class WebhookAttemptOut(BaseModel):
    attempt: int
    at: str
    status_code: int | None
    error: str | None
    duration_ms: int


class WebhookEventOut(BaseModel):
    id: str
    type: str
    created: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: str | None  # pending only: when the next attempt is due (or its claim ends)
    finished_at: str | None  # delivered or failed: when


class WebhookEventDetailOut(WebhookEventOut):
    payload: dict[str, Any]  # the body as sent: {"id", "type", "created", "data"}
    delivery_attempts: list[WebhookAttemptOut]


def _fields(row: EventRow) -> dict[str, Any]:
    pending = row.status == EventStatus.PENDING.value
    return {
        "id": row.id,
        "type": row.type,
        "created": format_rfc3339(row.created_us),
        "status": row.status,
        "attempts": row.attempts,
        "next_attempt_at": format_rfc3339(row.next_attempt_us) if pending else None,
        "finished_at": None if row.finished_us is None else format_rfc3339(row.finished_us),
    }


def _attempt(a: AttemptRow) -> WebhookAttemptOut:
    return WebhookAttemptOut(
        attempt=a.attempt,
        at=format_rfc3339(a.ts_us),
        status_code=a.status_code,
        error=a.error,
        duration_ms=a.duration_ms,
    )


@router.get("", openapi_extra=_POLICY)
async def list_webhook_events(
    request: Request,
    *,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None, Query(max_length=16, pattern=r"^[0-9]+$", description="next_cursor")
    ] = None,
    type: Annotated[EventType | None, Query()] = None,  # noqa: A002 - the API's field name
    status: Annotated[EventStatus | None, Query()] = None,
) -> ListEnvelope[WebhookEventOut]:
    """Webhook events, newest first, with their delivery state."""
    after = None if cursor is None else min(int(cursor), MAX_SAFE_INT)
    async with get_container(request).db.transaction(write=False) as uow:
        page = await service.list_events(
            uow, cursor=after, limit=limit, event_type=type, status=status
        )
    return ListEnvelope[WebhookEventOut](
        data=[WebhookEventOut(**_fields(row)) for row in page.items],
        next_cursor=page.next_cursor,
    )


@router.get("/{event_id}", openapi_extra=_POLICY)
async def get_webhook_event(
    request: Request, event_id: Annotated[EventId, Path()]
) -> WebhookEventDetailOut:
    """One webhook event, its payload as sent, and every delivery attempt (oldest first)."""
    async with get_container(request).db.transaction(write=False) as uow:
        detail = await service.get_event(uow, event_id)
    return WebhookEventDetailOut(
        **_fields(detail.event),
        payload=detail.payload,
        delivery_attempts=[_attempt(a) for a in detail.attempts],
    )

"""The public JSON shape of intents, refunds and reviews: one place, used by the routes and by
the outbound webhooks, so a webhook's ``data`` is exactly what ``GET`` returns."""

from __future__ import annotations

from typing import Any

from hammerlock.clock import format_rfc3339
from hammerlock.payments.model import IntentStatus, PaymentIntent, Refund, Review

__all__ = ["intent_json", "refund_json", "review_json"]


def _ts(us: int | None) -> str | None:
    return None if us is None else format_rfc3339(us)


def review_json(review: Review) -> dict[str, Any]:
    return {
        "id": review.id,
        "object": "review",
        "payment_intent": review.payment_intent,
        "refund": review.refund_id,
        "status": review.status.value,
        "approvals_required": review.approvals_required,
        "approvals": [
            {"reviewer_id": a.reviewer_id, "at": format_rfc3339(a.at_us)} for a in review.approvals
        ],
        "score": review.score,
        "reasons": list(review.reasons),
        "expires_at": format_rfc3339(review.expires_us),
        "decided_by": review.decided_by,
        "decided_at": _ts(review.decided_us),
        "note": review.note,
        "created": format_rfc3339(review.created_us),
    }


def intent_json(intent: PaymentIntent, review: Review | None = None) -> dict[str, Any]:
    error = None
    if intent.last_error_code is not None:
        error = {
            "code": intent.last_error_code,
            "message": intent.last_error_message,
            "decline_code": intent.last_decline_code,
        }
    next_action = None
    if intent.status is IntentStatus.REQUIRES_ACTION and intent.next_action_url:
        next_action = {"type": "three_d_secure", "url": intent.next_action_url}
    card = None
    if intent.card_last4 is not None:
        card = {
            "brand": intent.card_brand,
            "last4": intent.card_last4,
            "country": intent.card_country,
        }
    return {
        "id": intent.id,
        "object": "payment_intent",
        "status": intent.status.value,
        "amount": intent.amount,
        "currency": intent.currency,
        "capture_method": intent.capture_method.value,
        "payment_method": intent.payment_method,
        "customer": intent.customer,
        "description": intent.description,
        "metadata": intent.metadata,
        "purpose": intent.purpose.value,
        "gateway": intent.gateway,
        "amount_capturable": intent.amount_capturable,
        "amount_received": intent.amount_received,
        "amount_refunded": intent.amount_refunded,
        "last_payment_error": error,
        "next_action": next_action,
        "review": None if review is None else review_json(review),
        "card": card,
        "processing": (
            None
            if intent.pending_op is None or intent.status is not IntentStatus.PROCESSING
            else {"operation": intent.pending_op.value}
        ),
        "authorization_expires_at": _ts(intent.authorization_expires_us),
        "canceled_reason": intent.canceled_reason,
        "return_url": intent.return_url,
        "created": format_rfc3339(intent.created_us),
        "updated": format_rfc3339(intent.updated_us),
    }


def refund_json(refund: Refund) -> dict[str, Any]:
    return {
        "id": refund.id,
        "object": "refund",
        "payment_intent": refund.payment_intent,
        "amount": refund.amount,
        "currency": refund.currency,
        "reason": refund.reason.value,
        "status": refund.status.value,
        "review": refund.review_id,
        "failure_code": refund.failure_code,
        "created": format_rfc3339(refund.created_us),
        "updated": format_rfc3339(refund.updated_us),
    }

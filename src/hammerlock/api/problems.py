"""RFC 9457 problem details, and the one table that maps error codes to HTTP statuses.

Every error response is ``application/problem+json`` with ``type``, ``title``, ``status``,
``detail`` and a stable ``code``. No stack trace, SQL or secret ever reaches a client.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

__all__ = ["PROBLEM_TYPE_BASE", "STATUS_BY_CODE", "ApiError", "problem_response", "status_for"]

PROBLEM_TYPE_BASE = "https://hammerlock.dev/problems/"
MEDIA_TYPE = "application/problem+json"

# code -> HTTP status. Domain errors raise with a code; only this table knows HTTP.
STATUS_BY_CODE: dict[str, int] = {
    # request shape
    "malformed_json": 400,
    "request_incomplete": 400,
    "pan_not_allowed": 400,
    "idempotency_key_required": 400,
    "idempotency_key_invalid": 400,
    "validation_error": 422,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "cors_rejected": 400,
    "not_found": 404,
    "method_not_allowed": 405,
    # auth
    "unauthenticated": 401,
    "forbidden": 403,
    "invalid_role": 422,
    "key_not_found": 404,
    # idempotency
    "idempotency_key_reuse": 422,
    "idempotency_key_in_flight": 409,
    # money
    "unknown_currency": 422,
    "currency_mismatch": 422,
    "invalid_amount": 422,
    # ledger
    "account_not_found": 404,
    "transfer_not_found": 404,
    "account_reserved": 403,
    "ledger_busy": 503,
    "bids_busy": 503,
    # audit
    "tree_head_not_found": 404,
    "audit_proof_unavailable": 404,
    "invalid_range": 422,
    # payments and reviews
    "payment_intent_not_found": 404,
    "refund_not_found": 404,
    "review_not_found": 404,
    "invalid_state_transition": 409,
    "payment_method_required": 422,
    "payment_method_invalid": 422,
    "amount_too_large": 422,
    "charge_already_refunded": 409,
    "unknown_gateway": 422,
    "already_approved": 409,
    "self_review_forbidden": 403,
    "webhook_signature_invalid": 400,
    # escrow: orders after a lot closes
    "order_not_found": 404,
    "invalid_tracking_number": 422,
    "refund_exceeds_total": 422,
    "refund_out_of_range": 422,
    "second_chance_not_open": 409,
    "invalid_payout_action": 422,
    # parties and auctions
    "party_not_found": 404,
    "lot_not_found": 404,
    "bid_not_found": 404,
    "lot_not_open": 409,
    "bid_too_low": 422,
    "bid_too_high": 422,
    "own_lot_bid": 403,
    "card_required": 409,
    "deposit_required": 409,
    "deposit_not_required": 409,
    "buy_now_unavailable": 409,
    "invalid_lot": 422,
    # card vault (docs/security.md "Card vault")
    "invalid_number": 422,
    "invalid_expiry": 422,
    "invalid_cvc": 422,
    "unsupported_brand": 422,
    "rate_limited": 429,
    "token_not_found": 404,
    "gateway_not_found": 404,
    "charge_not_found": 404,
    "payout_not_found": 404,
    "gateway_timeout": 504,
    "gateway_unavailable": 503,
    "payout_lookup_failed": 503,
    "gateway_rejected": 422,
    # generic
    "service_unavailable": 503,
    "internal_error": 500,
}

TITLES: dict[int, str] = {
    400: "Bad request",
    401: "Unauthenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
    504: "Gateway timeout",
}


def status_for(code: str) -> int:
    return STATUS_BY_CODE.get(code, 400)


class ApiError(Exception):
    """An error raised by the HTTP layer itself (not a domain)."""

    def __init__(self, code: str, detail: str, *, title: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.code = code
        self.status = status_for(code)
        self.detail = detail
        self.title = title or TITLES.get(self.status, "Error")
        self.extra = extra


def problem_response(
    *,
    code: str,
    detail: str,
    title: str | None = None,
    status: int | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    status = status or status_for(code)
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title or TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    body.update(extra)
    return Response(
        content=orjson.dumps(body), status_code=status, media_type=MEDIA_TYPE, headers=headers
    )

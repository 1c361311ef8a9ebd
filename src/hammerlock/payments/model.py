"""Payment intents as values: states, the transition table, and pure decisions. No I/O.

States (Stripe's model, plus an honest unknown)::

    requires_payment_method ─┐
    requires_confirmation ───┴─► processing ──► requires_action (3-D Secure) ──► processing
                                     │                                            │
                                     ├─► requires_payment_method (declined)  ◄────┤
                                     ├─► requires_review ─► processing (capture) ─► succeeded
                                     │                   └► processing (void) ───► canceled
                                     ├─► requires_capture ─► processing (capture) ─► succeeded
                                     └─► (a timeout or crash leaves processing; the janitor
                                          asks the gateway by the gateway key and finishes)

``processing`` always names the gateway operation in flight (``pending_op``): ``authorize``,
``capture`` or ``void``. The operation and its gateway key are committed *before* the call, so a
retry, the janitor and a crash recovery all resume the same operation with the same key.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "AUTHORIZATION_DAYS",
    "DEFAULT_AUTHORIZATION_DAYS",
    "ID_PATTERN",
    "TERMINAL",
    "Approval",
    "CaptureMethod",
    "IntentStatus",
    "PaymentIntent",
    "PendingOp",
    "Purpose",
    "Refund",
    "RefundReason",
    "RefundStatus",
    "Review",
    "ReviewStatus",
    "authorization_days",
    "can_cancel",
    "country_alpha2",
    "gateway_key",
    "new_id",
]

ID_PATTERN: Final = re.compile(r"^[a-z]{2,4}_[A-Za-z0-9]{8,64}$")


class IntentStatus(enum.StrEnum):
    REQUIRES_PAYMENT_METHOD = "requires_payment_method"
    REQUIRES_CONFIRMATION = "requires_confirmation"
    REQUIRES_ACTION = "requires_action"
    PROCESSING = "processing"
    REQUIRES_REVIEW = "requires_review"
    REQUIRES_CAPTURE = "requires_capture"
    SUCCEEDED = "succeeded"
    CANCELED = "canceled"


TERMINAL: Final = frozenset({IntentStatus.SUCCEEDED, IntentStatus.CANCELED})


class PendingOp(enum.StrEnum):
    AUTHORIZE = "authorize"
    CAPTURE = "capture"
    VOID = "void"


class CaptureMethod(enum.StrEnum):
    AUTOMATIC = "automatic"
    MANUAL = "manual"


class Purpose(enum.StrEnum):
    PAYMENT = "payment"
    DEPOSIT = "deposit"  # auction deposits: never sent to risk review


class ReviewStatus(enum.StrEnum):
    OPEN = "open"
    APPROVED = "approved"
    REJECTED = "rejected"


class RefundStatus(enum.StrEnum):
    PENDING = "pending"
    REQUIRES_REVIEW = "requires_review"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class RefundReason(enum.StrEnum):
    DUPLICATE = "duplicate"
    FRAUDULENT = "fraudulent"
    REQUESTED_BY_CUSTOMER = "requested_by_customer"
    DISPUTE = "dispute"


# Card authorizations expire by brand (Visa merchant-initiated ~4 days 18 hours, customer-
# initiated 7; most others 7). We keep the conservative figure and void before it.
AUTHORIZATION_DAYS: Final = {
    "visa": 5,
    "mastercard": 7,
    "amex": 7,
    "discover": 7,
    "jcb": 7,
    "diners": 7,
    "unionpay": 7,
}
DEFAULT_AUTHORIZATION_DAYS: Final = 5


def authorization_days(brand: str | None, overrides: dict[str, int] | None = None) -> int:
    table = {**AUTHORIZATION_DAYS, **(overrides or {})}
    return table.get((brand or "").lower(), DEFAULT_AUTHORIZATION_DAYS)


# ISO 3166-1 alpha-3 → alpha-2 for the issuing countries gateways most often report in alpha-3
# (Braintree's ``country_of_issuance``). Anything else that is not alpha-2 is "unknown".
_ALPHA3: Final = {
    "USA": "US", "CAN": "CA", "GBR": "GB", "DEU": "DE", "FRA": "FR", "ITA": "IT", "ESP": "ES",
    "NLD": "NL", "BEL": "BE", "CHE": "CH", "AUT": "AT", "SWE": "SE", "NOR": "NO", "DNK": "DK",
    "FIN": "FI", "IRL": "IE", "PRT": "PT", "POL": "PL", "AUS": "AU", "NZL": "NZ", "JPN": "JP",
    "CHN": "CN", "HKG": "HK", "SGP": "SG", "IND": "IN", "BRA": "BR", "MEX": "MX", "ARE": "AE",
    "KOR": "KR", "ZAF": "ZA",
}  # fmt: skip


def country_alpha2(code: str | None) -> str | None:
    """An ISO 3166-1 alpha-2 code (upper case) from what a gateway reports, or None."""
    if not code:
        return None
    text = code.strip().upper()
    if len(text) == 2 and text.isascii() and text.isalpha():
        return text
    return _ALPHA3.get(text)


def gateway_key(intent_id: str, op: PendingOp, attempt: int) -> str:
    """The idempotency key hammerlock sends to the gateway: intent, operation and attempt.

    Derived, not random, so it can be recomputed and audited; committed before the call."""
    return f"{intent_id}.{op.value}.{attempt}"


@dataclass(frozen=True, slots=True)
class PaymentIntent:
    id: str
    status: IntentStatus
    amount: int
    currency: str
    capture_method: CaptureMethod
    purpose: Purpose
    payment_method: str | None
    gateway: str
    destination_account: str
    customer: str | None
    description: str | None
    metadata: dict[str, Any]
    return_url: str | None
    created_by_key_id: str | None
    created_by_principal: str | None
    idempotency_key: str | None
    # "<api key id>:<Idempotency-Key>" of the request that started the latest confirm, capture
    # or cancel: its retry resumes that operation instead of starting another.
    action_key: str | None
    attempt: int
    pending_op: PendingOp | None
    pending_key: str | None
    pending_amount: int | None
    pending_since_us: int | None
    authorize_key: str | None  # the gateway key of the live authorization, once there is one
    charge_id: str | None
    amount_capturable: int
    amount_received: int
    amount_refunded: int
    last_error_code: str | None
    last_error_message: str | None
    last_decline_code: str | None
    next_action_url: str | None
    card_brand: str | None
    card_last4: str | None
    card_fingerprint: str | None
    card_country: str | None
    authorization_expires_us: int | None
    review_id: str | None
    canceled_reason: str | None
    created_us: int
    updated_us: int
    version: int

    @property
    def hold_id(self) -> str:
        """The ledger's pending transfer for the live authorization."""
        return f"{self.id}:auth:{self.authorize_key}"


def can_cancel(status: IntentStatus) -> bool:
    return status in {
        IntentStatus.REQUIRES_PAYMENT_METHOD,
        IntentStatus.REQUIRES_CONFIRMATION,
        IntentStatus.REQUIRES_ACTION,
        IntentStatus.REQUIRES_REVIEW,
        IntentStatus.REQUIRES_CAPTURE,
    }


@dataclass(frozen=True, slots=True)
class Approval:
    reviewer_id: str
    at_us: int


@dataclass(frozen=True, slots=True)
class Review:
    id: str
    payment_intent: str
    refund_id: str | None
    status: ReviewStatus
    approvals_required: int
    approvals: tuple[Approval, ...]
    score: int
    reasons: tuple[dict[str, Any], ...]
    expires_us: int
    created_by_principal: str | None
    decided_by: str | None
    note: str | None
    created_us: int
    decided_us: int | None


@dataclass(frozen=True, slots=True)
class Refund:
    id: str
    payment_intent: str
    amount: int
    currency: str
    reason: RefundReason
    status: RefundStatus
    refund_key: str
    gateway_refund_id: str | None
    review_id: str | None
    failure_code: str | None
    created_by_key_id: str | None
    idempotency_key: str | None
    created_us: int
    updated_us: int


def new_id(prefix: str, now_us: int, random_hex: str) -> str:
    """``<prefix>_<time><random>``: ids sort by creation time, so list cursors follow it."""
    return f"{prefix}_{now_us:014x}{random_hex}"

"""The sandbox bank's records and their transitions, as values: no clock, no SQL, no I/O.

A transition takes a :class:`ChargeRow` and the time, and returns the new row (the same object
when nothing changes, which makes a repeated capture or void idempotent) or raises
``GatewayRejected`` with a stable code. :mod:`.store` persists rows; :mod:`.gateway` wires the two.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Final

from hammerlock.clock import format_rfc3339
from hammerlock.payments.gateways.base import ChargeStatus, DeclineCode, GatewayRejected
from hammerlock.vault.sandbox.cards import Decision, Outcome

__all__ = [
    "AUTH_EXPIRED",
    "AUTH_FAILED",
    "EVENT_TYPES",
    "ChargeRow",
    "PayoutRow",
    "RefundRow",
    "approved",
    "captured",
    "challenge_expired",
    "charge_json",
    "declined",
    "listing_json",
    "reject",
    "voided",
]


def reject(code: str, message: str) -> GatewayRejected:
    return GatewayRejected(message, code=code)


@dataclass(frozen=True, slots=True)
class ChargeRow:
    charge_id: str
    gateway_key: str
    request_hash: str
    amount: int
    currency: str
    capture_requested: bool
    status: str
    last4: str
    fingerprint: str
    created_us: int
    updated_us: int
    brand: str | None = None
    amount_captured: int = 0
    amount_refunded: int = 0
    error_code: str | None = None
    decline_code: str | None = None
    message: str | None = None
    challenge_token: str | None = None
    challenge_expires_us: int | None = None
    challenge_outcome: str | None = None
    return_url: str | None = None
    description: str | None = None
    captured_us: int | None = None
    voided_us: int | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class RefundRow:
    refund_id: str
    refund_key: str
    charge_id: str
    gateway_key: str
    amount: int
    currency: str
    status: str
    created_us: int


@dataclass(frozen=True, slots=True)
class PayoutRow:
    payout_id: str
    payout_key: str
    destination: str
    amount: int
    currency: str
    status: str
    created_us: int


EVENT_TYPES: Final = {
    ChargeStatus.REQUIRES_ACTION: "charge.requires_action",
    ChargeStatus.AUTHORIZED: "charge.authorized",
    ChargeStatus.CAPTURED: "charge.captured",
    ChargeStatus.VOIDED: "charge.voided",
    ChargeStatus.DECLINED: "charge.failed",
}
AUTH_FAILED: Final = Decision(
    Outcome.DECLINE,
    DeclineCode.AUTHENTICATION_REQUIRED,
    None,
    "3-D Secure authentication failed.",
)
AUTH_EXPIRED: Final = Decision(
    Outcome.DECLINE,
    DeclineCode.AUTHENTICATION_REQUIRED,
    "challenge_expired",
    "3-D Secure authentication was not completed in time.",
)


def approved(row: ChargeRow, now_us: int) -> ChargeRow:
    if row.capture_requested:
        return replace(
            row,
            status=ChargeStatus.CAPTURED,
            amount_captured=row.amount,
            captured_us=now_us,
            updated_us=now_us,
        )
    return replace(row, status=ChargeStatus.AUTHORIZED, updated_us=now_us)


def declined(row: ChargeRow, decision: Decision, now_us: int) -> ChargeRow:
    return replace(
        row,
        status=ChargeStatus.DECLINED,
        error_code=decision.error_code,
        decline_code=decision.decline_code,
        message=decision.message,
        updated_us=now_us,
    )


def challenge_expired(row: ChargeRow, now_us: int) -> ChargeRow:
    return replace(declined(row, AUTH_EXPIRED, now_us), challenge_outcome="expired")


def captured(row: ChargeRow, amount: int, now_us: int) -> ChargeRow:
    if row.status == ChargeStatus.CAPTURED and row.amount_captured == amount:
        return row  # the same capture again: idempotent
    if row.status != ChargeStatus.AUTHORIZED:
        raise reject("invalid_state", f"a {row.status} charge cannot be captured")
    if amount > row.amount:
        raise reject("invalid_request", f"amount exceeds the authorized {row.amount}")
    return replace(
        row,
        status=ChargeStatus.CAPTURED,
        amount_captured=amount,
        captured_us=now_us,
        updated_us=now_us,
    )


def voided(row: ChargeRow, now_us: int) -> ChargeRow:
    if row.status == ChargeStatus.VOIDED:
        return row
    if row.status == ChargeStatus.AUTHORIZED:
        return replace(row, status=ChargeStatus.VOIDED, voided_us=now_us, updated_us=now_us)
    if row.status == ChargeStatus.REQUIRES_ACTION:
        return replace(
            row,
            status=ChargeStatus.VOIDED,
            challenge_outcome="canceled",
            voided_us=now_us,
            updated_us=now_us,
        )
    raise reject("invalid_state", f"a {row.status} charge cannot be voided")


def _iso(us: int | None) -> str | None:
    return None if us is None else format_rfc3339(us)


def charge_json(row: ChargeRow) -> dict[str, Any]:
    return {
        "object": "charge",
        "id": row.charge_id,
        "gateway_key": row.gateway_key,
        "status": str(row.status),
        "amount": row.amount,
        "currency": row.currency,
        "amount_captured": row.amount_captured,
        "amount_refunded": row.amount_refunded,
        "error_code": row.error_code,
        "decline_code": row.decline_code,
        "three_d_secure": row.challenge_outcome
        or ("pending" if row.status == ChargeStatus.REQUIRES_ACTION else None),
        "card": {"brand": row.brand, "last4": row.last4},
        "created_at": _iso(row.created_us),
        "captured_at": _iso(row.captured_us),
        "voided_at": _iso(row.voided_us),
    }


def listing_json(row: ChargeRow) -> dict[str, Any]:
    """One charge for the admin listing: ``charge_id`` instead of the event object's ``id``."""
    listed = charge_json(row)
    del listed["object"]
    return {"charge_id": listed.pop("id"), **listed}

"""The gateway protocol: what hammerlock asks of a card gateway, and what it gets back.

Every adapter (``sandbox`` inside the vault, ``stripe``, ``braintree``) implements
:class:`Gateway` and passes the one contract suite. The protocol is built around *our*
idempotency key (``gateway_key``): it is derived from the payment intent id and an attempt
number, committed with the intent's ``processing`` state *before* the call, and sent to the
gateway as its idempotency key, so that

* a retry with the same key never makes a second charge (the gateway answers with the first), and
* after a crash or a timeout, :meth:`Gateway.retrieve_by_idempotency_key` asks the gateway
  what happened under that key; ``None`` means the gateway has no record of it: the charge
  never happened, and the caller re-sends with the *same* key.

Outcomes a bank decides (declines, 3-D Secure, authorizations) come back as a :class:`Charge`;
only transport-level trouble raises :class:`GatewayError`. Amounts are integer minor units.

Error tree::

    GatewayError (code, retryable)
     ├── GatewayTimeout       gateway_timeout      outcome unknown: retrieve, or re-send same key
     ├── GatewayUnavailable   gateway_unavailable  not reached / 5xx / circuit open: retry later
     └── GatewayRejected      (any other code)     the gateway refused the request itself
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Final, Protocol, runtime_checkable

__all__ = [
    "DISPUTE_CREATED",
    "AuthorizeRequest",
    "CardData",
    "CardSummary",
    "Charge",
    "ChargeStatus",
    "DeclineCode",
    "Gateway",
    "GatewayError",
    "GatewayRejected",
    "GatewayTimeout",
    "GatewayToken",
    "GatewayUnavailable",
    "Payout",
    "PayoutRequest",
    "Refund",
    "VaultToken",
    "WebhookEvent",
]


class ChargeStatus(enum.StrEnum):
    REQUIRES_ACTION = "requires_action"  # 3-D Secure challenge pending at the gateway
    AUTHORIZED = "authorized"  # funds held on the card, nothing captured yet
    CAPTURED = "captured"  # (part of) the authorization captured; the rest released
    VOIDED = "voided"  # authorization released, nothing captured
    DECLINED = "declined"  # the bank said no (see ``error_code`` / ``decline_code``)


class DeclineCode(enum.StrEnum):
    """Stable codes for what went wrong with a card (``Charge.error_code``)."""

    CARD_DECLINED = "card_declined"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    AUTHENTICATION_REQUIRED = "authentication_required"  # 3-D Secure failed or was abandoned
    PROCESSING_ERROR = "processing_error"
    EXPIRED_CARD = "expired_card"
    INCORRECT_CVC = "incorrect_cvc"


@dataclass(frozen=True, slots=True)
class VaultToken:
    """A card on file in hammerlock's vault (``tok_…``). Only the vault turns it into a number."""

    token_id: str


@dataclass(frozen=True, slots=True)
class GatewayToken:
    """The gateway's own client-side token (Stripe ``pm_…``, a Braintree nonce)."""

    value: str


@dataclass(frozen=True, slots=True)
class CardData:
    """A card number, in memory, inside the vault only. Never logged: ``repr`` masks it."""

    number: str
    exp_month: int
    exp_year: int
    cvc: str | None = None
    name: str | None = None

    def __repr__(self) -> str:
        return f"CardData(number='…{self.number[-4:]}', exp={self.exp_month:02d}/{self.exp_year})"

    __str__ = __repr__


PaymentSource = VaultToken | GatewayToken | CardData


@dataclass(frozen=True, slots=True)
class CardSummary:
    brand: str | None = None
    last4: str | None = None
    country: str | None = None
    fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class AuthorizeRequest:
    gateway_key: str  # our idempotency key for this attempt (see module docstring)
    amount: int
    currency: str
    source: PaymentSource
    capture: bool = False  # True: authorize and capture in one call (a "sale")
    return_url: str | None = None  # where a 3-D Secure challenge sends the cardholder back
    force_three_d_secure: bool = False
    description: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    # Braintree Marketplace: hold the funds in escrow at the gateway, with the platform's fee.
    hold_in_escrow: bool = False
    service_fee_amount: int | None = None


@dataclass(frozen=True, slots=True)
class Charge:
    """The gateway's record of one charge, as it stands now."""

    gateway: str
    gateway_key: str
    charge_id: str  # the gateway's own id for the charge
    status: ChargeStatus
    amount: int  # authorized amount
    currency: str
    amount_captured: int = 0
    amount_refunded: int = 0
    error_code: str | None = None  # a DeclineCode value when status is DECLINED
    decline_code: str | None = None  # the issuer's finer reason, when known
    message: str | None = None
    next_action_url: str | None = None  # the 3-D Secure challenge, when REQUIRES_ACTION
    card: CardSummary | None = None


@dataclass(frozen=True, slots=True)
class Refund:
    gateway: str
    refund_key: str
    refund_id: str
    charge_id: str
    amount: int
    currency: str
    status: str  # "succeeded" | "failed"


@dataclass(frozen=True, slots=True)
class PayoutRequest:
    payout_key: str
    amount: int
    currency: str
    destination: str  # the seller's payout destination at the gateway (an id, never a PAN)


@dataclass(frozen=True, slots=True)
class Payout:
    gateway: str
    payout_key: str
    payout_id: str
    amount: int
    currency: str
    status: str  # "paid" | "failed"; find_payout also "reversed", "partly_reversed", "duplicate"


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """An inbound gateway webhook, verified. Handlers re-fetch the charge; never trust order."""

    gateway: str
    event_id: str
    type: str
    gateway_key: str | None  # the charge's idempotency key, when the event names one
    charge_id: str | None
    created_s: int | None = None
    # A chargeback (type DISPUTE_CREATED): the cardholder's bank took ``amount`` back.
    dispute_id: str | None = None
    amount: int | None = None


DISPUTE_CREATED: Final = "charge.dispute.created"
"""The webhook type of a chargeback: the bank has taken the disputed amount back."""


class GatewayError(Exception):
    code: ClassVar[str] = "gateway_error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # type: ignore[misc]  # instance override of the class default


class GatewayTimeout(GatewayError):
    """No answer in time: the charge may or may not exist. Retrieve, or re-send the same key."""

    code = "gateway_timeout"
    retryable = True


class GatewayUnavailable(GatewayError):
    """The gateway could not be reached or answered 5xx (or its circuit breaker is open)."""

    code = "gateway_unavailable"
    retryable = True


class GatewayRejected(GatewayError):
    """The gateway refused the request itself (bad parameters, unknown charge): not retryable."""

    code = "gateway_rejected"


@runtime_checkable
class Gateway(Protocol):
    """One card gateway. Every method is idempotent under the key it is given."""

    name: str

    async def authorize(self, request: AuthorizeRequest) -> Charge: ...

    async def capture(self, gateway_key: str, amount: int) -> Charge:
        """Capture ``amount`` (≤ authorized) of the charge made under ``gateway_key``."""
        ...

    async def void(self, gateway_key: str) -> Charge: ...

    async def refund(self, gateway_key: str, refund_key: str, amount: int) -> Refund:
        """Refund ``amount`` of the captured charge; ``refund_key`` is this refund's own key."""
        ...

    async def payout(self, request: PayoutRequest) -> Payout: ...

    async def find_payout(self, payout_key: str) -> Payout | None:
        """The payout made under ``payout_key``, whatever its destination, or ``None`` when the
        gateway shows none — which is not proof that none was made (a gateway may not index
        old payouts by key): callers settle only what is found."""
        ...

    async def retrieve_by_idempotency_key(self, gateway_key: str) -> Charge | None:
        """The charge made under ``gateway_key``, or ``None`` if the gateway never saw it."""
        ...

    async def release_from_escrow(self, gateway_key: str) -> Charge:
        """Release funds held in escrow at the gateway (Braintree Marketplace); adapters
        without gateway-side escrow raise ``GatewayRejected``."""
        ...

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        """Verify and parse an inbound webhook; raises ``GatewayRejected`` when forged/stale."""
        ...

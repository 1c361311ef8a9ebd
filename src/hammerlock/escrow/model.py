"""Orders after a lot closes, as values: terms, fees, states and the transition table. No I/O.

States (docs/escrow.md)::

    awaiting_payment ──paid──► paid ──ship──► shipped ──confirm_delivery / auto_deliver──► delivered
          │                                     │                                            │
          └──default──► defaulted               └──accept──► released ◄──accept / inspection_end┤
                         (second-chance offer                                                 │
                          to the runner-up:                  refunded ◄──resolve_refund── disputed
                          a new order)                       released ◄──resolve_release──┘

``released``, ``refunded`` and ``defaulted`` are terminal: no event leaves them. A few events
stay on one (``refund_after_release`` and ``reresolve`` on ``released``, ``reresolve`` on
``refunded``): money moves, the state does not. ``paid`` (never shipped) ends ``refunded`` on an
operator's ``cancel`` or the sweeper's ``ship_timeout``. ``disputed`` is reachable only during
the inspection period (from ``delivered``); only an operator's resolution leaves it.

Fees (integers only, each rounded once, modes fixed here and documented in docs/escrow.md):

- buyer's premium = hammer * ``buyer_premium_bps`` / 10,000, rounded half up (ties away from
  zero): the buyer pays ``total = hammer + premium``;
- seller's commission = hammer * ``seller_commission_bps`` / 10,000, rounded half up: the seller
  is owed ``hammer - commission`` and the house earns ``premium + commission``;
- a refund ``R`` of the total is split between hammer and premium in proportion to them by
  largest remainder (:func:`hammerlock.money.allocate`, so the parts sum exactly to ``R``); the
  commission shrinks with the kept hammer: ``commission * kept_hammer / hammer``, rounded half up.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from typing import Final

from hammerlock.money import BPS_PER_WHOLE, MAX_API_AMOUNT, FeeRule, Money, Rounding, allocate
from hammerlock.money.model import round_ratio

__all__ = [
    "CARRIERS",
    "FEE_ROUNDING",
    "TERMINAL",
    "Event",
    "Fees",
    "OfferStatus",
    "Order",
    "OrderStatus",
    "OrderTerms",
    "PayoutAction",
    "PayoutStatus",
    "RefundKind",
    "Settlement",
    "can_apply",
    "compute_fees",
    "escrow_account",
    "fees_for",
    "largest_hammer",
    "new_order_id",
    "next_status",
    "refund_intent",
    "refund_kind",
    "settle",
    "transitions",
    "valid_tracking_number",
]

FEE_ROUNDING: Final = Rounding.HALF_UP
"""The one rounding mode of premium, commission and the pro-rata commission after a refund."""

_ID_MAX: Final = 128
_DURATION_MAX_S: Final = 366 * 86_400


class OrderStatus(enum.StrEnum):
    AWAITING_PAYMENT = "awaiting_payment"
    PAID = "paid"
    SHIPPED = "shipped"
    DELIVERED = "delivered"
    DISPUTED = "disputed"
    RELEASED = "released"
    REFUNDED = "refunded"
    DEFAULTED = "defaulted"


TERMINAL: Final = frozenset({OrderStatus.RELEASED, OrderStatus.REFUNDED, OrderStatus.DEFAULTED})


class Event(enum.StrEnum):
    """What happens to an order. Timers (``default``, ``auto_deliver``, ``inspection_end``) come
    from the sweeper; the rest from the buyer, the seller or an operator."""

    PAY = "pay"  # a payment request (the order stays awaiting_payment until escrow is full)
    PAID = "paid"  # escrow holds the whole total
    DEFAULT = "default"  # the payment window passed
    SHIP = "ship"
    CONFIRM_DELIVERY = "confirm_delivery"
    AUTO_DELIVER = "auto_deliver"  # no word from the buyer N seconds after shipping
    ACCEPT = "accept"
    INSPECTION_END = "inspection_end"
    DISPUTE = "dispute"
    RESOLVE_REFUND = "resolve_refund"
    RESOLVE_RELEASE = "resolve_release"
    # an operator resolves again after risk review rejected the resolution's refund
    RERESOLVE = "reresolve"
    REFUND_AFTER_RELEASE = "refund_after_release"  # from platform:refunds; stays released
    CANCEL = "cancel"  # an operator cancels a paid order that was never shipped
    SHIP_TIMEOUT = "ship_timeout"  # the ship window passed with no shipment
    CHARGEBACK = "chargeback"  # the buyer's bank took (part of) a payment back


_S = OrderStatus
_TRANSITIONS: Final[dict[tuple[OrderStatus, Event], OrderStatus]] = {
    (_S.AWAITING_PAYMENT, Event.PAY): _S.AWAITING_PAYMENT,
    (_S.AWAITING_PAYMENT, Event.PAID): _S.PAID,
    (_S.AWAITING_PAYMENT, Event.DEFAULT): _S.DEFAULTED,
    (_S.PAID, Event.SHIP): _S.SHIPPED,
    (_S.SHIPPED, Event.CONFIRM_DELIVERY): _S.DELIVERED,
    (_S.SHIPPED, Event.AUTO_DELIVER): _S.DELIVERED,
    (_S.SHIPPED, Event.ACCEPT): _S.RELEASED,
    (_S.DELIVERED, Event.ACCEPT): _S.RELEASED,
    (_S.DELIVERED, Event.INSPECTION_END): _S.RELEASED,
    (_S.DELIVERED, Event.DISPUTE): _S.DISPUTED,
    (_S.DISPUTED, Event.RESOLVE_REFUND): _S.REFUNDED,
    (_S.DISPUTED, Event.RESOLVE_RELEASE): _S.RELEASED,
    (_S.RELEASED, Event.RERESOLVE): _S.RELEASED,
    (_S.REFUNDED, Event.RERESOLVE): _S.REFUNDED,
    (_S.RELEASED, Event.REFUND_AFTER_RELEASE): _S.RELEASED,
    (_S.PAID, Event.CANCEL): _S.REFUNDED,
    (_S.PAID, Event.SHIP_TIMEOUT): _S.REFUNDED,
    # A chargeback while the money is in escrow freezes release: the order is disputed until
    # an operator resolves it. Before payment or after the end it changes no state.
    (_S.PAID, Event.CHARGEBACK): _S.DISPUTED,
    (_S.SHIPPED, Event.CHARGEBACK): _S.DISPUTED,
    (_S.DELIVERED, Event.CHARGEBACK): _S.DISPUTED,
    (_S.DISPUTED, Event.CHARGEBACK): _S.DISPUTED,
    (_S.AWAITING_PAYMENT, Event.CHARGEBACK): _S.AWAITING_PAYMENT,
    (_S.RELEASED, Event.CHARGEBACK): _S.RELEASED,
    (_S.REFUNDED, Event.CHARGEBACK): _S.REFUNDED,
    (_S.DEFAULTED, Event.CHARGEBACK): _S.DEFAULTED,
}


def can_apply(status: OrderStatus, event: Event) -> bool:
    return (status, event) in _TRANSITIONS


def next_status(status: OrderStatus, event: Event) -> OrderStatus | None:
    """The state ``event`` leads to from ``status``, or ``None`` when it is not allowed."""
    return _TRANSITIONS.get((status, event))


def transitions() -> dict[tuple[OrderStatus, Event], OrderStatus]:
    """A copy of the transition table (docs and tests)."""
    return dict(_TRANSITIONS)


@dataclass(frozen=True, slots=True)
class OrderTerms:
    """What the lot close hands to :func:`hammerlock.escrow.service.open_order`.

    Amounts in minor units of ``currency``, rates in basis points, durations in seconds.
    ``deposit_intent_id`` is the winner's deposit (a manual-capture payment intent into
    ``deposit:{buyer_id}:{lot_id}``), if the lot asked for one. ``runner_up_*`` is the bidder a
    second-chance offer goes to if the winner defaults, at their own highest bid.
    """

    lot_id: str
    seller_id: str
    buyer_id: str
    currency: str
    hammer_price: int
    buyer_premium_bps: int
    seller_commission_bps: int
    payment_window_s: int
    inspection_period_s: int
    deposit_intent_id: str | None = None
    runner_up_bidder_id: str | None = None
    runner_up_amount: int | None = None

    def __post_init__(self) -> None:
        for name in ("lot_id", "seller_id", "buyer_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not 0 < len(value) <= _ID_MAX:
                msg = f"{name} must be a non-empty string of at most {_ID_MAX} characters"
                raise ValueError(msg)
        Money(0, self.currency)  # raises UnknownCurrency
        if self.seller_id == self.buyer_id:
            msg = "seller and buyer must differ"
            raise ValueError(msg)
        _int_in("hammer_price", self.hammer_price, 1, MAX_API_AMOUNT)
        _int_in("buyer_premium_bps", self.buyer_premium_bps, 0, BPS_PER_WHOLE)
        _int_in("seller_commission_bps", self.seller_commission_bps, 0, BPS_PER_WHOLE)
        _int_in("payment_window_s", self.payment_window_s, 1, _DURATION_MAX_S)
        _int_in("inspection_period_s", self.inspection_period_s, 0, _DURATION_MAX_S)
        if (self.runner_up_bidder_id is None) != (self.runner_up_amount is None):
            msg = "runner_up_bidder_id and runner_up_amount come together"
            raise ValueError(msg)
        if self.runner_up_amount is not None:
            _int_in("runner_up_amount", self.runner_up_amount, 1, MAX_API_AMOUNT)
        if self.runner_up_bidder_id in {self.buyer_id, self.seller_id}:
            msg = "the runner-up must be another bidder"
            raise ValueError(msg)
        if fees_for(self).total > MAX_API_AMOUNT:
            msg = "hammer price plus premium exceeds the largest API amount"
            raise ValueError(msg)


def _int_in(name: str, value: int, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        msg = f"{name} must be an int in {low}..{high}"
        raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class Fees:
    """An order's amounts, in minor units. ``total`` is what the buyer pays into escrow."""

    hammer: int
    premium: int
    commission: int

    @property
    def total(self) -> int:
        return self.hammer + self.premium

    @property
    def seller_net(self) -> int:
        return self.hammer - self.commission

    @property
    def revenue(self) -> int:
        return self.premium + self.commission


def fees_for(terms: OrderTerms) -> Fees:
    """Premium and commission on the hammer price, each rounded once with :data:`FEE_ROUNDING`."""
    return compute_fees(
        terms.hammer_price,
        terms.currency,
        terms.buyer_premium_bps,
        terms.seller_commission_bps,
    )


def compute_fees(hammer: int, currency: str, premium_bps: int, commission_bps: int) -> Fees:
    price = Money(hammer, currency)
    premium = FeeRule(premium_bps, FEE_ROUNDING).fee_for(price).minor
    commission = FeeRule(commission_bps, FEE_ROUNDING).fee_for(price).minor
    return Fees(hammer=hammer, premium=premium, commission=commission)


@functools.cache
def largest_hammer(currency: str, premium_bps: int) -> int:
    """The highest hammer price whose total (hammer + buyer's premium) is still an amount the
    API can carry (``MAX_API_AMOUNT``, 2^53 - 1): the most a bid or a buy-now price may be on a
    lot with this premium, so that every lot that sells can open its order."""
    hammer = MAX_API_AMOUNT * BPS_PER_WHOLE // (BPS_PER_WHOLE + premium_bps)
    while compute_fees(hammer, currency, premium_bps, 0).total > MAX_API_AMOUNT:
        hammer -= 1
    while compute_fees(hammer + 1, currency, premium_bps, 0).total <= MAX_API_AMOUNT:
        hammer += 1
    return hammer


@dataclass(frozen=True, slots=True)
class Settlement:
    """How an order's escrow is emptied: ``refund`` back to the buyer, the rest released.

    ``to_seller + to_revenue + refund == fees.total`` always.
    """

    refund: int
    to_seller: int
    to_revenue: int
    kept: Fees  # hammer, premium and commission after the refund


def settle(fees: Fees, currency: str, refund: int) -> Settlement:
    """Split escrow for a refund of ``refund`` (0 ≤ refund ≤ total); see the module docstring.

    The refund is apportioned to hammer and premium by largest remainder; the commission is
    ``commission * kept_hammer / hammer`` rounded half up (never above the kept hammer).
    """
    if type(refund) is not int or not 0 <= refund <= fees.total:
        msg = f"refund must be an int in 0..{fees.total}"
        raise ValueError(msg)
    if refund == 0:
        kept = fees
    else:
        weights = [fees.hammer, fees.premium]
        from_hammer, from_premium = allocate(Money(refund, currency), weights)
        kept_hammer = fees.hammer - from_hammer.minor
        commission = round_ratio(fees.commission * kept_hammer, fees.hammer, FEE_ROUNDING)
        kept = Fees(
            hammer=kept_hammer,
            premium=fees.premium - from_premium.minor,
            commission=min(commission, kept_hammer),
        )
    result = Settlement(
        refund=refund, to_seller=kept.seller_net, to_revenue=kept.revenue, kept=kept
    )
    if result.to_seller < 0 or result.to_revenue < 0:
        msg = "a settlement part is negative"
        raise ArithmeticError(msg)
    if result.to_seller + result.to_revenue + result.refund != fees.total:
        msg = "settlement does not sum to the total"
        raise ArithmeticError(msg)
    return result


class PayoutStatus(enum.StrEnum):
    NONE = "none"  # nothing released to the seller yet
    PENDING = "pending"  # payout key recorded; the gateway call may or may not have happened
    # payout key recorded, no call made: the seller has no payout destination yet (the sweeper
    # asks again; the money stays in the seller's payable account meanwhile)
    NO_DESTINATION = "no_destination"
    PAID = "paid"
    FAILED = "failed"  # the gateway refused; an operator looks (the money stays payable)


class PayoutAction(enum.StrEnum):
    """What an operator does to a payout the sweeper cannot settle alone."""

    RETRY = "retry"  # a failed payout: a new attempt under a new key
    MARK_PAID = "mark_paid"  # a pending one the gateway shows paid (its payout id given)
    MARK_FAILED = "mark_failed"  # a pending one the gateway shows never paid


class OfferStatus(enum.StrEnum):
    NONE = "none"
    OPEN = "open"
    ACCEPTED = "accepted"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Order:
    """One order, as stored. Amounts in minor units of ``currency``; times in µs since epoch.

    ``generation`` is 0 for the lot's winner and 1 for a second-chance buyer. ``refund_plan``
    maps a refund's key to its amount and ``refund_ids`` a key to the refund made: the key is
    the payment intent refunded, alone for a dispute resolution's refund, followed by ``:c`` for
    a cancellation's, ``:r<n>`` for a re-resolution's and ``:a<request>`` for a refund after
    release (see :func:`refund_intent`, :func:`refund_kind`).
    """

    id: str
    lot_id: str
    generation: int
    seller_id: str
    buyer_id: str
    currency: str
    hammer_price: int
    buyer_premium_bps: int
    seller_commission_bps: int
    premium: int
    commission: int
    status: OrderStatus
    payment_window_s: int
    inspection_period_s: int
    pay_by_us: int
    deposit_intent_id: str | None
    deposit_in_escrow: int
    payment_intent_id: str | None
    gateway: str | None
    carrier: str | None
    tracking_number: str | None
    shipped_us: int | None
    delivered_us: int | None
    inspection_ends_us: int | None
    dispute_reason: str | None
    refunded_amount: int
    refund_plan: dict[str, int]
    refund_ids: dict[str, str]
    refunds_outstanding: int  # entries of refund_plan with no refund made yet
    released_to_seller: int
    released_to_revenue: int
    payout_status: PayoutStatus
    payout_key: str | None
    payout_id: str | None
    paid_us: int | None  # when escrow first held the total
    paid_out: int  # paid out to the seller so far
    payout_amount: int  # the payout under payout_key
    chargebacks: dict[str, int]  # payment intent -> amount its chargebacks took back
    chargeback_covered: int  # of those, what a resolution paid back to platform:chargebacks
    runner_up_bidder_id: str | None
    runner_up_amount: int | None
    offer_status: OfferStatus
    offer_expires_us: int | None
    offer_order_id: str | None
    parent_order_id: str | None
    created_us: int
    updated_us: int
    version: int

    @property
    def fees(self) -> Fees:
        return Fees(hammer=self.hammer_price, premium=self.premium, commission=self.commission)

    @property
    def total(self) -> int:
        return self.hammer_price + self.premium

    @property
    def chargeback_amount(self) -> int:
        return sum(self.chargebacks.values())

    @property
    def chargeback_uncovered(self) -> int:
        return self.chargeback_amount - self.chargeback_covered

    @property
    def escrow_account(self) -> str:
        return escrow_account(self.id)

    @property
    def seller_account(self) -> str:
        return f"seller:{self.seller_id}:payable:{self.currency}"

    @property
    def deposit_account(self) -> str:
        return f"deposit:{self.buyer_id}:{self.lot_id}"


class RefundKind(enum.StrEnum):
    RESOLUTION = "resolution"  # a dispute resolution's (or a re-resolution's): from escrow
    CANCELLATION = "cancellation"  # a paid order canceled before shipping: from escrow
    AFTER_RELEASE = "after_release"  # from platform:refunds:{CUR}, escrow already released


def refund_intent(key: str) -> str:
    """The payment intent a refund-plan key refunds."""
    return key.split(":", 1)[0]


def refund_kind(key: str) -> RefundKind:
    suffix = key.partition(":")[2]
    if suffix.startswith("a"):
        return RefundKind.AFTER_RELEASE
    if suffix.startswith("c"):
        return RefundKind.CANCELLATION
    return RefundKind.RESOLUTION


def escrow_account(order_id: str) -> str:
    return f"escrow:{order_id}"


def new_order_id(now_us: int, random_hex: str) -> str:
    """``ord_<time><random>``: ids sort by creation time."""
    return f"ord_{now_us:014x}{random_hex}"


# -- shipping ---------------------------------------------------------------------------------

CARRIERS: Final = {
    # UPS: "1Z", 6-character shipper number, 2-digit service, 8 digits (last is a check digit)
    "ups": re.compile(r"1Z[0-9A-Z]{16}"),
    # FedEx Express / Ground: 12 or 15 digits
    "fedex": re.compile(r"[0-9]{12}|[0-9]{15}"),
    # USPS: 20 to 22 digits (IMpb)
    "usps": re.compile(r"[0-9]{20,22}"),
    # DHL Express waybill: 10 digits
    "dhl": re.compile(r"[0-9]{10}"),
}


def valid_tracking_number(carrier: str, tracking_number: str) -> bool:
    """Whether ``tracking_number`` has ``carrier``'s format (upper-case, no spaces)."""
    pattern = CARRIERS.get(carrier)
    return pattern is not None and pattern.fullmatch(tracking_number) is not None

"""Lots and proxy bidding, as values and pure functions. No clock, no SQL, no HTTP.

Proxy bidding (docs/auctions.md): a bidder gives a maximum; the lot's standing is

- the **leader**: the highest maximum, equal maximums going to the earlier bid;
- the **runner-up**: the best maximum among the other bidders;
- the **price**: the runner-up's maximum plus one increment (the increment of the band the
  runner-up's maximum falls in), capped at the leader's maximum; the starting price with a single
  bidder; lifted to the reserve when the leader's maximum reaches it.

:func:`apply_bid` updates a standing by one bid (what the bid path does under the lot's lock);
:func:`standing_of` computes it from scratch over a lot's accepted bids (what a retraction does).
Both give the same answer for the same accepted bids — a property test holds them to it.

Every accepted bid is a strict raise of its bidder's own maximum: a non-leader must reach the ask
(``price + increment``, above every other non-leader's maximum), and the leader may only raise.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from hammerlock.ids import random_id
from hammerlock.money.currency import get_currency

__all__ = [
    "DEFAULT_CAP_S",
    "DEFAULT_SOFT_CLOSE_S",
    "FINISHED",
    "MAX_BANDS",
    "AcceptedBid",
    "Band",
    "Bid",
    "BidKind",
    "BidRefusal",
    "Deposit",
    "DepositStatus",
    "Lot",
    "LotStatus",
    "LotTerms",
    "Renewal",
    "RenewalState",
    "Standing",
    "apply_bid",
    "ask_for",
    "default_deposit_bps",
    "default_increments",
    "deposit_account",
    "deposit_amount",
    "extend_end",
    "increment_at",
    "new_id",
    "standing_of",
    "validate_increments",
]

DEFAULT_SOFT_CLOSE_S: Final = 120
DEFAULT_CAP_S: Final = 3_600
MAX_BANDS: Final = 32
DEPOSIT_DEFAULT_BPS: Final = 1_000  # 10 % of the estimate, when the lot asks for a deposit
DEPOSIT_THRESHOLD_MAJOR: Final = 10_000  # estimate ≥ 10,000.00 in the lot's currency

# Price bands in minor units of a two-decimal currency (USD): from this price on, this step.
_DEFAULT_BANDS_E2: Final = (
    (0, 5),
    (100, 25),
    (500, 50),
    (2_500, 100),
    (10_000, 250),
    (25_000, 500),
    (50_000, 1_000),
    (100_000, 2_500),
    (250_000, 5_000),
    (500_000, 10_000),
    (1_000_000, 25_000),
    (2_500_000, 50_000),
    (5_000_000, 100_000),
    (10_000_000, 250_000),
    (25_000_000, 500_000),
)


class LotStatus(enum.StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    OPEN = "open"
    CLOSED = "closed"
    SETTLED = "settled"
    UNSOLD = "unsold"


FINISHED: Final = frozenset({LotStatus.CLOSED, LotStatus.SETTLED, LotStatus.UNSOLD})


class BidKind(enum.StrEnum):
    PROXY = "proxy"
    BUY_NOW = "buy_now"


class BidRefusal(enum.StrEnum):
    TOO_LOW = "bid_too_low"


def new_id(prefix: str) -> str:
    return random_id(prefix)


@dataclass(frozen=True, slots=True)
class Band:
    start: int  # "from" in the API
    step: int


def default_increments(currency: str) -> tuple[Band, ...]:
    """The default table, scaled to the currency's minor unit (JPY: a hundredth, KWD: tenfold)."""
    exponent = get_currency(currency).exponent
    bands: list[Band] = []
    for start, step in _DEFAULT_BANDS_E2:
        if exponent >= 2:
            scale = 10 ** (exponent - 2)
            bands.append(Band(start * scale, step * scale))
        else:
            div = 10 ** (2 - exponent)
            band = Band(start // div, max(1, step // div))
            if bands and band.start == bands[-1].start:
                bands[-1] = band
            else:
                bands.append(band)
    return tuple(bands)


def validate_increments(bands: Sequence[Band]) -> str | None:
    """Why ``bands`` is not a usable table, or None. Steps never shrink as the price grows, so
    ``price + increment_at(price)`` grows with the price (proxy bidding relies on it)."""
    if not 0 < len(bands) <= MAX_BANDS:
        return f"increments: 1 to {MAX_BANDS} bands"
    if bands[0].start != 0:
        return "increments: the first band starts from 0"
    for prev, band in itertools.pairwise(bands):
        if band.start <= prev.start:
            return "increments: bands in strictly increasing `from` order"
        if band.step < prev.step:
            return "increments: a band's step may not be smaller than the previous band's"
    if any(b.step <= 0 for b in bands):
        return "increments: every step is positive"
    return None


def increment_at(bands: Sequence[Band], price: int) -> int:
    step = bands[0].step
    for band in bands:
        if band.start > price:
            break
        step = band.step
    return step


def default_deposit_bps(currency: str, estimate: int) -> int:
    threshold = DEPOSIT_THRESHOLD_MAJOR * 10 ** get_currency(currency).exponent
    return DEPOSIT_DEFAULT_BPS if estimate >= threshold else 0


def deposit_amount(estimate: int, deposit_bps: int) -> int:
    """The deposit: ``deposit_bps`` of the estimate, rounded up to a whole minor unit."""
    return -(-estimate * deposit_bps // 10_000)


def extend_end(
    ends_at_us: int, latest_end_us: int, now_us: int, soft_close_s: int
) -> tuple[int, bool]:
    """Soft close: a bid in the last ``soft_close_s`` pushes the end to now + ``soft_close_s``,
    never past ``latest_end_us`` (the original end + the cap). (new end, extended?)"""
    window_us = soft_close_s * 1_000_000
    if soft_close_s <= 0 or now_us < ends_at_us - window_us:
        return ends_at_us, False
    new_end = min(now_us + window_us, latest_end_us)
    if new_end <= ends_at_us:
        return ends_at_us, False
    return new_end, True


@dataclass(frozen=True, slots=True)
class LotTerms:
    """What proxy bidding needs of a lot."""

    starting_price: int
    reserve_price: int
    increments: tuple[Band, ...]


@dataclass(frozen=True, slots=True)
class AcceptedBid:
    seq: int
    bidder_id: str
    max_amount: int


@dataclass(frozen=True, slots=True)
class Standing:
    """A lot's proxy-bidding state. ``price`` is None until the first bid."""

    price: int | None = None
    leader_id: str | None = None
    leader_max: int | None = None
    runner_up_id: str | None = None
    runner_up_max: int | None = None
    bid_count: int = 0
    last_seq: int = 0

    def reserve_met(self, terms: LotTerms) -> bool:
        return self.leader_max is not None and self.leader_max >= terms.reserve_price


def ask_for(terms: LotTerms, standing: Standing, bidder_id: str | None = None) -> int:
    """The least maximum a bid by ``bidder_id`` may carry now."""
    if standing.price is None:
        return terms.starting_price
    ask = standing.price + increment_at(terms.increments, standing.price)
    if bidder_id is not None and bidder_id == standing.leader_id and standing.leader_max:
        return max(ask, standing.leader_max + 1)  # the leader may only raise their maximum
    return ask


def _price(terms: LotTerms, leader_max: int, runner_up_max: int | None) -> int:
    if runner_up_max is None:
        price = terms.starting_price
    else:
        price = min(leader_max, runner_up_max + increment_at(terms.increments, runner_up_max))
    if leader_max >= terms.reserve_price:
        price = max(price, terms.reserve_price)
    return min(max(price, terms.starting_price), leader_max)


def apply_bid(
    terms: LotTerms, standing: Standing, bidder_id: str, max_amount: int
) -> Standing | BidRefusal:
    """The standing after one more bid, or why the bid is refused (below the ask)."""
    if max_amount < ask_for(terms, standing, bidder_id):
        return BidRefusal.TOO_LOW
    seq = standing.last_seq + 1
    count = standing.bid_count + 1
    if standing.leader_id is None or standing.leader_max is None:
        leader, leader_max = bidder_id, max_amount
        runner, runner_max = None, None
    elif bidder_id == standing.leader_id:
        leader, leader_max = bidder_id, max_amount
        runner, runner_max = standing.runner_up_id, standing.runner_up_max
    elif max_amount > standing.leader_max:
        leader, leader_max = bidder_id, max_amount
        runner, runner_max = standing.leader_id, standing.leader_max
    else:  # at most the leader's maximum: the earlier bid keeps the lead
        leader, leader_max = standing.leader_id, standing.leader_max
        runner, runner_max = bidder_id, max_amount
    return Standing(
        price=_price(terms, leader_max, runner_max),
        leader_id=leader,
        leader_max=leader_max,
        runner_up_id=runner,
        runner_up_max=runner_max,
        bid_count=count,
        last_seq=seq,
    )


def standing_of(terms: LotTerms, bids: Iterable[AcceptedBid], *, last_seq: int = 0) -> Standing:
    """The standing over ``bids`` (the accepted, unretracted ones), from scratch.

    Each bidder counts with their highest maximum, dated by the first bid that reached it;
    ``last_seq`` is the lot's sequence so far (a retraction does not give numbers back).
    """
    best: dict[str, tuple[int, int]] = {}  # bidder -> (max, seq of the bid that set it)
    count = 0
    for bid in bids:
        count += 1
        known = best.get(bid.bidder_id)
        if known is None or bid.max_amount > known[0]:
            best[bid.bidder_id] = (bid.max_amount, bid.seq)
        last_seq = max(last_seq, bid.seq)
    ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[1][1]))
    if not ranked:
        return Standing(last_seq=last_seq)
    leader_id, (leader_max, _) = ranked[0]
    runner_id, runner_max = (ranked[1][0], ranked[1][1][0]) if len(ranked) > 1 else (None, None)
    return Standing(
        price=_price(terms, leader_max, runner_max),
        leader_id=leader_id,
        leader_max=leader_max,
        runner_up_id=runner_id,
        runner_up_max=runner_max,
        bid_count=count,
        last_seq=last_seq,
    )


class DepositStatus(enum.StrEnum):
    PENDING = "pending"  # recorded; the card authorization is under way
    HELD = "held"  # a payment intent exists (authorized, or waiting for 3-D Secure)
    FAILED = "failed"  # the authorization did not go through
    RELEASED = "released"  # voided after the bidder lost (or the lot went unsold)
    KEPT = "kept"  # the winner's: escrow takes it over


@dataclass(frozen=True, slots=True)
class Lot:
    id: str
    status: LotStatus
    seller_id: str
    title: str
    description: str
    currency: str
    estimate: int
    starting_price: int
    reserve_price: int
    buy_now_price: int | None
    increments: tuple[Band, ...]
    starts_at_us: int
    ends_at_us: int
    latest_end_us: int
    soft_close_s: int
    soft_close_cap_s: int
    buyer_premium_bps: int
    seller_commission_bps: int
    deposit_bps: int
    deposit_amount: int
    payment_window_s: int
    inspection_period_s: int
    standing: Standing
    extensions: int
    hammer_price: int | None
    winner_id: str | None
    close_reason: str | None
    closed_us: int | None
    deposits_released: bool
    created_by_principal: str | None
    created_us: int
    updated_us: int
    version: int

    @property
    def terms(self) -> LotTerms:
        return LotTerms(self.starting_price, self.reserve_price, self.increments)

    @property
    def reserve_met(self) -> bool:
        return self.standing.reserve_met(self.terms)

    @property
    def buy_now_offered(self) -> bool:
        return self.buy_now_price is not None and not self.reserve_met


@dataclass(frozen=True, slots=True)
class Bid:
    id: str
    lot_id: str
    seq: int
    bidder_id: str
    max_amount: int
    kind: BidKind
    status: str  # "accepted" | "retracted"
    price_after: int
    leader_after: str
    placed_us: int
    retracted_us: int | None
    retracted_by: str | None
    retraction_reason: str | None


@dataclass(frozen=True, slots=True)
class Deposit:
    id: str
    lot_id: str
    bidder_id: str
    amount: int
    currency: str
    account: str
    payment_intent: str | None
    status: DepositStatus
    created_us: int
    updated_us: int
    version: int


class RenewalState(enum.StrEnum):
    """Where one renewal attempt of a deposit stands (one attempt per deposit row version)."""

    OPEN = "open"  # recorded before the gateway call; its answer may still be unknown
    DECLINED = "declined"  # refused (or voided waiting for 3-D Secure); tried again at retry_at
    SWAPPED = "swapped"  # the deposit points at the renewal; the old authorization is voided next
    UNDONE = "undone"  # the old one was captured meanwhile: the deposit is back on it, the renewal
    # is voided next
    DONE = "done"  # nothing left to do: swapped and old voided, or the renewal is dead


@dataclass(frozen=True, slots=True)
class Renewal:
    """A durable record of one renewal attempt, written before its authorization is asked for,
    so that no process restart leaves a renewal held on a card beside the deposit (ADR 0019)."""

    deposit_id: str
    version: int  # the deposit row's version the attempt was made at
    old_intent: str
    payments_key: str
    intent_id: str | None  # known once the gateway answered (or payments recorded it)
    state: RenewalState
    retry_at_us: int | None
    created_us: int
    updated_us: int


def deposit_account(bidder_id: str, lot_id: str) -> str:
    return f"deposit:{bidder_id}:{lot_id}"

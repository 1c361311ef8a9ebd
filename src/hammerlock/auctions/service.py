"""Auctions: one method per business event — create and open a lot, bid, buy now, retract,
deposit, close — each one database transaction with its audit event (and ledger work where money
moves).

Bids on one lot are serialized by the lot's row lock (``SELECT … FOR UPDATE`` on PostgreSQL;
SQLite's ``BEGIN IMMEDIATE`` gives one writer at a time): the lot row holds the standing (price,
leader, runner-up, sequence), so a bid is read-lock-decide-write on one row plus one insert.

Closing happens under the same lock, exactly once: whoever holds the lock first (the scheduler in
any process, the close route, a buy-now) finds the lot ``open`` and closes it; everyone after
finds it closed. A winner at or above the reserve gets an order in the same transaction
(:func:`hammerlock.escrow.service.open_order`, wired in as ``open_order``). Deposits of the
losers are voided at the gateway *after* the close commits (no outside call inside a
transaction); the lot's ``deposits_released`` flag keeps that durable — the scheduler retries
until every deposit is released.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final

import structlog

from hammerlock.auctions import storage
from hammerlock.auctions.bidding import (
    REUSE_DETAIL,
    AskPayments,
    BidRequest,
    BidWriter,
    KeyReused,
    Outcome,
    bid_event,
    lot_event,
    may_see,
)
from hammerlock.auctions.errors import (
    BidNotFound,
    BuyNowUnavailable,
    CardRequired,
    DepositNotNeeded,
    DepositRequired,
    InvalidLot,
    InvalidTransition,
    LotNotFound,
    LotNotOpen,
    OwnLot,
)
from hammerlock.auctions.model import (
    DEFAULT_CAP_S,
    DEFAULT_SOFT_CLOSE_S,
    FINISHED,
    AcceptedBid,
    Band,
    Bid,
    BidKind,
    Deposit,
    DepositStatus,
    Lot,
    LotStatus,
    Renewal,
    RenewalState,
    Standing,
    default_deposit_bps,
    default_increments,
    deposit_account,
    deposit_amount,
    new_id,
    standing_of,
    validate_increments,
)
from hammerlock.auctions.views import deposit_json, lot_json
from hammerlock.audit import service as audit
from hammerlock.audit.model import Context
from hammerlock.clock import format_rfc3339
from hammerlock.db.engine import Database
from hammerlock.db.queues import Cursors
from hammerlock.db.uow import UnitOfWork
from hammerlock.errors import DomainError
from hammerlock.escrow import service as escrow
from hammerlock.escrow.model import OrderTerms, largest_hammer
from hammerlock.ledger import service as ledger
from hammerlock.ledger.model import AccountFlag, AccountInput, LedgerInvariantError
from hammerlock.money.currency import get_currency
from hammerlock.money.errors import UnknownCurrency
from hammerlock.parties import service as parties
from hammerlock.parties.model import PartyKind
from hammerlock.payments import storage as payments_storage
from hammerlock.payments.errors import InvalidTransition as PaymentTransition
from hammerlock.payments.model import (
    CaptureMethod,
    IntentStatus,
    PaymentIntent,
    PendingOp,
    Purpose,
)
from hammerlock.payments.service import NewIntent, Payments
from hammerlock.webhooks import service as webhooks

__all__ = [
    "Auctions",
    "NewLot",
    "OrderDepositRenewer",
    "OrderOpener",
    "OrderRenewalCheck",
    "mark_settled",
]

log = structlog.get_logger("hammerlock.auctions")
# Deposit intents are identified by the deposit, not by the API key of the caller: a renewal by
# the scheduler after a crash finds the intent it made instead of authorizing the card again.
_PAYMENTS_SCOPE = "domain:auctions"

OrderOpener = Callable[[UnitOfWork, Context, OrderTerms], Awaitable[str]]
# Points the order holding deposit intent ``old`` at its renewal ``new`` (caller's transaction).
OrderDepositRenewer = Callable[[UnitOfWork, Context, str, str], Awaitable[bool]]
OrderRenewalCheck = Callable[[UnitOfWork, str], Awaitable[bool]]

_US: Final = 1_000_000
_MAX_DURATION_S: Final = 366 * 86_400
_MAX_FAILED_PER_PASS: Final = 16  # failed lots after which a pass stops opening (or closing)
_MAX_SET_ASIDE: Final = 1_000  # lots a process remembers as failing (the claim's NOT IN list)
_SET_ASIDE_US: Final = 60 * 1_000_000  # how long a failed lot is left out before a new try
_MAX_AHEAD_S: Final = 5 * 366 * 86_400  # how far ahead a lot may be scheduled to start
_EARLIEST_US: Final = 946_684_800_000_000  # 2000-01-01T00:00:00Z
_MAX_BPS: Final = 10_000
_DEFAULT_PAYMENT_WINDOW_S: Final = 48 * 3_600
_DEFAULT_INSPECTION_S: Final = 3 * 86_400
_HELD_INTENT: Final = frozenset(
    {
        IntentStatus.REQUIRES_CAPTURE,
        IntentStatus.REQUIRES_ACTION,
        IntentStatus.PROCESSING,
        IntentStatus.REQUIRES_REVIEW,
        IntentStatus.REQUIRES_CONFIRMATION,
    }
)
# Nothing held on the card (declined, failed 3-D Secure, voided): a deposit on one is dead.
_DEAD_INTENT: Final = frozenset({IntentStatus.CANCELED, IntentStatus.REQUIRES_PAYMENT_METHOD})
_OPEN_DEPOSITS: Final = frozenset({DepositStatus.PENDING, DepositStatus.HELD})
_RENEW_MARGIN_US: Final = 24 * 3_600 * 1_000_000  # renew a day before the authorization lapses
_RENEW_RETRY_US: Final = 6 * 3_600 * 1_000_000  # a declined renewal is tried again after this
_RENEW_UNANSWERED_US: Final = 10 * 60 * 1_000_000  # an attempt with no intent after this had none
_RENEW_PAGES: Final = 100
_RENEW_EVERY_US: Final = 60 * 1_000_000
_KEEP_ATTEMPTS: Final = 3  # a renewal swaps a deposit at most once a day: one re-read suffices


@dataclass(frozen=True, slots=True)
class NewLot:
    seller_id: str
    title: str
    currency: str
    estimate: int
    starting_price: int
    starts_at_us: int
    ends_at_us: int
    description: str = ""
    reserve_price: int = 0
    buy_now_price: int | None = None
    increments: tuple[Band, ...] | None = None
    soft_close_s: int = DEFAULT_SOFT_CLOSE_S
    soft_close_cap_s: int = DEFAULT_CAP_S
    buyer_premium_bps: int = 0
    seller_commission_bps: int = 0
    deposit_bps: int | None = None
    payment_window_s: int = _DEFAULT_PAYMENT_WINDOW_S
    inspection_period_s: int = _DEFAULT_INSPECTION_S


def _check_new_lot(new: NewLot, now_us: int) -> None:
    try:
        get_currency(new.currency)
    except UnknownCurrency:
        raise InvalidLot(f"unknown currency {new.currency!r}", param="currency") from None
    problems: list[str] = []
    if new.starts_at_us < _EARLIEST_US or new.starts_at_us > now_us + _MAX_AHEAD_S * _US:
        # Every instant derived from the lot (its latest end, the payment deadline, the end of
        # inspection) then stays far inside what the calendar and the API can represent.
        problems.append("starts_at is after 2000-01-01 and at most 5 years from now")
    if 0 <= new.buyer_premium_bps <= _MAX_BPS:
        most = largest_hammer(new.currency, new.buyer_premium_bps)
        named = {"starting_price": new.starting_price, "reserve_price": new.reserve_price}
        if new.buy_now_price is not None:
            named["buy_now_price"] = new.buy_now_price
        for name, amount in named.items():
            if amount > most:
                problems.append(
                    f"{name} is at most {most} (with the buyer's premium, the largest amount "
                    "the API carries)"
                )
    if new.reserve_price < 0 or new.estimate < 0:
        problems.append("reserve_price and estimate are at least 0")
    if new.buy_now_price is not None and new.buy_now_price <= new.starting_price:
        problems.append("buy_now_price is above starting_price")
    if new.buy_now_price is not None and new.buy_now_price < new.reserve_price:
        problems.append("buy_now_price is at least reserve_price")
    if new.ends_at_us <= new.starts_at_us:
        problems.append("ends_at is after starts_at")
    if new.ends_at_us - new.starts_at_us > _MAX_DURATION_S * _US:
        problems.append("a lot runs at most 366 days")
    for name in ("buyer_premium_bps", "seller_commission_bps"):
        if not 0 <= getattr(new, name) <= _MAX_BPS:
            problems.append(f"{name} is within 0..10000")
    if new.deposit_bps is not None and not 0 <= new.deposit_bps <= _MAX_BPS:
        problems.append("deposit_bps is within 0..10000")
    if not 0 <= new.soft_close_s <= 86_400 or not 0 <= new.soft_close_cap_s <= 7 * 86_400:
        problems.append("soft_close_s ≤ 1 day, soft_close_cap_s ≤ 7 days")
    # What the order the lot closes into takes (escrow.model.OrderTerms): a window of 0 would
    # make every close fail.
    if not 1 <= new.payment_window_s <= _MAX_DURATION_S:
        problems.append("payment_window_s is within 1 s..366 days")
    if not 0 <= new.inspection_period_s <= _MAX_DURATION_S:
        problems.append("inspection_period_s is within 0..366 days")
    if new.increments is not None and (why := validate_increments(new.increments)):
        problems.append(why)
    if problems:
        raise InvalidLot("; ".join(problems))


@dataclass
class Auctions:
    """The auctions service. One per process; it holds no state but its collaborators."""

    db: Database
    payments: Payments
    open_order: OrderOpener = escrow.open_order
    renew_order_deposit: OrderDepositRenewer = escrow.renew_deposit
    order_takes_renewal: OrderRenewalCheck = escrow.deposit_renewable
    close_batch: int = 100
    renewed_us: int = 0  # when this process last looked for deposits to renew
    # lots whose open or close failed here → until when this process leaves them out
    set_aside: dict[str, int] = field(default_factory=dict)
    # Where the deposit-release queue stopped: read round-robin (db.queues), so lots whose
    # voids stay unresolved never fill every pass's page.
    release_cursor: Cursors = field(default_factory=Cursors)
    bids: BidWriter = field(init=False)

    def __post_init__(self) -> None:
        self.bids = BidWriter(self.db)

    # -- reads ------------------------------------------------------------------------------

    async def get_lot(self, ctx: Context, lot_id: str) -> Lot:
        async with self.db.read() as uow:
            return await self._visible(uow, ctx, lot_id)

    async def _visible(
        self, uow: UnitOfWork, ctx: Context, lot_id: str, *, for_update: bool = False
    ) -> Lot:
        lot = await storage.get_lot(uow, lot_id, for_update=for_update)
        if lot is None or not may_see(ctx, lot):
            raise LotNotFound(f"no lot {lot_id}")
        return lot

    async def list_bids(
        self, ctx: Context, lot_id: str, *, after_seq: int, limit: int
    ) -> tuple[Lot, list[Bid]]:
        async with self.db.read() as uow:
            lot = await self._visible(uow, ctx, lot_id)
            return lot, await storage.list_bids(uow, lot_id, after_seq=after_seq, limit=limit)

    # -- lots -------------------------------------------------------------------------------

    async def create_lot(self, ctx: Context, new: NewLot) -> Lot:
        _check_new_lot(new, self.db.clock.now_us())
        increments = new.increments or default_increments(new.currency)
        deposit_bps = (
            new.deposit_bps
            if new.deposit_bps is not None
            else default_deposit_bps(new.currency, new.estimate)
        )
        async with self.db.transaction() as uow:
            await parties.require_party(uow, ctx, new.seller_id, PartyKind.SELLER)
            now_us = uow.clock.now_us()
            lot = Lot(
                id=new_id("lot"),
                status=LotStatus.DRAFT,
                seller_id=new.seller_id,
                title=new.title,
                description=new.description,
                currency=new.currency,
                estimate=new.estimate,
                starting_price=new.starting_price,
                reserve_price=new.reserve_price,
                buy_now_price=new.buy_now_price,
                increments=increments,
                starts_at_us=new.starts_at_us,
                ends_at_us=new.ends_at_us,
                latest_end_us=new.ends_at_us + new.soft_close_cap_s * _US,
                soft_close_s=new.soft_close_s,
                soft_close_cap_s=new.soft_close_cap_s,
                buyer_premium_bps=new.buyer_premium_bps,
                seller_commission_bps=new.seller_commission_bps,
                deposit_bps=deposit_bps,
                deposit_amount=deposit_amount(new.estimate, deposit_bps),
                payment_window_s=new.payment_window_s,
                inspection_period_s=new.inspection_period_s,
                standing=Standing(),
                extensions=0,
                hammer_price=None,
                winner_id=None,
                close_reason=None,
                closed_us=None,
                deposits_released=False,
                created_by_principal=ctx.actor.principal_id,
                created_us=now_us,
                updated_us=now_us,
                version=1,
            )
            await storage.insert_lot(uow, lot)
            await self._audit(uow, ctx, lot, "auctions.lot.create")
            return lot

    async def open_lot(self, ctx: Context, lot_id: str) -> Lot:
        """``draft`` → ``scheduled`` (or straight to ``open`` once ``starts_at`` has come)."""
        async with self.db.transaction() as uow:
            lot = await self._visible(uow, ctx, lot_id, for_update=True)
            parties.check_owner(ctx, lot.seller_id, f"lot {lot_id}")
            if lot.status in {LotStatus.SCHEDULED, LotStatus.OPEN}:
                return lot
            if lot.status is not LotStatus.DRAFT:
                raise InvalidTransition(f"lot {lot_id} is {lot.status.value}; it cannot open")
            now_us = uow.clock.now_us()
            if lot.ends_at_us <= now_us:
                raise InvalidTransition(f"lot {lot_id} ends in the past; it cannot open")
            status = LotStatus.OPEN if lot.starts_at_us <= now_us else LotStatus.SCHEDULED
            opened = await self._save(uow, lot, replace(lot, status=status))
            await self._audit(uow, ctx, opened, "auctions.lot.open")
            return opened

    # -- bids -------------------------------------------------------------------------------

    async def place_bid(
        self,
        ctx: Context,
        lot_id: str,
        *,
        bidder_id: str,
        max_amount: int,
        idempotency_key: str | None,
    ) -> tuple[Bid, Lot]:
        """Place one bid (group-committed with concurrent ones: :mod:`.bidding`)."""
        outcome = await self.submit_bid(
            BidRequest(
                ctx=ctx,
                lot_id=lot_id,
                bidder_id=bidder_id,
                max_amount=max_amount,
                idempotency_key=idempotency_key,
            )
        )
        if isinstance(outcome, DomainError):
            raise outcome
        if not isinstance(outcome, tuple):  # only a request with a receipt gets these
            raise TypeError(f"unexpected bid outcome {type(outcome).__name__}")
        return outcome

    async def submit_bid(self, request: BidRequest) -> Outcome:
        """The bid's outcome as the writer decided it. On a deposit lot, the first pass finds
        the bidder's deposit intents and steps out of the batch so that their state is asked of
        the payments service outside the lot's lock; the second pass decides."""
        outcome = await self.bids.submit(request)
        if isinstance(outcome, AskPayments):
            authorized = await self._any_authorized(outcome.intent_ids)
            outcome = await self.bids.submit(replace(request, deposit_ok=authorized))
            if isinstance(outcome, AskPayments):  # pragma: no cover - deposit_ok is set
                raise TypeError("a bid asked about its deposit twice")
        return outcome

    async def _replayed_bid(
        self, uow: UnitOfWork, ctx: Context, idempotency_key: str | None
    ) -> Bid | None:
        if ctx.actor.key_id is None or idempotency_key is None:
            return None
        return await storage.find_bid_by_request(uow, ctx.actor.key_id, idempotency_key)

    async def _admit_bidder(
        self, uow: UnitOfWork, ctx: Context, lot: Lot, bidder_id: str, now_us: int
    ) -> Lot:
        """The lot, open now (a due ``scheduled`` lot opens here), if ``bidder_id`` may bid."""
        lot = await self._start_if_due(uow, ctx, lot, now_us)
        if lot.status is not LotStatus.OPEN or not lot.starts_at_us <= now_us < lot.ends_at_us:
            raise LotNotOpen(f"lot {lot.id} is not open for bidding", lot_status=lot.status.value)
        if lot.seller_id in {bidder_id, ctx.actor.principal_id}:
            raise OwnLot(f"lot {lot.id} is the bidder's own (a seller cannot bid on its lot)")
        await parties.require_party(uow, ctx, bidder_id, PartyKind.BIDDER)
        if await parties.default_card(uow, bidder_id) is None:
            raise CardRequired(
                f"bidder {bidder_id} has no card on file (POST /v1/bidders/{{id}}/cards)"
            )
        return lot

    async def _start_if_due(self, uow: UnitOfWork, ctx: Context, lot: Lot, now_us: int) -> Lot:
        if lot.status is not LotStatus.SCHEDULED or lot.starts_at_us > now_us:
            return lot
        started = await self._save(uow, lot, replace(lot, status=LotStatus.OPEN))
        await self._audit(uow, ctx, started, "auctions.lot.start")
        return started

    @staticmethod
    async def _held_deposit_intents(uow: UnitOfWork, lot_id: str, bidder_id: str) -> list[str]:
        return [
            d.payment_intent
            for d in await storage.deposits_of(uow, lot_id, bidder_id)
            if d.status is DepositStatus.HELD and d.payment_intent is not None
        ]

    async def _any_authorized(self, intent_ids: list[str]) -> bool:
        for intent_id in intent_ids:
            intent, _ = await self.payments.get(intent_id)
            if intent.status is IntentStatus.REQUIRES_CAPTURE:
                return True
        return False

    async def _deposit_authorized(self, ctx: Context, lot_id: str, bidder_id: str) -> bool:
        """Whether ``bidder_id`` holds an authorized deposit on the lot (read before the bid's
        transaction: the intent's state is the payments service's to tell)."""
        async with self.db.read() as uow:
            lot = await self._visible(uow, ctx, lot_id)
            if lot.deposit_amount == 0:
                return True
            intents = await self._held_deposit_intents(uow, lot_id, bidder_id)
        return await self._any_authorized(intents)

    async def retract_bid(self, ctx: Context, lot_id: str, bid_id: str, *, reason: str) -> Lot:
        """An admin's retraction: the bid stays in the history, marked; the standing is
        recomputed from the remaining bids (the sequence keeps counting)."""
        async with self.db.transaction() as uow:
            lot = await self._visible(uow, ctx, lot_id, for_update=True)
            if lot.status is not LotStatus.OPEN:
                raise LotNotOpen(f"lot {lot_id} is {lot.status.value}; bids are final")
            bid = await storage.get_bid(uow, bid_id)
            if bid is None or bid.lot_id != lot_id:
                raise BidNotFound(f"no bid {bid_id} on lot {lot_id}")
            if bid.kind is not BidKind.PROXY or bid.status != "accepted":
                raise InvalidTransition(f"bid {bid_id} is {bid.status}; it cannot be retracted")
            now_us = uow.clock.now_us()
            await storage.retract_bid(
                uow, bid, by=ctx.actor.principal_id, reason=reason, now_us=now_us
            )
            remaining = await storage.list_bids(uow, lot_id, accepted_only=True)
            standing = standing_of(
                lot.terms,
                (AcceptedBid(b.seq, b.bidder_id, b.max_amount) for b in remaining),
                last_seq=lot.standing.last_seq,
            )
            updated = await self._save(uow, lot, replace(lot, standing=standing))
            await audit.record(
                uow,
                ctx.event(
                    "auctions.bid.retract",
                    resource_type="bid",
                    resource_id=bid.id,
                    ts_us=now_us,
                    details={
                        "lot_id": lot_id,
                        "seq": bid.seq,
                        "bidder_id": bid.bidder_id,
                        "reason": reason[:500],
                        "price_after": standing.price,
                        "leader_after": standing.leader_id,
                    },
                ),
            )
            return updated

    # -- buy now ----------------------------------------------------------------------------

    async def buy_now(
        self, ctx: Context, lot_id: str, *, bidder_id: str, idempotency_key: str | None
    ) -> tuple[Bid, Lot]:
        deposit_ok = await self._deposit_authorized(ctx, lot_id, bidder_id)
        async with self.db.transaction() as uow:
            lot = await self._visible(uow, ctx, lot_id, for_update=True)
            replayed = await self._replayed_bid(uow, ctx, idempotency_key)
            if replayed is not None:
                # The key's earlier request is this one only if it bought this lot for this
                # bidder (its stored answer may have expired, and the key be reused).
                if (replayed.kind, replayed.lot_id, replayed.bidder_id) != (
                    BidKind.BUY_NOW,
                    lot_id,
                    bidder_id,
                ):
                    raise KeyReused(REUSE_DETAIL)
                return replayed, lot
            now_us = uow.clock.now_us()
            lot = await self._admit_bidder(uow, ctx, lot, bidder_id, now_us)
            if not lot.buy_now_offered or lot.buy_now_price is None:
                raise BuyNowUnavailable(f"lot {lot_id} offers no buy-now now")
            if lot.deposit_amount > 0 and not deposit_ok:
                raise DepositRequired(
                    f"lot {lot_id} asks for a deposit first", deposit_amount=lot.deposit_amount
                )
            price = lot.buy_now_price
            before = lot.standing
            runner_id, runner_max = before.leader_id, before.leader_max
            if runner_id == bidder_id:
                runner_id, runner_max = before.runner_up_id, before.runner_up_max
            standing = Standing(
                price=price,
                leader_id=bidder_id,
                leader_max=price,
                runner_up_id=runner_id,
                runner_up_max=runner_max,
                bid_count=before.bid_count + 1,
                last_seq=before.last_seq + 1,
            )
            bid = Bid(
                id=new_id("bid"),
                lot_id=lot.id,
                seq=standing.last_seq,
                bidder_id=bidder_id,
                max_amount=price,
                kind=BidKind.BUY_NOW,
                status="accepted",
                price_after=price,
                leader_after=bidder_id,
                placed_us=now_us,
                retracted_us=None,
                retracted_by=None,
                retraction_reason=None,
            )
            await storage.insert_bid(
                uow, bid, key_id=ctx.actor.key_id, idempotency_key=idempotency_key
            )
            lot = replace(lot, standing=standing)
            await self._audit_bid(uow, ctx, lot, bid, "auctions.bid.buy_now", extended=False)
            closed = await self._close_locked(uow, ctx, lot, reason="buy_now")
        await self._release_after_close(ctx, closed)
        return bid, closed

    # -- closing ----------------------------------------------------------------------------

    async def close(self, ctx: Context, lot_id: str) -> Lot:
        """Close now (the route; an operator's early close). Idempotent on a finished lot."""
        async with self.db.transaction() as uow:
            lot = await self._visible(uow, ctx, lot_id, for_update=True)
            if lot.status in FINISHED:
                return lot
            lot = await self._start_if_due(uow, ctx, lot, uow.clock.now_us())
            if lot.status is not LotStatus.OPEN:
                raise InvalidTransition(f"lot {lot_id} is {lot.status.value}; it cannot close")
            closed = await self._close_locked(uow, ctx, lot, reason="manual")
        await self._release_after_close(ctx, closed)
        return closed

    async def _close_locked(self, uow: UnitOfWork, ctx: Context, lot: Lot, *, reason: str) -> Lot:
        """Close ``lot`` (locked, open) inside the caller's transaction: an order for a winner
        at or above the reserve, else ``unsold``."""
        now_us = uow.clock.now_us()
        s = lot.standing
        sold = s.leader_id is not None and s.price is not None and lot.reserve_met
        closed = replace(
            lot,
            status=LotStatus.CLOSED if sold else LotStatus.UNSOLD,
            hammer_price=s.price if sold else None,
            winner_id=s.leader_id if sold else None,
            close_reason=reason,
            closed_us=now_us,
            ends_at_us=min(lot.ends_at_us, max(now_us, lot.starts_at_us)),
        )
        closed = await self._save(uow, lot, closed)
        order_id = None
        if sold and closed.winner_id is not None and closed.hammer_price is not None:
            order_id = await self._open_order(uow, ctx, closed)
        await self._audit(
            uow,
            ctx,
            closed,
            "auctions.lot.close",
            extra={"reason": reason, "order_id": order_id},
        )
        await webhooks.enqueue(uow, "lot.closed", lot_json(closed, show_reserve=True), ts_us=now_us)
        return closed

    async def _open_order(self, uow: UnitOfWork, ctx: Context, lot: Lot) -> str:
        assert_winner = lot.winner_id
        if assert_winner is None or lot.hammer_price is None:
            raise LedgerInvariantError(f"lot {lot.id}: an order needs a winner and a price")
        deposit_intent = await self._keep_deposit(uow, lot.id, assert_winner)
        s = lot.standing
        # A second chance goes only to a runner-up whose own maximum meets the reserve: the
        # reserve is the least the seller accepts (below it the lot is unsold), and the offer is
        # made at that maximum. (After a buy-now the runner-up is always below the reserve.)
        runner = (
            s.runner_up_id
            if s.runner_up_id not in {None, assert_winner}
            and s.runner_up_max is not None
            and s.runner_up_max >= lot.reserve_price
            else None
        )
        terms = OrderTerms(
            lot_id=lot.id,
            seller_id=lot.seller_id,
            buyer_id=assert_winner,
            currency=lot.currency,
            hammer_price=lot.hammer_price,
            buyer_premium_bps=lot.buyer_premium_bps,
            seller_commission_bps=lot.seller_commission_bps,
            payment_window_s=lot.payment_window_s,
            inspection_period_s=lot.inspection_period_s,
            deposit_intent_id=deposit_intent,
            runner_up_bidder_id=runner,
            runner_up_amount=s.runner_up_max if runner is not None else None,
        )
        return await self.open_order(uow, ctx, terms)

    @staticmethod
    async def _keep_deposit(uow: UnitOfWork, lot_id: str, winner_id: str) -> str | None:
        """The winner's held deposit turns ``kept``; its intent goes to the order. Written only
        if the row still holds the intent read: a renewal committing in between (its swap does
        not take the lot's lock) is read again, never handed to the order while it is voided."""
        for _ in range(_KEEP_ATTEMPTS):
            held = [
                d
                for d in await storage.deposits_of(uow, lot_id, winner_id)
                if d.status is DepositStatus.HELD and d.payment_intent is not None
            ]
            if not held:
                return None
            deposit = held[0]
            if await storage.set_deposit(
                uow,
                deposit.id,
                status=DepositStatus.KEPT,
                payment_intent=None,
                now_us=uow.clock.now_us(),
                expected=(DepositStatus.HELD, deposit.payment_intent),
            ):
                return deposit.payment_intent
        raise LedgerInvariantError(f"lot {lot_id}: the winner's deposit keeps changing")

    async def _release_after_close(self, ctx: Context, lot: Lot) -> None:
        try:
            await self.release_deposits(ctx, lot.id)
        except Exception:  # the scheduler retries: ``deposits_released`` is still false
            log.exception("auctions.release_failed", lot_id=lot.id)

    async def release_deposits(self, ctx: Context, lot_id: str) -> int:
        """Void the deposits of a finished lot's losers (all of them when unsold). Gateway
        calls happen outside any transaction; each release is then recorded in its own."""
        async with self.db.read() as uow:
            lot = await storage.get_lot(uow, lot_id)
            if lot is None or lot.status not in FINISHED or lot.deposits_released:
                return 0
            deposits = await storage.deposits_of(uow, lot_id)
        released, changed = 0, False
        for deposit in deposits:
            if deposit.status not in _OPEN_DEPOSITS or deposit.bidder_id == lot.winner_id:
                continue
            # A pending deposit whose process died after payments made its intent, before the
            # deposit recorded it: the hold may be on the card all the same.
            intent_id = deposit.payment_intent or await self._intent_by_key(f"deposit:{deposit.id}")
            if intent_id is not None:
                intent = await self._void(ctx, intent_id)
                if intent.status not in _DEAD_INTENT:
                    # Still authorizing at the gateway (or the void did not go through): the
                    # hold may be on the card; the next pass voids it once its outcome is in.
                    changed = True
                    continue
            async with self.db.transaction() as uow:
                if not await storage.set_deposit(
                    uow,
                    deposit.id,
                    status=DepositStatus.RELEASED,
                    payment_intent=None,
                    now_us=uow.clock.now_us(),
                    expected=(deposit.status, deposit.payment_intent),
                ):
                    changed = True  # authorized meanwhile: the next pass voids what it holds
                    continue
                await _audit_deposit(
                    uow,
                    ctx,
                    deposit.id,
                    "auctions.deposit.release",
                    {
                        "lot_id": lot_id,
                        "bidder_id": deposit.bidder_id,
                        "payment_intent": intent_id,
                        "amount": deposit.amount,
                    },
                )
            released += 1
        if changed:
            return released  # ``deposits_released`` stays false: the scheduler comes back
        async with self.db.transaction() as uow:
            await storage.mark_deposits_released(uow, lot_id)
        return released

    async def _void(self, ctx: Context, intent_id: str) -> PaymentIntent:
        """Void a deposit's authorization; the intent as it is after. One still ``processing``
        (an authorization whose outcome is unknown) is driven to its outcome first; if it is
        still unknown, or the void is, the intent is not dead yet and the caller comes back."""
        intent, _ = await self.payments.get(intent_id)
        if intent.status is IntentStatus.PROCESSING:
            intent = await self.payments.drive(ctx, intent_id)
        if intent.status in _DEAD_INTENT or intent.status is IntentStatus.PROCESSING:
            return intent
        try:
            return await self.payments.cancel(ctx, intent_id, reason="abandoned")
        except PaymentTransition:
            log.warning("auctions.deposit_not_voidable", intent=intent_id)
            intent, _ = await self.payments.get(intent_id)
            return intent

    # -- the scheduler ----------------------------------------------------------------------

    async def scheduler_pass(self, ctx: Context) -> dict[str, int]:
        """Open due scheduled lots, close due open lots (each in its own transaction, claimed
        with ``FOR UPDATE SKIP LOCKED``), then release deposits of finished lots."""
        counts = {"opened": 0, "closed": 0, "released": 0, "renewed": 0}
        now_us = self.db.clock.now_us()
        self.set_aside = {k: v for k, v in self.set_aside.items() if v > now_us}
        async with self.db.read() as uow:
            due = await storage.any_due(uow, now_us=uow.clock.now_us())
        if due:  # idle passes never take the write lock (SQLite has one writer)
            await self._open_and_close_due(ctx, counts)
        async with self.db.read() as uow:
            at = self.release_cursor.at("releases")
            pending = await storage.lots_with_unreleased_deposits(
                uow,
                limit=self.close_batch,
                skip=self.set_aside.keys(),
                after=None if at is None else at[1],
            )
        self.release_cursor.read("releases", [("", lot_id) for lot_id in pending], self.close_batch)
        for lot_id in pending:
            try:
                counts["released"] += await self.release_deposits(ctx, lot_id)
            except Exception:  # one lot's release never stops the others, nor the renewals
                log.exception("auctions.release_failed", lot_id=lot_id)
                self._set_aside(lot_id)  # nor fills the next passes' pages
        now_us = self.db.clock.now_us()
        if now_us - self.renewed_us >= _RENEW_EVERY_US:  # a scan of held deposits: once a minute
            self.renewed_us = now_us
            counts["renewed"] = await self.renew_deposits(ctx)
        return counts

    async def _open_and_close_due(self, ctx: Context, counts: dict[str, int]) -> None:
        """Due lots are claimed oldest first, one per transaction. A lot whose transition
        fails (a bug, a value nothing foresaw) is logged at error level, passed over for the
        rest of the pass (the claim moves past it) and set aside in this process for a minute
        (``set_aside``), so it never stops the lots due after it; it is tried again after
        that. Opening and closing each stop for the pass after 16 failures."""
        for status, column, count in (
            (LotStatus.SCHEDULED, "starts_at_us", "opened"),
            (LotStatus.OPEN, "ends_at_us", "closed"),
        ):
            failures, after = 0, None
            for _ in range(self.close_batch):
                claimed: Lot | None = None
                try:
                    async with self.db.transaction() as uow:
                        now_us = uow.clock.now_us()
                        claimed = await storage.claim_due(
                            uow,
                            status,
                            column=column,
                            now_us=now_us,
                            skip=self.set_aside.keys(),
                            after=after,
                        )
                        if claimed is None:
                            break
                        if status is LotStatus.SCHEDULED:
                            await self._start_if_due(uow, ctx, claimed, now_us)
                        else:
                            await self._close_locked(uow, ctx, claimed, reason="ended")
                except Exception:
                    if claimed is None:
                        raise  # the database itself: the pass fails, the next one retries
                    log.exception("auctions.scheduler_lot_failed", lot_id=claimed.id, doing=count)
                    self._set_aside(claimed.id)
                    after = (getattr(claimed, column), claimed.id)
                    failures += 1
                    if failures >= _MAX_FAILED_PER_PASS:
                        break  # something broader is wrong; deposits still get their turn
                    continue
                counts[count] += 1

    def _set_aside(self, lot_id: str) -> None:
        """Leave ``lot_id`` out of this process's claims for a while (the newest failure is
        always remembered: every entry lives as long, so the oldest is due back soonest)."""
        _remember(self.set_aside, lot_id, self.db.clock.now_us() + _SET_ASIDE_US, _MAX_SET_ASIDE)

    async def renew_deposits(self, ctx: Context) -> int:
        """Replace deposit authorizations that would lapse while still needed — before their
        lot can end, or for the winner's (kept) deposit before the order's payment window
        ends: a new authorization on the same card first, then the deposit (and the order)
        points at it, then the old one is voided (so a bidder is never left without a deposit
        in between). Each attempt is recorded in ``deposit_renewals`` before its authorization
        is asked for; unsettled attempts (any process's, from before any restart) are settled
        first (ADR 0019)."""
        now_us = self.db.clock.now_us()
        await self._settle_renewals(ctx)
        renewed, after_id = 0, ""
        for _ in range(_RENEW_PAGES):
            async with self.db.read() as uow:
                page = await storage.renewable_deposits(
                    uow, now_us=now_us, after_id=after_id, limit=self.close_batch
                )
            for deposit, needed_until_us in page:
                try:
                    renewed += await self._renew_one(ctx, deposit, needed_until_us, now_us)
                except Exception:  # one deposit's renewal never stops the others'
                    log.exception("auctions.deposit_renewal_error", deposit=deposit.id)
            if len(page) < self.close_batch:
                break
            after_id = page[-1][0].id
        return renewed

    async def _renew_one(
        self, ctx: Context, deposit: Deposit, needed_until_us: int, now_us: int
    ) -> int:
        if deposit.payment_intent is None:
            return 0
        old, _ = await self.payments.get(deposit.payment_intent)
        expires_us = old.authorization_expires_us
        if old.status is not IntentStatus.REQUIRES_CAPTURE or expires_us is None:
            return 0
        # Renewed a day ahead of its lapse, when it may lapse less than a day after it is last
        # needed: the default (or the close) comes on a background pass after that instant,
        # not at it, and a lapse time is only the card brand's rule of thumb.
        if (
            expires_us - now_us > _RENEW_MARGIN_US
            or needed_until_us + _RENEW_MARGIN_US < expires_us
        ):
            return 0
        async with self.db.read() as uow:
            last = await storage.get_renewal(uow, deposit.id, deposit.version)
            # A kept deposit is renewed only if its order would follow: asked first, so a
            # refusal (a pay asked for, the deadline near, the order over) puts no new hold on
            # the card only to void it.
            if deposit.status is DepositStatus.KEPT and not await self.order_takes_renewal(
                uow, old.id
            ):
                return 0
        if last is not None and last.state is RenewalState.DECLINED:
            if last.retry_at_us is not None and now_us < last.retry_at_us:
                return 0
            # A new attempt under a new row version: every process reading the row shares it.
            async with self.db.transaction() as uow:
                if not await storage.bump_deposit(uow, deposit, now_us=uow.clock.now_us()):
                    return 0  # it moved on meanwhile: the next scan reads it again
            deposit = replace(deposit, version=deposit.version + 1)
        elif last is not None and last.state is not RenewalState.OPEN:
            return 0  # this version's attempt went through: the settling pass finishes it
        # Every process renewing the same deposit row (same version) shares one attempt and one
        # authorization, resumed by whoever comes next if an answer was lost; once the row
        # moved on (a swap, the close keeping it, a retry after a decline), a new one.
        key = f"deposit:{deposit.id}:renew:{old.id}:v{deposit.version}"
        async with self.db.transaction() as uow:
            attempt = await storage.record_renewal(
                uow, deposit, old_intent=old.id, payments_key=key, now_us=uow.clock.now_us()
            )
        if attempt.state is not RenewalState.OPEN:
            # Another process's attempt at this version went through meanwhile (read before it
            # was recorded here): the settling pass finishes it.
            return 0
        new = await self.payments.create(
            ctx,
            NewIntent(
                amount=deposit.amount,
                currency=deposit.currency,
                payment_method=old.payment_method,
                capture_method=CaptureMethod.MANUAL,
                confirm=True,
                customer=deposit.bidder_id,
                description=f"deposit for lot {deposit.lot_id} (renewed)",
                metadata={"lot_id": deposit.lot_id, "deposit_id": deposit.id, "renews": old.id},
                purpose=Purpose.DEPOSIT,
                destination_account=deposit.account,
            ),
            idempotency_key=key,
            scope=_PAYMENTS_SCOPE,
        )
        if new.status is IntentStatus.PROCESSING:
            # Its answer is not in: the next pass (any process) resumes it under the same key
            # while the row stays at this version; once it moves on, nobody can swap it in and
            # the settling pass voids it.
            async with self.db.transaction() as uow:
                noted = await storage.note_renewal_intent(uow, attempt, new.id, uow.clock.now_us())
            if not noted:
                await self._unrecorded(ctx, deposit.id, new.id)
            return 0
        if new.status is not IntentStatus.REQUIRES_CAPTURE:
            await self._declined(ctx, deposit, attempt, new.id, now_us, reason="declined")
            return 0
        try:
            async with self.db.transaction() as uow:
                swapped = await self._swap(uow, ctx, deposit, attempt, new.id)
        except _OrderMovedOn:  # rolled back: the order took the deposit or ended meanwhile
            swapped = False
        if not swapped:
            # Another process may have made the same renewal (same key, same authorization) and
            # swapped it in: then it is the deposit's now, never to be voided here.
            async with self.db.read() as uow:
                now = await storage.get_deposit(uow, deposit.id)
            if now is None or now.payment_intent != new.id:
                await self._declined(ctx, deposit, attempt, new.id, now_us, reason="not_swapped")
            return 0
        stands = await self._finish_swap(
            ctx, replace(attempt, intent_id=new.id, state=RenewalState.SWAPPED)
        )
        return 1 if stands else 0

    async def _unrecorded(self, ctx: Context, deposit_id: str, intent_id: str) -> None:
        """A renewal answered ``processing`` whose attempt was closed meanwhile (the settling
        pass found no intent under its key while this call was in flight): nothing will settle
        it but this — voided unless the deposit points at it."""
        async with self.db.read() as uow:
            now = await storage.get_deposit(uow, deposit_id)
        if now is None or now.payment_intent != intent_id:
            log.warning("auctions.deposit_renewal_unrecorded", deposit=deposit_id, intent=intent_id)
            await self._void(ctx, intent_id)

    async def _declined(
        self,
        ctx: Context,
        deposit: Deposit,
        attempt: Renewal,
        intent_id: str,
        now_us: int,
        *,
        reason: str,
    ) -> None:
        """The renewal cannot be the deposit's: ``declined`` (refused, or waiting for a 3-D
        Secure challenge nobody will take) or ``not_swapped`` (the row, or the order, moved on
        before the swap; escrow refuses once a pay was asked for or near the deadline). It is
        voided; the old authorization still holds, and a new attempt is made later."""
        log.warning("auctions.deposit_renewal_failed", deposit=deposit.id, intent=intent_id)
        new = await self._void(ctx, intent_id)
        if new.status not in _DEAD_INTENT:
            # The void is not through: the attempt stays open and the settling pass voids it.
            async with self.db.transaction() as uow:
                if not await storage.note_renewal_intent(
                    uow, attempt, intent_id, uow.clock.now_us()
                ):
                    log.warning(
                        "auctions.deposit_renewal_unrecorded", deposit=deposit.id, intent=intent_id
                    )
            return
        lapses_us = None
        if reason == "declined" and deposit.payment_intent is not None:
            held, _ = await self.payments.get(deposit.payment_intent)
            lapses_us = held.authorization_expires_us
        async with self.db.transaction() as uow:
            if await storage.set_renewal(
                uow,
                attempt,
                state=RenewalState.DECLINED,
                intent_id=new.id,
                retry_at_us=now_us + _RENEW_RETRY_US,
                now_us=uow.clock.now_us(),
                expected=(RenewalState.OPEN,),  # never over a swap another process made
            ):
                await _audit_deposit(
                    uow,
                    ctx,
                    deposit.id,
                    "auctions.deposit.renewal_declined",
                    {
                        "lot_id": deposit.lot_id,
                        "intent": new.id,
                        "status": new.status.value,
                        "reason": reason,
                    },
                )
                if reason == "declined":
                    # The card refused: only the bidder can fix that (another card, their
                    # bank), so the marketplace is told in time to ask them.
                    await webhooks.enqueue(
                        uow,
                        "deposit.renewal_declined",
                        {
                            **deposit_json(deposit, None),
                            "renewal": {
                                "payment_intent": new.id,
                                "status": new.status.value,
                                "next_try": format_rfc3339(now_us + _RENEW_RETRY_US),
                            },
                            "authorization_expires": None
                            if lapses_us is None
                            else format_rfc3339(lapses_us),
                        },
                        ts_us=uow.clock.now_us(),
                    )

    async def _settle_renewals(self, ctx: Context) -> None:
        """Every attempt that may still leave an authorization held beside the deposit, whoever
        made it and whenever: ``swapped`` (void the old one), ``undone`` (void the renewal),
        ``open`` (void the renewal once nobody can swap it in any more)."""
        after: tuple[str, int] = ("", 0)
        for _ in range(_RENEW_PAGES):
            async with self.db.read() as uow:
                page = await storage.unsettled_renewals(uow, after=after, limit=self.close_batch)
            for attempt in page:
                try:
                    await self._settle_renewal(ctx, attempt)
                except Exception:  # one never stops the others, nor the renewal scan after them
                    log.exception(
                        "auctions.deposit_renewal_error",
                        deposit=attempt.deposit_id,
                        intent=attempt.intent_id,
                    )
            if len(page) < self.close_batch:
                return
            after = (page[-1].deposit_id, page[-1].version)

    async def _settle_renewal(self, ctx: Context, attempt: Renewal) -> None:
        if attempt.state is RenewalState.SWAPPED:
            await self._finish_swap(ctx, attempt)
            return
        if attempt.state is RenewalState.UNDONE:
            await self._void_undone(ctx, attempt)
            return
        async with self.db.read() as uow:
            deposit = await storage.get_deposit(uow, attempt.deposit_id)
        intent_id = attempt.intent_id or await self._intent_by_key(attempt.payments_key)
        if deposit is not None and intent_id is not None and deposit.payment_intent == intent_id:
            return  # swapped in (this read is older than the swap): the swapper finishes it
        if deposit is not None and deposit.version == attempt.version:
            current = None
            if deposit.payment_intent is not None:
                current, _ = await self.payments.get(deposit.payment_intent)
            if current is not None and current.status is IntentStatus.REQUIRES_CAPTURE:
                return  # the next renewal pass resumes it under the same key
            # The authorization it was to replace was captured (a pay, a default) or died:
            # nobody resumes it. A new row version makes sure nobody can swap it in any more.
            async with self.db.transaction() as uow:
                if not await storage.bump_deposit(uow, deposit, now_us=uow.clock.now_us()):
                    return  # moved on meanwhile: looked at again on the next pass
        if intent_id is None:
            # Payments never recorded the key: no authorization was asked for — unless the
            # call is still under way (a gateway call is bounded by its timeout, far below).
            if self.db.clock.now_us() - attempt.updated_us > _RENEW_UNANSWERED_US:
                await self._renewal_done(attempt)
            return
        if (await self._void(ctx, intent_id)).status in _DEAD_INTENT:
            await self._renewal_done(replace(attempt, intent_id=intent_id))

    async def _finish_swap(self, ctx: Context, attempt: Renewal) -> bool:
        """The deposit points at the renewal: void the old authorization. Should the old one
        have been captured between the swap and its void (escrow's rules leave no known way:
        a pay asked for, or the payment deadline near, refuses the swap), it is the deposit
        again: the deposit row (and the order, unless escrow recorded the capture itself)
        points back at it and the renewal is voided, so nothing captures both. Whether the
        renewal stands."""
        voided = await self._void(ctx, attempt.old_intent)
        if voided.status in _DEAD_INTENT:
            await self._renewal_done(attempt)
            return True
        if not _captured(voided) or attempt.intent_id is None:
            return True  # not through yet: the next pass voids it again
        async with self.db.transaction() as uow:
            if not await storage.set_renewal(
                uow, attempt, state=RenewalState.UNDONE, now_us=uow.clock.now_us()
            ):
                return False  # another process is undoing it
            await storage.set_deposit(
                uow,
                attempt.deposit_id,
                status=DepositStatus.KEPT,
                payment_intent=attempt.old_intent,
                now_us=uow.clock.now_us(),
                expected=(DepositStatus.KEPT, attempt.intent_id),
            )
            # Escrow records what it captures itself; a capture made elsewhere (an operator
            # through the payments API) needs the order pointed back too (refused otherwise).
            await self.renew_order_deposit(uow, ctx, attempt.intent_id, attempt.old_intent)
            deposit = await storage.get_deposit(uow, attempt.deposit_id)
            await _audit_deposit(
                uow,
                ctx,
                attempt.deposit_id,
                "auctions.deposit.renew_undone",
                {
                    "lot_id": None if deposit is None else deposit.lot_id,
                    "captured": attempt.old_intent,
                    "voided": attempt.intent_id,
                },
            )
        await self._void_undone(ctx, replace(attempt, state=RenewalState.UNDONE))
        return False

    async def _void_undone(self, ctx: Context, attempt: Renewal) -> None:
        """The renewal of an undone swap is voided; done once dead (or, should both have been
        captured, once that is logged for an operator: nothing here can take it back)."""
        if attempt.intent_id is None:  # an undone attempt always has one; kept for the type
            await self._renewal_done(attempt)
            return
        renewal = await self._void(ctx, attempt.intent_id)
        if _captured(renewal):
            log.error(
                "auctions.deposit_captured_twice",
                deposit=attempt.deposit_id,
                intents=[attempt.old_intent, attempt.intent_id],
            )
        if renewal.status in _DEAD_INTENT or _captured(renewal):
            await self._renewal_done(attempt)

    async def _intent_by_key(self, payments_key: str) -> str | None:
        """The intent payments made under this service's ``payments_key``, if it made one."""
        async with self.db.read() as uow:
            found = await payments_storage.find_intent_by_request(
                uow, _PAYMENTS_SCOPE, payments_key
            )
        return None if found is None else found.id

    async def _renewal_done(self, attempt: Renewal) -> None:
        async with self.db.transaction() as uow:
            await storage.set_renewal(
                uow,
                attempt,
                state=RenewalState.DONE,
                intent_id=attempt.intent_id,
                now_us=uow.clock.now_us(),
            )

    async def _swap(
        self, uow: UnitOfWork, ctx: Context, deposit: Deposit, attempt: Renewal, new_id: str
    ) -> bool:
        """The deposit points at ``new_id`` — and so does its order, for a kept deposit, in the
        same transaction (raises ``_OrderMovedOn`` to roll back when the order will not) — and
        the attempt is ``swapped``."""
        if not await storage.swap_deposit_intent(uow, deposit, new_id, now_us=uow.clock.now_us()):
            return False
        if deposit.status is DepositStatus.KEPT and not await self.renew_order_deposit(
            uow, ctx, attempt.old_intent, new_id
        ):
            raise _OrderMovedOn
        if not await storage.set_renewal(
            uow,
            attempt,
            state=RenewalState.SWAPPED,
            intent_id=new_id,
            now_us=uow.clock.now_us(),
            expected=(RenewalState.OPEN,),
        ):
            raise _OrderMovedOn  # the attempt was closed meanwhile: no swap without its record
        await _audit_deposit(
            uow,
            ctx,
            deposit.id,
            "auctions.deposit.renew",
            {"lot_id": deposit.lot_id, "old": attempt.old_intent, "new": new_id},
        )
        return True

    # -- deposits ---------------------------------------------------------------------------

    async def create_deposit(
        self, ctx: Context, lot_id: str, *, bidder_id: str, idempotency_key: str | None
    ) -> tuple[Deposit, PaymentIntent | None]:
        """Record the deposit and its ledger account, then authorize the card (manual capture)
        outside the transaction, then record the intent on the deposit."""
        dead = await self._dead_deposits(lot_id, bidder_id)
        deposit, card = await self._record_deposit(ctx, lot_id, bidder_id, idempotency_key, dead)
        if deposit.status not in _OPEN_DEPOSITS:
            return deposit, await self._intent_of(deposit)
        if deposit.payment_intent is not None:
            return deposit, await self._intent_of(deposit)
        intent = await self.payments.create(
            ctx,
            NewIntent(
                amount=deposit.amount,
                currency=deposit.currency,
                payment_method=card,
                capture_method=CaptureMethod.MANUAL,
                confirm=True,
                customer=bidder_id,
                description=f"deposit for lot {lot_id}",
                metadata={"lot_id": lot_id, "deposit_id": deposit.id},
                purpose=Purpose.DEPOSIT,
                destination_account=deposit.account,
            ),
            idempotency_key=f"deposit:{deposit.id}",
            scope=_PAYMENTS_SCOPE,
        )
        status = DepositStatus.HELD if intent.status in _HELD_INTENT else DepositStatus.FAILED
        async with self.db.transaction() as uow:
            # Under the lot's lock, as the close is: a lot that finished while the card was
            # being authorized gets no held deposit (the close never saw this hold; it would
            # stay on the card until the authorization lapsed).
            lot = await storage.get_lot(uow, lot_id, for_update=True)
            if lot is not None and lot.status in FINISHED:
                status = DepositStatus.RELEASED
            written = await storage.set_deposit(
                uow,
                deposit.id,
                status=status,
                payment_intent=intent.id,
                now_us=uow.clock.now_us(),
                expected=(DepositStatus.PENDING, None),
            )
            saved = await storage.get_deposit(uow, deposit.id)
        if saved is None:
            raise LedgerInvariantError(f"deposit {deposit.id} vanished")
        if (written and status is DepositStatus.RELEASED) or (
            not written and saved.payment_intent != intent.id
        ):
            await self._void(ctx, intent.id)  # nobody else will: this hold is not on a deposit
        return saved, intent

    async def _intent_of(self, deposit: Deposit) -> PaymentIntent | None:
        if deposit.payment_intent is None:
            return None
        intent, _ = await self.payments.get(deposit.payment_intent)
        return intent

    async def _dead_deposits(self, lot_id: str, bidder_id: str) -> dict[str, str]:
        """The bidder's open deposits on the lot whose intent holds nothing any more (a 3-D
        Secure challenge failed after the call, the authorization was voided or lapsed):
        deposit id → intent id. Asked of the payments service before the deposit's
        transaction."""
        async with self.db.read() as uow:
            priors = await storage.deposits_of(uow, lot_id, bidder_id)
        dead: dict[str, str] = {}
        for prior in priors:
            if prior.status not in _OPEN_DEPOSITS or prior.payment_intent is None:
                continue
            intent, _ = await self.payments.get(prior.payment_intent)
            if intent.status in _DEAD_INTENT:
                dead[prior.id] = prior.payment_intent
        return dead

    async def _fail_deposit(self, uow: UnitOfWork, ctx: Context, deposit: Deposit) -> bool:
        """``held`` → ``failed`` for a deposit whose intent is dead (unless it changed since)."""
        now_us = uow.clock.now_us()
        if not await storage.set_deposit(
            uow,
            deposit.id,
            status=DepositStatus.FAILED,
            payment_intent=None,
            now_us=now_us,
            expected=(deposit.status, deposit.payment_intent),
        ):
            return False
        await _audit_deposit(
            uow,
            ctx,
            deposit.id,
            "auctions.deposit.fail",
            {"lot_id": deposit.lot_id, "payment_intent": deposit.payment_intent},
        )
        return True

    async def _record_deposit(
        self,
        ctx: Context,
        lot_id: str,
        bidder_id: str,
        idempotency_key: str | None,
        dead: dict[str, str],
    ) -> tuple[Deposit, str | None]:
        async with self.db.transaction() as uow:
            lot = await self._visible(uow, ctx, lot_id, for_update=True)
            card = await parties.default_card(uow, bidder_id)
            if ctx.actor.key_id is not None and idempotency_key is not None:
                found = await storage.find_deposit_by_request(
                    uow, ctx.actor.key_id, idempotency_key
                )
                if found is not None:
                    if (found.lot_id, found.bidder_id) != (lot_id, bidder_id):
                        raise KeyReused(REUSE_DETAIL)  # the key made another deposit
                    return found, card
            await self._check_deposit(uow, ctx, lot, bidder_id, card)
            for prior in await storage.deposits_of(uow, lot_id, bidder_id):
                if prior.status not in _OPEN_DEPOSITS:
                    continue
                is_dead = prior.payment_intent is not None and (
                    dead.get(prior.id) == prior.payment_intent
                )
                if is_dead and await self._fail_deposit(uow, ctx, prior):
                    continue  # a dead one does not count: the bidder gets a new deposit
                return prior, card
            now_us = uow.clock.now_us()
            deposit = Deposit(
                id=new_id("dep"),
                lot_id=lot_id,
                bidder_id=bidder_id,
                amount=lot.deposit_amount,
                currency=lot.currency,
                account=deposit_account(bidder_id, lot_id),
                payment_intent=None,
                status=DepositStatus.PENDING,
                created_us=now_us,
                updated_us=now_us,
                version=1,
            )
            results = await ledger.create_accounts(
                uow,
                None,
                [
                    AccountInput(
                        deposit.account,
                        lot.currency,
                        "deposit",
                        AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS,
                        "{}",
                    )
                ],
                public=False,
            )
            if any(r.result not in {"ok", "exists"} for r in results):
                raise LedgerInvariantError(f"deposit account {deposit.account}: {results}")
            await storage.insert_deposit(
                uow, deposit, key_id=ctx.actor.key_id, idempotency_key=idempotency_key
            )
            await _audit_deposit(
                uow,
                ctx,
                deposit.id,
                "auctions.deposit.create",
                {
                    "lot_id": lot_id,
                    "bidder_id": bidder_id,
                    "amount": deposit.amount,
                    "currency": deposit.currency,
                },
            )
            return deposit, card

    async def _check_deposit(
        self, uow: UnitOfWork, ctx: Context, lot: Lot, bidder_id: str, card: str | None
    ) -> None:
        if lot.status not in {LotStatus.SCHEDULED, LotStatus.OPEN}:
            raise LotNotOpen(f"lot {lot.id} is {lot.status.value}", lot_status=lot.status.value)
        if lot.deposit_amount == 0:
            raise DepositNotNeeded(f"lot {lot.id} asks for no deposit")
        if lot.seller_id in {bidder_id, ctx.actor.principal_id}:
            raise OwnLot(f"lot {lot.id} is the bidder's own")
        await parties.require_party(uow, ctx, bidder_id, PartyKind.BIDDER)
        if card is None:
            raise CardRequired(f"bidder {bidder_id} has no card on file")

    # -- helpers ----------------------------------------------------------------------------

    async def _save(self, uow: UnitOfWork, before: Lot, after: Lot) -> Lot:
        saved = replace(after, version=before.version + 1, updated_us=uow.clock.now_us())
        if not await storage.save_lot(uow, saved, expected_version=before.version):
            raise LedgerInvariantError(f"lot {before.id} changed under its row lock")
        return saved

    async def _audit(
        self,
        uow: UnitOfWork,
        ctx: Context,
        lot: Lot,
        action: str,
        *,
        extra: dict[str, Any] | None = None,
    ) -> None:
        await audit.record(uow, lot_event(ctx, lot, action, ts_us=uow.clock.now_us(), extra=extra))

    async def _audit_bid(
        self, uow: UnitOfWork, ctx: Context, lot: Lot, bid: Bid, action: str, *, extended: bool
    ) -> None:
        await audit.record(uow, bid_event(ctx, lot, bid, action, extended=extended))


class _OrderMovedOn(Exception):
    """Escrow would not follow a kept deposit's renewal (the order took the deposit, or ended),
    or the attempt's record was closed meanwhile: raised inside the swap's transaction to roll
    the deposit's swap back."""


def _remember(memory: dict[str, Any], key: str, value: Any, limit: int) -> None:
    """Bounded per-process memory (``limit`` entries): when full, the oldest makes room."""
    if key not in memory:
        while memory and len(memory) >= limit:
            del memory[next(iter(memory))]
    memory[key] = value


async def _audit_deposit(
    uow: UnitOfWork, ctx: Context, deposit_id: str, action: str, details: dict[str, Any]
) -> None:
    event = ctx.event(
        action,
        resource_type="deposit",
        resource_id=deposit_id,
        ts_us=uow.clock.now_us(),
        details=details,
    )
    await audit.record(uow, event)


def _captured(intent: PaymentIntent) -> bool:
    """Whether the authorization was captured (or its capture is under way)."""
    return intent.status is IntentStatus.SUCCEEDED or (
        intent.status is IntentStatus.PROCESSING and intent.pending_op is PendingOp.CAPTURE
    )


async def mark_settled(uow: UnitOfWork, ctx: Context, lot_id: str) -> bool:
    """``closed`` → ``settled``, inside the caller's transaction (escrow calls it when the lot's
    order is released to the seller). Idempotent; False when there is nothing to do — the lot
    is already settled, or is not a closed lot here: lot bookkeeping never blocks the release
    of an order's money (such a case is logged)."""
    lot = await storage.get_lot(uow, lot_id, for_update=True)
    if lot is None or lot.status is not LotStatus.CLOSED:
        if lot is None or lot.status is not LotStatus.SETTLED:
            log.warning("auctions.settle_skipped", lot=lot_id, status=lot and lot.status.value)
        return False
    now_us = uow.clock.now_us()
    settled = replace(lot, status=LotStatus.SETTLED, version=lot.version + 1, updated_us=now_us)
    if not await storage.save_lot(uow, settled, expected_version=lot.version):
        raise LedgerInvariantError(f"lot {lot_id} changed under its row lock")
    await audit.record(
        uow,
        ctx.event(
            "auctions.lot.settle",
            resource_type="lot",
            resource_id=lot_id,
            ts_us=now_us,
            details={"hammer_price": lot.hammer_price, "winner_id": lot.winner_id},
        ),
    )
    return True

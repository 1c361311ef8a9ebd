"""Orders after a lot closes: payment into escrow, shipping, inspection, release, payout,
disputes, default and second-chance offers (docs/escrow.md, ADR 0011).

Every state change is one database transaction holding the order's new row, its timeline entry,
its ledger transfers, its audit event and its ``order.*`` webhook. Gateway calls never sit inside
a transaction: payments go through :class:`hammerlock.payments.service.Payments` (which follows
its own record-call-commit pattern), and a payout records its key on the order (``payout_status
= pending``) in the release transaction, calls the gateway with that key, then commits the
outcome; a crash in between leaves ``pending`` and :meth:`Escrow.sweep` repeats the call with
the same key.

Ledger (all transfers ids derive from the order id, so a repeat answers ``exists``):

- paid: the deposit intent is captured (payments posts ``gateway → deposit:{buyer}:{lot}``),
  then ``deposit → escrow:{order}``; the rest is a payment intent ``gateway → escrow:{order}``;
- release: linked ``escrow → seller:{id}:payable:{CUR}`` and ``escrow → platform:revenue:{CUR}``;
- payout: ``seller payable → gateway:{name}:{CUR}``;
- refund: payments posts ``escrow → gateway`` for the rest intent; the deposit's share is first
  routed ``escrow → deposit:{buyer}:{lot}`` (the deposit intent refunds from its own account);
- default: ``deposit → platform:penalties:{CUR}`` (and ``escrow → penalties`` for a deposit
  already moved into escrow);
- cancel (a paid order never shipped; an operator or the ship window): a full refund from
  escrow, as a dispute's;
- refund after release: payments refunds from ``platform:refunds:{CUR}`` (escrow is empty);
- resolving again after a rejected refund: ``deposit → escrow`` back, the newly released part
  ``escrow → seller / revenue``, new refunds (ADR 0012);
- chargeback: payments calls :func:`chargeback`, which locks the order and lets payments book
  ``platform:chargebacks → gateway`` in that transaction; the resolution pays it back ``escrow →
  platform:chargebacks``; one on the winner's deposit before the close is carried by
  :func:`open_order`;
- payout after a failed one: more released later queues the next payout of all released and
  not paid out (the re-resolution, or the failure's record); `failed` means the gateway
  refused the payout (no money moved) — a refusal that only says the key was used before with
  other parameters leaves it pending for an operator (``escrow.payout_ambiguous``).

Lock order: an order's row before any ledger account (and a chargeback's payment intent before
both), in every transaction: a chargeback and a payout's completion never deadlock.

Hot rows: ``open_order`` creates the shared ``platform:*`` and seller accounts only when a plain
read does not find them (no row lock on them in the lot-close transaction), and
``platform:revenue`` is touched only by a release, never by a payment.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

import sqlalchemy as sa
import structlog

from hammerlock.audit import service as audit
from hammerlock.audit.model import Context
from hammerlock.db.engine import Database
from hammerlock.db.queues import Cursors
from hammerlock.db.rows import Along
from hammerlock.db.uow import UnitOfWork
from hammerlock.escrow import storage
from hammerlock.escrow.errors import (
    InvalidPayoutAction,
    InvalidTrackingNumber,
    InvalidTransition,
    OfferNotOpen,
    OrderNotFound,
    PaymentMethodRequired,
    PayoutLookupFailed,
    RefundOutOfRange,
    RefundTooLarge,
)
from hammerlock.escrow.model import (
    Event,
    OfferStatus,
    Order,
    OrderStatus,
    OrderTerms,
    PayoutAction,
    PayoutStatus,
    RefundKind,
    escrow_account,
    fees_for,
    new_order_id,
    next_status,
    refund_intent,
    refund_kind,
    settle,
    valid_tracking_number,
)
from hammerlock.escrow.views import Reader, order_json
from hammerlock.ledger import service as ledger
from hammerlock.ledger.errors import AccountNotFound
from hammerlock.ledger.model import (
    AccountFlag,
    AccountInput,
    LedgerInvariantError,
    TransferFlag,
    TransferInput,
)
from hammerlock.payments.errors import InvalidTransition as IntentNotCapturable
from hammerlock.payments.gateways.base import Gateway, GatewayError, GatewayRejected, PayoutRequest
from hammerlock.payments.model import (
    CaptureMethod,
    IntentStatus,
    PaymentIntent,
    RefundReason,
    RefundStatus,
)
from hammerlock.payments.service import (
    Chargeback,
    ChargebackBooking,
    NewIntent,
    NewRefund,
    Payments,
    charged_back,
)
from hammerlock.security.pan import contains_pan
from hammerlock.webhooks import service as webhooks

__all__ = [
    "CardOnFile",
    "Escrow",
    "EscrowConfig",
    "OrderView",
    "chargeback",
    "open_order",
    "renew_deposit",
]

log = structlog.get_logger("hammerlock.escrow")

_LEDGER_OK: Final = frozenset({"ok", "exists"})
_TIMELINE_MAX: Final = 200
_ID_ATTEMPTS: Final = 16
_BUYER_ROLES: Final = frozenset({"bidder"})
_SELLER_ROLES: Final = frozenset({"seller"})
_LIMITED: Final = _BUYER_ROLES | _SELLER_ROLES
_LABELS: Final = {
    Event.PAY: "payment_requested",
    Event.SHIP: "shipped",
    Event.CONFIRM_DELIVERY: "delivered",
    Event.AUTO_DELIVER: "delivered",
    Event.ACCEPT: "released",
    Event.INSPECTION_END: "released",
    Event.DISPUTE: "disputed",
    Event.RESOLVE_REFUND: "resolved",
    Event.RESOLVE_RELEASE: "resolved",
    Event.DEFAULT: "defaulted",
    Event.RERESOLVE: "reresolved",
    Event.REFUND_AFTER_RELEASE: "refunded_after_release",
    Event.CANCEL: "canceled",
    Event.SHIP_TIMEOUT: "canceled",
    Event.CHARGEBACK: "chargeback",
}
_OPEN_INTENT: Final = frozenset(
    {
        IntentStatus.REQUIRES_PAYMENT_METHOD,
        IntentStatus.REQUIRES_CONFIRMATION,
        IntentStatus.REQUIRES_ACTION,
        IntentStatus.REQUIRES_REVIEW,
        IntentStatus.REQUIRES_CAPTURE,
    }
)

CardOnFile = Callable[[UnitOfWork, str], Awaitable[str | None]]
"""``(uow, bidder_id) -> tok_…`` of the bidder's default card, or ``None`` (parties' service)."""
PayoutDestination = Callable[[UnitOfWork, str], Awaitable[str | None]]
"""``(uow, seller_id) ->`` the seller's payout destination at the gateway, or ``None``."""
_PAYABLE: Final = frozenset({PayoutStatus.PENDING, PayoutStatus.NO_DESTINATION})
# no payout under way: more released to the seller queues the next one at once
_PAYOUT_IDLE: Final = frozenset({PayoutStatus.NONE, PayoutStatus.PAID, PayoutStatus.FAILED})
# Refusals that do not say the payout was refused: the key was used before with other
# parameters, and that earlier call may have paid. `failed` must mean "no money moved".
_AMBIGUOUS_REFUSALS: Final = frozenset({"idempotency_mismatch", "idempotency_key_reuse"})
_AMBIGUOUS_REPORT_S: Final = 3_600.0
_LOOKUP_EVERY_S: Final = 300.0  # an ambiguous payout is looked up at the gateway this often


@dataclass(frozen=True, slots=True)
class EscrowConfig:
    auto_delivery_s: int = 14 * 86_400  # no word from the buyer this long after shipping
    ship_window_s: int = 7 * 86_400  # a paid order not shipped this long is canceled, refunded
    default_gateway: str = "sandbox"
    sweeper_grace_s: float = 10.0  # a payout or refund this quiet is resumed by the sweeper
    sweep_batch: int = 100


@dataclass(frozen=True, slots=True)
class OrderView:
    order: Order
    escrow_balance: int
    timeline: list[dict[str, Any]]
    payment_intent: PaymentIntent | None = None
    reader: Reader = Reader.STAFF  # what the reader may see of it (escrow.views.order_for)


def _ensure_ledger(results: list[str], what: str) -> None:
    if not set(results) <= _LEDGER_OK:
        raise LedgerInvariantError(f"ledger refused {what}: {results}")


def _linked(transfers: list[TransferInput]) -> list[TransferInput]:
    """Chain ``transfers`` (all but the last carry LINKED): all post or none does."""
    return [
        replace(t, flags=t.flags | TransferFlag.LINKED) if i < len(transfers) - 1 else t
        for i, t in enumerate(transfers)
    ]


def _transfer(order: Order, suffix: str, debit: str, credit: str, amount: int) -> TransferInput:
    return TransferInput(
        id=f"{order.id}:{suffix}",
        debit_account_id=debit,
        credit_account_id=credit,
        amount=amount,
        currency=order.currency,
        code=f"escrow.{suffix}",
    )


# -- opening an order (inside the lot close's transaction) -------------------------------------


def _order_accounts(order_id: str, seller_id: str, currency: str) -> list[AccountInput]:
    limited = AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS
    return [
        AccountInput(escrow_account(order_id), currency, "escrow", limited, "{}"),
        AccountInput(f"seller:{seller_id}:payable:{currency}", currency, "seller", limited, "{}"),
        AccountInput(f"platform:revenue:{currency}", currency, "platform", AccountFlag(0), "{}"),
        AccountInput(f"platform:penalties:{currency}", currency, "platform", AccountFlag(0), "{}"),
        AccountInput(f"platform:refunds:{currency}", currency, "platform", AccountFlag(0), "{}"),
        AccountInput(
            f"platform:chargebacks:{currency}", currency, "platform", AccountFlag(0), "{}"
        ),
    ]


async def _ensure_accounts(uow: UnitOfWork, wanted: list[AccountInput]) -> None:
    """Create the accounts a plain read does not find; existing shared ones are never locked."""
    existing = await ledger.get_accounts(uow, [account.id for account in wanted])
    missing = [account for account in wanted if account.id not in existing]
    if missing:
        results = await ledger.create_missing(uow, missing)
        bad = [r for r in results if r.result not in _LEDGER_OK]
        if bad:
            raise LedgerInvariantError(f"escrow accounts: {bad}")


async def open_order(uow: UnitOfWork, ctx: Context, terms: OrderTerms) -> str:
    """Open the order for a lot that closed with a winner; returns its ``ord_…`` id.

    Runs inside the caller's transaction (the lot close): the order, its ledger accounts, its
    audit event and its ``order.created`` webhook commit with the close or not at all.
    """
    order = await _open(uow, ctx, terms, generation=0, parent=None)
    return order.id


# Deposit intents a pay may still take into escrow (the sweeper resumes only these).
_LIVE_DEPOSIT: Final = frozenset(
    s.value
    for s in (IntentStatus.REQUIRES_CAPTURE, IntentStatus.PROCESSING, IntentStatus.SUCCEEDED)
)
_RENEW_CUTOFF_US = 3_600 * 1_000_000  # no deposit swap in the last hour before pay_by


def _held(intent: PaymentIntent) -> int:
    """What a captured intent still holds: received less refunded."""
    return intent.amount_received - intent.amount_refunded


async def renew_deposit(uow: UnitOfWork, ctx: Context, old_intent: str, new_intent: str) -> bool:
    """Point the order whose deposit is authorization ``old_intent`` at its renewal
    ``new_intent``, inside the caller's transaction (the auctions service swapping the winner's
    deposit before the authorization lapses). Only while the order awaits payment, more than an
    hour before its deadline, nothing of the deposit is in escrow, no pay was asked for (a pay
    captures the authorization it read), and no chargeback was booked on ``old_intent`` (its
    refund plan is keyed by that intent); False otherwise, and nothing changed: the caller
    voids the renewal.
    """
    order_id = await storage.order_of_intent(uow, old_intent)
    if order_id is None:
        return False
    order = await _locked(uow, order_id)
    if not await _takes_renewal(uow, order, old_intent):
        return False
    details = {"payment_intent": new_intent, "renews": old_intent}
    await _save_recorded(
        uow, ctx, order, replace(order, deposit_intent_id=new_intent),
        event="deposit_renewed", details=details,
    )  # fmt: skip
    return True


async def deposit_renewable(uow: UnitOfWork, old_intent: str) -> bool:
    """Whether :func:`renew_deposit` would take a renewal of ``old_intent`` now (read without
    the order's lock: the auctions service asks before it authorizes a renewal on the card, so
    a refused one costs the bidder no new hold; the swap checks again under the lock)."""
    order_id = await storage.order_of_intent(uow, old_intent)
    order = None if order_id is None else await storage.get_order(uow, order_id)
    return order is not None and await _takes_renewal(uow, order, old_intent)


async def _takes_renewal(uow: UnitOfWork, order: Order, old_intent: str) -> bool:
    return not (
        order.deposit_intent_id != old_intent
        or order.status is not OrderStatus.AWAITING_PAYMENT
        or order.deposit_in_escrow
        or old_intent in order.chargebacks
        # From the payment deadline on, a default may be capturing the deposit it read: a swap
        # committing then could let it capture one authorization and another default the
        # other. Refused an hour ahead (renewals run a day before a lapse), so a swap checked
        # just before the deadline cannot commit after it, nor on a clock slightly behind.
        or uow.clock.now_us() >= order.pay_by_us - _RENEW_CUTOFF_US
        # Once a pay was asked for, it captures the deposit it read under this lock: a swap
        # now could leave two pays capturing two authorizations. Paying takes the deposit at
        # once, so one that is asked for no longer needs renewing.
        or await storage.events_named(uow, order.id, _LABELS[Event.PAY])
    )


async def _open(
    uow: UnitOfWork, ctx: Context, terms: OrderTerms, *, generation: int, parent: str | None
) -> Order:
    fees = fees_for(terms)
    now = uow.clock.now_us()
    order_id = _fresh_order_id(now)
    # A chargeback on the winner's deposit before the close is carried to the order, as one
    # booked on it later would be. The deposit intent's row is locked (before any ledger
    # account, as the booking does): a booking under way is counted here or finds this order.
    carried = 0
    if terms.deposit_intent_id is not None:
        carried = await charged_back(uow, terms.deposit_intent_id)
    await _ensure_accounts(uow, _order_accounts(order_id, terms.seller_id, terms.currency))
    order = Order(
        id=order_id,
        lot_id=terms.lot_id,
        generation=generation,
        seller_id=terms.seller_id,
        buyer_id=terms.buyer_id,
        currency=terms.currency,
        hammer_price=fees.hammer,
        buyer_premium_bps=terms.buyer_premium_bps,
        seller_commission_bps=terms.seller_commission_bps,
        premium=fees.premium,
        commission=fees.commission,
        status=OrderStatus.AWAITING_PAYMENT,
        payment_window_s=terms.payment_window_s,
        inspection_period_s=terms.inspection_period_s,
        pay_by_us=now + terms.payment_window_s * 1_000_000,
        deposit_intent_id=terms.deposit_intent_id,
        deposit_in_escrow=0,
        payment_intent_id=None,
        gateway=None,
        carrier=None,
        tracking_number=None,
        shipped_us=None,
        delivered_us=None,
        inspection_ends_us=None,
        dispute_reason=None,
        refunded_amount=0,
        refund_plan={},
        refund_ids={},
        refunds_outstanding=0,
        released_to_seller=0,
        released_to_revenue=0,
        payout_status=PayoutStatus.NONE,
        payout_key=None,
        payout_id=None,
        paid_us=None,
        paid_out=0,
        payout_amount=0,
        chargebacks={terms.deposit_intent_id: carried}
        if terms.deposit_intent_id and carried
        else {},
        chargeback_covered=0,
        runner_up_bidder_id=terms.runner_up_bidder_id,
        runner_up_amount=terms.runner_up_amount,
        offer_status=OfferStatus.NONE,
        offer_expires_us=None,
        offer_order_id=None,
        parent_order_id=parent,
        created_us=now,
        updated_us=now,
        version=0,
    )
    created = {"total": fees.total, "premium": fees.premium, "commission": fees.commission}
    if uow.is_postgres:
        along = _record_along(uow, ctx, order, "created", created)
        await storage.insert_order_with(uow, order, along=along)
    else:
        await storage.insert_order(uow, order)
        await _record(uow, ctx, order, "created", created)
    if carried:
        details = {
            "event": Event.CHARGEBACK.value,
            "payment_intent": terms.deposit_intent_id,
            "amount": carried,
            "carried": True,  # booked on the deposit before the lot closed
            "frozen": False,
        }
        await _record(uow, ctx, order, "chargeback", details)
    return order


def _fresh_order_id(now_us: int) -> str:
    """A new ``ord_…`` id that the API's card-number guard will not refuse in a URL: about 3 in
    10,000 random ids hold a Luhn-valid, brand-prefixed digit run (say ``…a4000123456789012``)."""
    for _ in range(_ID_ATTEMPTS):
        order_id = new_order_id(now_us, secrets.token_hex(6))
        if not contains_pan(order_id):
            return order_id
    raise LedgerInvariantError("no card-number-free order id in 16 attempts")


def _record_along(
    uow: UnitOfWork, ctx: Context, order: Order, event: str, details: dict[str, Any]
) -> Along:
    """What :func:`_record` writes, as statements to ride along the write of the order's row
    (PostgreSQL: one round trip for the row, the timeline entry, the audit event and the
    webhook instead of four)."""
    now = uow.clock.now_us()
    return [
        storage.append_event_insert(
            order.id,
            at_us=now,
            event=event,
            status=order.status,
            actor=ctx.actor.principal_id,
            details=details,
        ),
        audit.outbox_insert(
            ctx.event(
                f"escrow.order.{event}",
                resource_type="order",
                resource_id=order.id,
                ts_us=now,
                details={"status": order.status.value, "lot_id": order.lot_id, **details},
            )
        ),
        webhooks.event_insert(f"order.{event}", order_json(order), ts_us=now),
    ]


async def _save_recorded(
    uow: UnitOfWork,
    ctx: Context,
    before: Order,
    after: Order,
    *,
    event: str,
    details: dict[str, Any],
) -> Order:
    """:func:`_save`, then :func:`_record` of the saved order: on PostgreSQL in one statement.
    The caller holds the order's row lock (``_locked``), as every appender of its timeline."""
    if not uow.is_postgres:
        saved = await _save(uow, before, after)
        await _record(uow, ctx, saved, event, details)
        return saved
    saved = replace(after, version=before.version + 1, updated_us=uow.clock.now_us())
    along = _record_along(uow, ctx, saved, event, details)
    if not await storage.save_order_with(uow, saved, expected_version=before.version, along=along):
        raise LedgerInvariantError(f"order {before.id} changed under its row lock")
    return saved


async def _record(
    uow: UnitOfWork, ctx: Context, order: Order, event: str, details: dict[str, Any]
) -> None:
    """Timeline entry, audit event and ``order.<event>`` webhook, in the caller's transaction."""
    now = uow.clock.now_us()
    await storage.append_event(
        uow,
        order.id,
        at_us=now,
        event=event,
        status=order.status,
        actor=ctx.actor.principal_id,
        details=details,
    )
    await audit.record(
        uow,
        ctx.event(
            f"escrow.order.{event}",
            resource_type="order",
            resource_id=order.id,
            ts_us=now,
            details={"status": order.status.value, "lot_id": order.lot_id, **details},
        ),
    )
    await webhooks.enqueue(uow, f"order.{event}", order_json(order), ts_us=now)


# -- ownership ---------------------------------------------------------------------------------


def _visible(ctx: Context, order: Order) -> bool:
    role, principal = ctx.actor.role, ctx.actor.principal_id
    if role in _BUYER_ROLES:
        return principal == order.buyer_id
    if role in _SELLER_ROLES:
        return principal == order.seller_id
    return True


def _reader(ctx: Context, order: Order) -> Reader | None:
    """How ``ctx`` may read ``order``; None: not at all (404). Beyond the order's parties, the
    runner-up of a defaulted order reads the offer made to it (open, accepted or expired)."""
    if _visible(ctx, order):
        if ctx.actor.role in _BUYER_ROLES:
            return Reader.BUYER
        return Reader.SELLER if ctx.actor.role in _SELLER_ROLES else Reader.STAFF
    principal = ctx.actor.principal_id
    offered = order.offer_status is not OfferStatus.NONE
    if ctx.actor.role in _BUYER_ROLES and principal is not None and offered:
        return Reader.RUNNER_UP if principal == order.runner_up_bidder_id else None
    return None


def _acting_as(ctx: Context, order: Order, side: str) -> None:
    """Bidders act only as the order's buyer, sellers only as its seller: else 404."""
    role, principal = ctx.actor.role, ctx.actor.principal_id
    if role not in _LIMITED:
        return
    owner = order.buyer_id if side == "buyer" else order.seller_id
    if principal != owner:
        raise OrderNotFound(f"no order {order.id!r}")


# The auctions domain's hook: its lot becomes ``settled`` in the transaction that releases or
# refunds the order (``auctions.service.mark_settled``; wired by the composition root).
LotSettled = Callable[[UnitOfWork, Context, str], Awaitable[object]]
# Payments this domain asks for are identified by their own keys (order id + purpose), not by
# the API key of whoever triggered them: a buyer's second key, the operator and the sweeper
# resuming after a crash all find the one intent or refund instead of making another.
_SCOPE: Final = "domain:escrow"
_SETTLES_THE_LOT: Final = frozenset({OrderStatus.RELEASED, OrderStatus.REFUNDED})


def _settles_the_lot(order: Order) -> bool:
    """Whether the lot's money story ends with this order: released or refunded, or defaulted
    with no second-chance offer (the penalty kept, nobody else to buy it). A defaulted order
    whose offer is open settles the lot when the offer expires, or through the new order."""
    if order.status is OrderStatus.DEFAULTED:
        return order.offer_status is OfferStatus.NONE
    return order.status in _SETTLES_THE_LOT


_REFUND_REASONS: Final = {
    RefundKind.RESOLUTION: RefundReason.DISPUTE,
    RefundKind.CANCELLATION: RefundReason.REQUESTED_BY_CUSTOMER,
    RefundKind.AFTER_RELEASE: RefundReason.REQUESTED_BY_CUSTOMER,
}
_DEAD_REFUND: Final = frozenset({RefundStatus.CANCELED, RefundStatus.FAILED})


_ESCROW_REFUNDS: Final = frozenset({RefundKind.RESOLUTION, RefundKind.CANCELLATION})


class _Duplicate(Exception):
    """The refund request was recorded meanwhile (a concurrent retry): resume it."""


class _RestStarted(Exception):
    """A default found the rest's intent made after it looked: look again (it may pay)."""


def _request_tag(ctx: Context, request_key: str | None) -> str:
    """A short, stable tag of (API key, Idempotency-Key): the refund request's identity."""
    if request_key is None:
        return secrets.token_hex(6)
    seed = f"{ctx.actor.key_id}|{request_key}".encode()
    return hashlib.sha256(seed).hexdigest()[:12]


class Escrow:
    """The escrow service. One per process; holds no state but its collaborators."""

    def __init__(
        self,
        db: Database,
        payments: Payments,
        gateways: Mapping[str, Gateway],
        *,
        config: EscrowConfig | None = None,
        card_on_file: CardOnFile | None = None,
        on_settled: LotSettled | None = None,
        payout_destination: PayoutDestination | None = None,
    ) -> None:
        self.db = db
        self.payments = payments
        self.gateways = gateways
        self.config = config or EscrowConfig()
        self.card_on_file = card_on_file
        self.on_settled = on_settled
        # None: no parties to ask (tests of the bare flow): the seller's id is the destination
        self.payout_destination = payout_destination
        self._ambiguous: dict[str, float] = {}  # payout key → when last reported (monotonic)
        self._looked_up: dict[str, float] = {}  # payout key → when last asked of the gateway
        self._cursors = Cursors()  # where each sweeper queue stopped (round-robin)

    # -- reads -------------------------------------------------------------------------------

    async def orders_of_lot(self, ctx: Context, lot_id: str) -> list[dict[str, Any]]:
        """The orders a lot led to (the winner's, then any second-chance one), those ``ctx``
        may see: ``{"id", "buyer_id", "status", "generation"}`` each."""
        async with self.db.read() as uow:
            rows = await uow.conn.execute(
                sa.select(storage.escrow_orders.c.id)
                .where(storage.escrow_orders.c.lot_id == lot_id)
                .order_by(storage.escrow_orders.c.generation)
                .limit(16)
            )
            orders = [await storage.get_order(uow, r[0]) for r in rows]
        return [
            {
                "id": o.id,
                "buyer_id": o.buyer_id,
                "status": o.status.value,
                "generation": o.generation,
            }
            for o in orders
            if o is not None and _reader(ctx, o) is not None
        ]

    async def get(
        self,
        ctx: Context,
        order_id: str,
        *,
        order: Order | None = None,
        intent: PaymentIntent | None = None,
    ) -> OrderView:
        """The order as ``ctx`` may read it. ``order`` / ``intent``: the order and its payment
        intent as a transaction of the caller's just committed them (an action's answer), not
        read again; the escrow balance and the timeline are read."""
        async with self.db.read() as uow:
            if order is None or order.id != order_id:
                order = await storage.get_order(uow, order_id)
            reader = None if order is None else _reader(ctx, order)
            if order is None or reader is None:
                raise OrderNotFound(f"no order {order_id!r}")
            if reader is Reader.RUNNER_UP:  # the offer only: nothing of the buyer's payment
                return OrderView(order, 0, [], None, reader)
            balance = await _balance(uow, order.escrow_account)
            timeline = await storage.timeline(uow, order.id, limit=_TIMELINE_MAX)
            paid_by = order.payment_intent_id
            if paid_by is not None and (intent is None or intent.id != paid_by):
                intent = await self.payments.read(uow, paid_by)
        return OrderView(order, balance, timeline, intent if paid_by is not None else None, reader)

    # -- the transition skeleton -------------------------------------------------------------

    async def _step(
        self,
        ctx: Context,
        order_id: str,
        event: Event,
        change: Callable[[UnitOfWork, Order], Awaitable[tuple[Order, dict[str, Any]]]],
        *,
        side: str | None = None,
        label: str | None = None,
        after: Callable[[UnitOfWork, Order], Awaitable[object]] | None = None,
    ) -> Order:
        """Lock the order, check ``event`` against the transition table, apply ``change`` (which
        may post ledger transfers in the same transaction), save, record; then ``after`` (reads
        in the same transaction, the order still locked)."""
        async with self.db.transaction() as uow:
            order = await storage.get_order(uow, order_id, for_update=True)
            if order is None or not _visible(ctx, order):
                raise OrderNotFound(f"no order {order_id!r}")
            if side is not None:
                _acting_as(ctx, order, side)
            target = next_status(order.status, event)
            if target is None:
                raise InvalidTransition(
                    f"order {order.id} is {order.status.value}; {event.value} is not allowed",
                    order_status=order.status.value,
                )
            changed, details = await change(uow, replace(order, status=target))
            name = label or _LABELS.get(event, event.value)
            saved = await _save_recorded(
                uow, ctx, order, changed, event=name, details={"event": event.value, **details}
            )
            settles = _settles_the_lot(saved) and order.status is not saved.status
            if self.on_settled is not None and settles:
                await self.on_settled(uow, ctx, saved.lot_id)  # lot closed → settled, same txn
            if after is not None:
                await after(uow, saved)
            return saved

    # -- payment -----------------------------------------------------------------------------

    async def pay(
        self, ctx: Context, order_id: str, *, payment_method: str | None
    ) -> tuple[Order, PaymentIntent | None]:
        """Capture the deposit into escrow, then charge the rest on the buyer's card.

        Returns the order and its payment intent, which may rest in ``requires_action`` or
        ``requires_review``: the order turns ``paid`` once escrow holds the whole total (here,
        or later in :meth:`sweep` when the intent finishes).
        """

        async def start(uow: UnitOfWork, order: Order) -> tuple[Order, dict[str, Any]]:
            if uow.clock.now_us() >= order.pay_by_us:
                raise InvalidTransition(
                    f"order {order.id}: the payment window closed", order_status=order.status.value
                )
            return order, {"payment_method_given": payment_method is not None}

        order = await self._step(ctx, order_id, Event.PAY, start, side="buyer")
        order = await self._take_deposit(ctx, order)
        intent = await self._charge_rest(ctx, order, payment_method)
        return await self._sync_paid(ctx, order.id), intent

    async def _take_deposit(self, ctx: Context, order: Order) -> Order:
        if order.deposit_intent_id is None or order.deposit_in_escrow > 0:
            return order
        deposit, _ = await self.payments.get(order.deposit_intent_id)
        if deposit.status is IntentStatus.REQUIRES_CAPTURE:
            try:
                deposit = await self.payments.capture(
                    ctx, deposit.id, amount_to_capture=min(deposit.amount_capturable, order.total)
                )
            except IntentNotCapturable:
                # Captured (or voided) since we read it — a second pay, or the sweeper
                # resuming this one: go on from what it is now.
                deposit, _ = await self.payments.get(deposit.id)
        elif deposit.status is IntentStatus.PROCESSING:
            deposit = await self.payments.drive(ctx, deposit.id)
        held = _held(deposit)
        if deposit.status is not IntentStatus.SUCCEEDED or held <= 0:
            return order  # voided or lapsed: the rest intent charges the whole total
        if held > order.total:
            # A pay captures at most the total: more was captured by a default seizing the
            # whole deposit at the deadline. That money is the default's penalty, not a
            # payment: moving the total of it into escrow would mark the order paid and strand
            # the rest in deposit:{buyer}:{lot}.
            log.warning("escrow.deposit_seized_by_default", order=order.id, intent=deposit.id)
            return order
        amount = held

        async with self.db.transaction() as uow:
            current = await _locked(uow, order.id)
            if current.status is not OrderStatus.AWAITING_PAYMENT or current.deposit_in_escrow:
                return current
            results = await ledger.post(
                uow,
                [
                    _transfer(
                        current, "deposit", current.deposit_account, current.escrow_account, amount
                    )
                ],
            )
            _ensure_ledger(results, f"deposit of {current.id}")
            # The intent captured here is the deposit, even if a renewal swapped the order to
            # another one meanwhile (the renewal then voids its own: renew_deposit).
            return await _save_recorded(
                uow,
                ctx,
                current,
                replace(current, deposit_in_escrow=amount, deposit_intent_id=deposit.id),
                event="deposit_captured",
                details={"amount": amount},
            )

    async def _charge_rest(
        self, ctx: Context, order: Order, payment_method: str | None
    ) -> PaymentIntent | None:
        if order.status is not OrderStatus.AWAITING_PAYMENT:
            return None
        if order.payment_intent_id is not None:
            # After a decline, a new card: the one given, else the card on file now.
            method = payment_method or await self._card_on_file(order.buyer_id)
            return await self._resume_intent(ctx, order.payment_intent_id, method)
        if order.deposit_intent_id is not None and order.deposit_in_escrow == 0:
            deposit, _ = await self.payments.get(order.deposit_intent_id)
            if deposit.status in {IntentStatus.PROCESSING, IntentStatus.REQUIRES_CAPTURE}:
                return None  # the deposit's fate decides the rest: try again shortly
            if deposit.status is IntentStatus.SUCCEEDED:
                # Captured since we looked: move it into escrow first, or the rest below would
                # charge the whole total on top of it.
                order = await self._take_deposit(ctx, order)
                if order.status is not OrderStatus.AWAITING_PAYMENT:
                    return None
                if not order.deposit_in_escrow:
                    latest, _ = await self.payments.get(deposit.id)
                    if _held(latest) > order.total:
                        return None  # seized whole by a default (_take_deposit): no rest
        rest = order.total - order.deposit_in_escrow
        if rest <= 0:
            return None
        method = payment_method or await self._card_on_file(order.buyer_id)
        if method is None:
            raise PaymentMethodRequired(
                "no card on file for this bidder: pass a payment_method (a tok_… from the vault)"
            )
        created = await self.payments.create(
            ctx,
            NewIntent(
                amount=rest,
                currency=order.currency,
                payment_method=method,
                capture_method=CaptureMethod.AUTOMATIC,
                confirm=False,
                customer=order.buyer_id,
                description=f"order {order.id} (lot {order.lot_id})",
                metadata={"order": order.id, "lot": order.lot_id},
                destination_account=order.escrow_account,
            ),
            idempotency_key=f"{order.id}.pay",
            scope=_SCOPE,  # the same order's payment, whichever key or process asks
        )
        async with self.db.transaction() as uow:
            current = await _locked(uow, order.id)
            stale = current.status is not OrderStatus.AWAITING_PAYMENT
            if stale and current.payment_intent_id is None:
                abandoned = True  # defaulted meanwhile (the sweeper): never confirm it
            elif current.payment_intent_id is None:
                abandoned = False
                await _save_recorded(
                    uow,
                    ctx,
                    current,
                    replace(current, payment_intent_id=created.id, gateway=created.gateway),
                    event="payment_started",
                    details={"payment_intent": created.id, "amount": rest},
                )
            elif current.payment_intent_id != created.id:
                raise LedgerInvariantError(f"order {order.id} has two payment intents")
            else:
                abandoned = False
        if abandoned:
            # Not confirmed, so nothing is held at the gateway: cancel it and let the caller
            # look at the order again.
            await self.payments.cancel(ctx, created.id, reason="abandoned")
            return None
        return await self._resume_intent(ctx, created.id, payment_method)

    async def _resume_intent(
        self, ctx: Context, intent_id: str, payment_method: str | None
    ) -> PaymentIntent:
        intent, _ = await self.payments.get(intent_id)
        match intent.status:
            case IntentStatus.REQUIRES_CONFIRMATION | IntentStatus.REQUIRES_PAYMENT_METHOD:
                return await self.payments.confirm(ctx, intent_id, payment_method=payment_method)
            case IntentStatus.PROCESSING:
                return await self.payments.drive(ctx, intent_id)
            case IntentStatus.REQUIRES_ACTION:
                return await self.payments.refresh(ctx, intent_id)
            case _:
                return intent

    async def _card_on_file(self, bidder_id: str) -> str | None:
        if self.card_on_file is None:
            return None
        async with self.db.read() as uow:
            return await self.card_on_file(uow, bidder_id)

    async def _sync_paid(self, ctx: Context, order_id: str) -> Order:
        """``awaiting_payment → paid`` once the escrow account holds the whole total."""
        async with self.db.transaction() as uow:
            order = await _locked(uow, order_id)
            if order.status is not OrderStatus.AWAITING_PAYMENT:
                return order
            balance = await _balance(uow, order.escrow_account)
            if balance < order.total:
                return order
            if balance > order.total:
                raise LedgerInvariantError(f"escrow of {order.id} holds {balance} > total")
            paid = replace(order, status=OrderStatus.PAID, paid_us=uow.clock.now_us())
            if order.chargeback_uncovered:
                # A chargeback came before the rest was paid: the money is in escrow now, so
                # release is frozen as for a chargeback on a paid order (an operator resolves).
                paid = replace(paid, status=OrderStatus.DISPUTED, dispute_reason="chargeback")
            return await _save_recorded(
                uow,
                ctx,
                order,
                paid,
                event=Event.PAID.value,
                details={"escrow_balance": balance, "frozen": paid.status is OrderStatus.DISPUTED},
            )

    # -- shipping and delivery ---------------------------------------------------------------

    async def ship(self, ctx: Context, order_id: str, *, carrier: str, tracking: str) -> Order:
        if not valid_tracking_number(carrier, tracking):
            raise InvalidTrackingNumber(f"{tracking!r} is not a {carrier} tracking number")

        async def change(uow: UnitOfWork, order: Order) -> tuple[Order, dict[str, Any]]:
            shipped = replace(
                order, carrier=carrier, tracking_number=tracking, shipped_us=uow.clock.now_us()
            )
            return shipped, {"carrier": carrier, "tracking_number": tracking}

        return await self._step(ctx, order_id, Event.SHIP, change, side="seller")

    async def confirm_delivery(self, ctx: Context, order_id: str) -> Order:
        return await self._step(ctx, order_id, Event.CONFIRM_DELIVERY, _delivered, side="buyer")

    async def accept(self, ctx: Context, order_id: str) -> Order:
        ready: list[tuple[str, bool]] = []

        async def payout_ready(uow: UnitOfWork, released: Order) -> None:
            # What `_payout_status` would find in a transaction of its own right after this one
            # when it has nothing to change: the payout pending, the seller with a destination;
            # found here, under this transaction's lock of the order, instead.
            if released.payout_status is PayoutStatus.PENDING and released.payout_key:
                destination = await self._destination_in(uow, released.seller_id)
                if destination is not None:
                    recorded = {e.get("key") for e in await _ambiguous_events(uow, released.id)}
                    ready.append((destination, released.payout_key in recorded))

        order = await self._step(
            ctx, order_id, Event.ACCEPT, _release_all, side="buyer", after=payout_ready
        )
        return await self._payout(ctx, order.id, order=order, ready=ready[0] if ready else None)

    async def dispute(self, ctx: Context, order_id: str, *, reason: str) -> Order:
        async def change(uow: UnitOfWork, order: Order) -> tuple[Order, dict[str, Any]]:
            if order.inspection_ends_us is None or uow.clock.now_us() >= order.inspection_ends_us:
                raise InvalidTransition(
                    f"order {order.id}: the inspection period is over", order_status="delivered"
                )
            return replace(order, dispute_reason=reason), {"reason": reason}

        return await self._step(ctx, order_id, Event.DISPUTE, change, side="buyer")

    async def resolve(
        self, ctx: Context, order_id: str, *, refund_amount: int, note: str | None = None
    ) -> Order:
        """An operator ends a dispute: refund ``refund_amount`` (the whole total: ``refunded``)
        and release the rest (``released``; premium and commission shrink pro rata)."""
        found = await self._load(order_id)
        if refund_amount > found.total:
            raise RefundTooLarge(
                f"refund {refund_amount} is more than the {found.total} paid", total=found.total
            )
        if found.status in {OrderStatus.RELEASED, OrderStatus.REFUNDED}:
            return await self._reresolve(ctx, found, refund_amount, note)
        event = Event.RESOLVE_REFUND if refund_amount == found.total else Event.RESOLVE_RELEASE

        async def change(uow: UnitOfWork, order: Order) -> tuple[Order, dict[str, Any]]:
            settled, details = await _settle(uow, order, refund_amount)
            return settled, {**details, "note": note}

        order = await self._step(ctx, order_id, event, change)
        order = await self.drive_refunds(ctx, order.id)
        return await self._payout(ctx, order.id)

    async def _dead_refunds(self, order: Order, kinds: frozenset[RefundKind]) -> dict[str, int]:
        """Refunds of ``kinds`` that will never happen (risk review rejected them, or the gateway
        refused): their money never left its source account. Key → amount."""
        dead: dict[str, int] = {}
        for key, refund_id in sorted(order.refund_ids.items()):
            if refund_kind(key) not in kinds:
                continue
            refund = await self.payments.get_refund(refund_id)
            if refund.status in _DEAD_REFUND:
                dead[key] = order.refund_plan[key]
        return dead

    async def _reresolve(
        self, ctx: Context, found: Order, refund_amount: int, note: str | None
    ) -> Order:
        """Resolve again a resolution (or cancellation) whose refund risk review rejected or the
        gateway refused: ``refund_amount`` is the resolution's refund anew, between what its
        live refunds already give back and what it first asked for; the difference from the
        first is released to the seller and the house (fees shrink pro rata as ever). A full
        refund (``refunded``) is only retried in full: a terminal state is never left."""
        dead = await self._dead_refunds(found, _ESCROW_REFUNDS)
        if not dead:
            raise InvalidTransition(
                f"order {found.id} is {found.status.value}; nothing to resolve again (no refund "
                "of its resolution was rejected)",
                order_status=found.status.value,
            )
        first = found.total - found.released_to_seller - found.released_to_revenue
        # a chargeback since the resolution already gave the buyer that much back
        live = first - sum(dead.values()) + found.chargeback_uncovered
        if not live <= refund_amount <= first:
            raise RefundOutOfRange(
                f"refund_amount must be between {live} (refunds under way and chargebacks) "
                f"and {first}",
                minimum=live,
                maximum=first,
            )
        if found.status is OrderStatus.REFUNDED and refund_amount != found.total:
            raise InvalidTransition(
                f"order {found.id} is refunded: only the whole refund can be retried",
                order_status=found.status.value,
            )

        async def change(uow: UnitOfWork, order: Order) -> tuple[Order, dict[str, Any]]:
            if any(order.refund_ids.get(k) != found.refund_ids[k] for k in dead):
                raise InvalidTransition(
                    f"order {order.id} was resolved again meanwhile",
                    order_status=order.status.value,
                )
            changed, details = await _rerouted(uow, order, dead, first, refund_amount)
            return changed, {**details, "note": note}

        order = await self._step(ctx, found.id, Event.RERESOLVE, change)
        order = await self.drive_refunds(ctx, order.id)
        return await self._payout(ctx, order.id)

    async def refund_after_release(
        self,
        ctx: Context,
        order_id: str,
        *,
        amount: int,
        reason: str,
        request_key: str | None = None,
    ) -> Order:
        """An operator refunds part or all of a released order to the buyer's card, from
        ``platform:refunds:{CUR}`` (escrow is already empty; the seller is not charged back:
        an operator's call, docs/escrow.md). ``request_key`` (the HTTP Idempotency-Key) makes a
        retry the same refund."""
        if type(amount) is not int or amount <= 0:
            raise RefundOutOfRange("a refund after release is a positive amount", minimum=1)
        found = await self._load(order_id)
        tag = _request_tag(ctx, request_key)
        if any(k.endswith(f":a{tag}") for k in found.refund_plan):
            return await self.drive_refunds(ctx, found.id)  # a retry: resume, never twice
        dead = await self._dead_refunds(found, frozenset({RefundKind.AFTER_RELEASE}))

        async def change(uow: UnitOfWork, order: Order) -> tuple[Order, dict[str, Any]]:
            del uow
            gone = {k: v for k, v in dead.items() if k in order.refund_plan}
            if any(k.endswith(f":a{tag}") for k in order.refund_plan):
                raise _Duplicate
            refunded = order.refunded_amount - sum(gone.values())
            # a chargeback after release already gave the buyer that much back
            refundable = order.total - refunded - order.chargeback_uncovered
            if amount > refundable:
                raise RefundTooLarge(
                    f"refund {amount} is more than the {refundable} left to refund",
                    total=order.total,
                    refundable=refundable,
                )
            live = _live_by_intent(order, gone)
            plan = _refund_plan(order, amount, f":a{tag}", refunded=live)
            kept = {k: v for k, v in order.refund_plan.items() if k not in gone}
            ids = {k: v for k, v in order.refund_ids.items() if k not in gone}
            changed = replace(
                order,
                refunded_amount=refunded + amount,
                refund_plan={**kept, **plan},
                refund_ids=ids,
                refunds_outstanding=len(kept) + len(plan) - len(ids),
            )
            return changed, {"amount": amount, "reason": reason, "dropped": sorted(gone)}

        with contextlib.suppress(_Duplicate):  # a concurrent twin recorded it: drive that one
            await self._step(ctx, found.id, Event.REFUND_AFTER_RELEASE, change)
        return await self.drive_refunds(ctx, found.id)

    async def cancel(self, ctx: Context, order_id: str, *, reason: str) -> Order:
        """An operator cancels a paid order that was never shipped: the whole total goes back
        to the buyer from escrow and the order ends ``refunded``."""
        return await self._cancel(ctx, order_id, Event.CANCEL, reason)

    async def _cancel(self, ctx: Context, order_id: str, event: Event, reason: str) -> Order:
        async def change(uow: UnitOfWork, order: Order) -> tuple[Order, dict[str, Any]]:
            settled, details = await _settle(uow, order, order.total, suffix=":c")
            return settled, {**details, "reason": reason}

        order = await self._step(ctx, order_id, event, change)
        return await self.drive_refunds(ctx, order.id)

    # -- refunds and payouts (after commit; resumable) ---------------------------------------

    async def drive_refunds(self, ctx: Context, order_id: str) -> Order:
        """Make the refunds the resolution planned (through payments, to the buyer's card)."""
        order = await self._load(order_id)
        for key, amount in sorted(order.refund_plan.items()):
            if key in order.refund_ids:
                continue
            intent_id = refund_intent(key)
            kind = refund_kind(key)
            after_release = kind is RefundKind.AFTER_RELEASE
            refund = await self.payments.refund(
                ctx,
                NewRefund(
                    payment_intent=intent_id,
                    amount=amount,
                    reason=_REFUND_REASONS[kind],
                    # after release, escrow is empty: the house's contra account pays it
                    source_account=f"platform:refunds:{order.currency}" if after_release else None,
                ),
                idempotency_key=f"{order.id}.refund.{key}",
                scope=_SCOPE,  # the operator's call and the sweeper's resume are one refund
            )
            async with self.db.transaction() as uow:
                current = await _locked(uow, order.id)
                if key in current.refund_ids or key not in current.refund_plan:
                    order = current
                    continue
                ids = {**current.refund_ids, key: refund.id}
                order = await _save_recorded(
                    uow,
                    ctx,
                    current,
                    replace(
                        current,
                        refund_ids=ids,
                        refunds_outstanding=len(current.refund_plan) - len(ids),
                    ),
                    event="refund_started",
                    details={
                        "payment_intent": intent_id,
                        "refund": refund.id,
                        "amount": amount,
                        "kind": kind.value,
                    },
                )
        return order

    async def _payout(
        self,
        ctx: Context,
        order_id: str,
        *,
        order: Order | None = None,
        ready: tuple[str, bool] | None = None,
    ) -> Order:
        """``order``: as the caller's transaction just committed it (not read again); ``ready``:
        that transaction found its payout pending, with (the seller's destination, whether its
        key was answered ambiguously before), as :meth:`_payout_status` would."""
        order = await self._payout_once(ctx, order_id, order, ready)
        if order.payout_status is PayoutStatus.PENDING and order.paid_out > 0:
            order = await self._payout_once(ctx, order_id)  # a re-resolution's next payout
        return order

    async def _payout_once(
        self,
        ctx: Context,
        order_id: str,
        known: Order | None = None,
        ready: tuple[str, bool] | None = None,
    ) -> Order:
        if known is None or known.id != order_id:
            known, ready = await self._load(order_id), None
        order = known
        if order.payout_status not in _PAYABLE or order.payout_key is None:
            return order
        name = order.gateway or self.config.default_gateway
        gateway = self.gateways.get(name)
        if gateway is None:
            log.error("escrow.payout_no_gateway", order=order.id, gateway=name)
            return order
        if ready is not None and order.payout_status is PayoutStatus.PENDING:
            destination: str | None
            destination, ambiguous = ready
        else:
            destination = await self._destination(order.seller_id)
            order, ambiguous = await self._payout_status(ctx, order.id, destination)
        if destination is None or order.payout_status is not PayoutStatus.PENDING:
            return order
        key = order.payout_key or ""
        if ambiguous:
            # Answered ambiguously before: never called again under this key. A gateway that
            # forgets keys (Stripe, after 24 hours) would make a new payout of money that may
            # already be paid. Settled here only if the gateway shows the payout; else an
            # operator settles it (POST /v1/orders/{id}/payout).
            return await self._ambiguous_payout(
                ctx, gateway, order, name=name, key=key, code="recorded"
            )
        try:
            payout_id = await self._call_payout(gateway, order, key, destination)
        except GatewayRejected as exc:
            if exc.code in _AMBIGUOUS_REFUSALS:
                # The gateway knows this key from an earlier call with other parameters (a
                # destination changed after a timed-out attempt that may have paid): not a
                # refusal of the payout, so never `failed` — a failed payout's amount is paid
                # again by the next one. Settled if the gateway shows what that call did; else
                # left pending for an operator, loudly.
                # Recorded before the gateway is asked (a lookup may take long, or never
                # finish): from then on no process calls the key again.
                recorded = await self._record_ambiguous(ctx, order.id, key, exc.code)
                return await self._ambiguous_payout(
                    ctx, gateway, recorded, name=name, key=key, code=exc.code
                )
            failed, _ = await self._payout_outcome(ctx, order.id, name, None, exc.code, key=key)
            return failed
        except GatewayError as exc:
            log.warning("escrow.payout_pending", order=order.id, code=exc.code)
            return order
        paid, _ = await self._payout_outcome(ctx, order.id, name, payout_id, None, key=key)
        return paid

    async def _ambiguous_payout(
        self, ctx: Context, gateway: Gateway, order: Order, *, name: str, key: str, code: str
    ) -> Order:
        """A payout recorded ambiguous: settled if the gateway shows it (asked at most every
        ``_LOOKUP_EVERY_S``: the sweeper passes by every second), else reminded of and left."""
        if self._lookup_due(key):
            found = await self._found_payout(ctx, gateway, order, name, key)
            if found is not None:
                return found
        self._remind_ambiguous(order.id, key, code)
        return order

    async def _found_payout(
        self, ctx: Context, gateway: Gateway, order: Order, name: str, key: str
    ) -> Order | None:
        """The pending payout settled as paid from what the gateway shows under its key (a
        payout of exactly this amount and currency, paid); None when it shows nothing, or
        something else (left to an operator: ``escrow.payout_lookup_mismatch``). Only ever
        settles a payout the gateway made: not finding one proves nothing."""
        try:
            shown = await gateway.find_payout(key)
        except GatewayError as exc:
            log.warning("escrow.payout_lookup_failed", order=order.id, key=key, code=exc.code)
            return None
        if shown is None:
            return None
        if (shown.status, shown.amount, shown.currency) != (
            "paid",
            order.payout_amount,
            order.currency,
        ):
            log.error(
                "escrow.payout_lookup_mismatch",
                order=order.id,
                key=key,
                payout=shown.payout_id,
                status=shown.status,
                amount=shown.amount,
                currency=shown.currency,
            )
            return None
        paid, _ = await self._payout_outcome(
            ctx, order.id, name, shown.payout_id, None, key=key, note={"found_at_gateway": True}
        )
        return paid

    def _lookup_due(self, key: str) -> bool:
        """Whether to ask the gateway about an ambiguous payout's key again: once every
        ``_LOOKUP_EVERY_S`` per key and process (at most 10,000 keys remembered; beyond that,
        not asked until some are stale)."""
        now = time.monotonic()
        last = self._looked_up.get(key)
        if last is not None and now - last < _LOOKUP_EVERY_S:
            return False
        if last is None and len(self._looked_up) >= 10_000:
            stale = [k for k, at in self._looked_up.items() if now - at >= _LOOKUP_EVERY_S]
            for k in stale:
                del self._looked_up[k]
            if len(self._looked_up) >= 10_000:
                return False  # closed, not open: the operator's path stays, the gateway rests
        self._looked_up[key] = now
        return True

    def _remind_ambiguous(self, order_id: str, key: str, code: str) -> None:
        """``escrow.payout_ambiguous`` at error level once an hour per key and process (the
        sweeper passes by every pending payout on each run), at debug level in between."""
        now = time.monotonic()
        last = self._ambiguous.get(key)
        due = last is None or now - last >= _AMBIGUOUS_REPORT_S
        if due and (last is not None or len(self._ambiguous) < 10_000):
            self._ambiguous[key] = now
        report = log.error if due else log.debug
        report("escrow.payout_ambiguous", order=order_id, key=key, code=code)

    async def _record_ambiguous(self, ctx: Context, order_id: str, key: str, code: str) -> Order:
        """The timeline's ``payout_ambiguous`` (once per key): the mark an operator's
        ``mark_paid`` / ``mark_failed`` needs, and what tells them to look at the gateway."""
        async with self.db.transaction() as uow:
            order = await _locked(uow, order_id)
            if order.payout_status is not PayoutStatus.PENDING or order.payout_key != key:
                return order
            if any(e.get("key") == key for e in await _ambiguous_events(uow, order.id)):
                return order
            await _record(uow, ctx, order, "payout_ambiguous", {"key": key, "code": code})
            return order

    async def settle_payout(
        self,
        ctx: Context,
        order_id: str,
        *,
        action: PayoutAction,
        reason: str,
        payout_id: str | None = None,
    ) -> Order:
        """An operator settles a payout the sweeper cannot (docs/escrow.md "Operator payout
        actions"): ``retry`` a ``failed`` one under a new key; ``mark_paid`` (with the
        gateway's ``payout_id``) or ``mark_failed`` a ``pending`` one the operator has looked
        up at the gateway (an ambiguous refusal). Each is recorded with the reason."""
        if action is PayoutAction.RETRY:
            async with self.db.transaction() as uow:
                order = await _locked(uow, order_id)
                unpaid = order.released_to_seller - order.paid_out
                if order.payout_status is not PayoutStatus.FAILED or unpaid <= 0:
                    raise InvalidTransition(
                        f"order {order.id}: retry is for a failed payout with money left to pay "
                        f"(payout {order.payout_status.value}, {unpaid} unpaid)",
                        order_status=order.status.value,
                    )
                after = _next_payout(order, order.version + 1)
                await _save_recorded(
                    uow,
                    ctx,
                    order,
                    after,
                    event="payout_retried",
                    details={
                        "reason": reason,
                        "amount": after.payout_amount,
                        "failed": order.payout_key,
                    },
                )
            return await self._payout(ctx, order_id)
        if (action is PayoutAction.MARK_PAID) != bool(payout_id):
            raise InvalidPayoutAction("payout_id goes with mark_paid, and only with it")
        async with self.db.read() as uow:
            order = await _read(uow, order_id)
            ambiguous = {e.get("key") for e in await _ambiguous_events(uow, order.id)}
        key = order.payout_key
        if order.payout_status is not PayoutStatus.PENDING or key is None or key not in ambiguous:
            # Only a payout the gateway answered ambiguously (it knows the key, with other
            # parameters): one merely pending may be in flight right now, and marking it
            # failed would let a retry pay it twice.
            state = (
                "pending and never answered so: the sweeper retries it"
                if order.payout_status is PayoutStatus.PENDING
                else order.payout_status.value
            )
            raise InvalidTransition(
                f"order {order.id}: {action.value} is for a pending payout the gateway answered "
                f"ambiguously (timeline payout_ambiguous); this one is {state}",
                order_status=order.status.value,
            )
        name = order.gateway or self.config.default_gateway
        gateway = self.gateways.get(name)
        if action is PayoutAction.MARK_FAILED and gateway is not None:
            # Failed means no money reached the seller: the retry that follows pays it all
            # again. So the gateway must show nothing under the key, or a payout wholly
            # reversed — not one paid, partly reversed, or two (duplicate).
            try:
                shown = await gateway.find_payout(key)
            except GatewayError as exc:
                log.warning("escrow.payout_lookup_failed", order=order.id, key=key, code=exc.code)
                raise PayoutLookupFailed(
                    f"order {order.id}: the gateway could not be asked what it shows under "
                    f"{key} ({exc.code}); mark_failed needs its word — try again shortly"
                ) from None
            if shown is not None and shown.status not in {"reversed", "failed"}:
                raise InvalidTransition(
                    f"order {order.id}: the gateway shows payout {shown.payout_id} "
                    f"{shown.status} under {key} ({shown.amount} {shown.currency}); look at it "
                    "there — mark it paid with that id if it paid",
                    order_status=order.status.value,
                )
        done, applied = await self._payout_outcome(
            ctx,
            order.id,
            name,
            payout_id if action is PayoutAction.MARK_PAID else None,
            None if action is PayoutAction.MARK_PAID else _MARKED_FAILED,
            key=key,
            note={"operator_reason": reason},
        )
        if not applied:
            raise InvalidTransition(
                f"order {order.id}: the payout changed meanwhile (payout "
                f"{done.payout_status.value}); look at the order again",
                order_status=done.status.value,
            )
        return done

    async def _destination(self, seller_id: str) -> str | None:
        if self.payout_destination is None:
            return seller_id
        async with self.db.read() as uow:
            return await self.payout_destination(uow, seller_id)

    async def _destination_in(self, uow: UnitOfWork, seller_id: str) -> str | None:
        """:meth:`_destination`, read in the caller's unit of work."""
        if self.payout_destination is None:
            return seller_id
        return await self.payout_destination(uow, seller_id)

    async def _payout_status(
        self, ctx: Context, order_id: str, destination: str | None
    ) -> tuple[Order, bool]:
        """``no_destination`` while the seller has none (recorded once, not an error);
        ``pending`` again, committed before the call, once it has one. Also whether the pending
        payout's key was answered ambiguously before (the timeline's ``payout_ambiguous``)."""
        wanted = PayoutStatus.PENDING if destination else PayoutStatus.NO_DESTINATION
        async with self.db.transaction() as uow:
            order = await _locked(uow, order_id)
            if order.payout_status not in _PAYABLE:
                return order, False
            if order.payout_status is not wanted:
                event = "payout_started" if destination else "payout_no_destination"
                order = await _save_recorded(
                    uow,
                    ctx,
                    order,
                    replace(order, payout_status=wanted),
                    event=event,
                    details={"amount": order.payout_amount},
                )
            if order.payout_status is not PayoutStatus.PENDING:
                return order, False
            recorded = {e.get("key") for e in await _ambiguous_events(uow, order.id)}
            return order, order.payout_key in recorded

    async def _call_payout(self, gateway: Gateway, order: Order, key: str, destination: str) -> str:
        # Always a payout of exactly what the ledger released to the seller. (Braintree's
        # release_from_escrow would pay out the whole sale — premium, commission and any partial
        # refund included — and only for sales held in its escrow, which intents do not ask for.)
        payout = await gateway.payout(
            PayoutRequest(
                payout_key=key,
                amount=order.payout_amount,
                currency=order.currency,
                destination=destination,
            )
        )
        if payout.status != "paid":
            raise GatewayRejected(
                f"payout {payout.payout_id} {payout.status}", code="payout_failed"
            )
        return payout.payout_id

    async def _payout_outcome(
        self,
        ctx: Context,
        order_id: str,
        gateway: str,
        payout_id: str | None,
        failure: str | None,
        *,
        key: str,
        note: dict[str, Any] | None = None,
    ) -> tuple[Order, bool]:
        """The outcome of the gateway call made under payout ``key``, and whether it was
        recorded: only if that is still the pending payout (a concurrent call may have recorded
        it and chained the next payout under a new key, which this call never paid). ``note``:
        more details for the timeline (an operator's reason)."""
        async with self.db.transaction() as uow:
            order = await _locked(uow, order_id)
            if order.payout_status is not PayoutStatus.PENDING or order.payout_key != key:
                if failure is None and await _marked_failed(uow, order.id, key):
                    # The gateway paid a payout an operator marked failed: the money may be paid
                    # again (a retry, a follow-up). Recorded on the order, loudly, for them.
                    log.error("escrow.payout_paid_after_marked_failed", order=order.id, key=key)
                    late = {"key": key, "payout": payout_id, "gateway": gateway}
                    await _record(uow, ctx, order, "payout_paid_after_marked_failed", late)
                return order, False
            if failure is not None:
                after = replace(order, payout_status=PayoutStatus.FAILED)
                more = order.released_to_seller - order.paid_out - order.payout_amount
                if more > 0:
                    # a re-resolution released more while this payout was under way: the next
                    # payout (everything released, not yet paid out) under its own key
                    after = _next_payout(after, order.version + 1)
                details = {
                    "code": failure,
                    "key": key,
                    "amount": order.payout_amount,
                    "follow_up": more > 0,
                }
                failed = await _save_recorded(
                    uow,
                    ctx,
                    order,
                    after,
                    event="payout_failed",
                    details={**details, **(note or {})},
                )
                return failed, True
            gateway_account = AccountInput(
                f"gateway:{gateway}:{order.currency}",
                order.currency,
                "gateway",
                AccountFlag(0),
                "{}",
            )
            transfer = _transfer(
                order,
                _payout_suffix(order),
                order.seller_account,
                f"gateway:{gateway}:{order.currency}",
                order.payout_amount,
            )
            # the gateway's account created first if missing, in the post's own read
            ensure = ledger.Ensure([gateway_account], "escrow accounts", check_existing=False)
            results = await ledger.post(uow, [transfer], ensure=ensure)
            _ensure_ledger(results, f"payout of {order.id}")
            paid_out = order.paid_out + order.payout_amount
            after = replace(
                order, payout_status=PayoutStatus.PAID, payout_id=payout_id, paid_out=paid_out
            )
            if order.released_to_seller > paid_out:
                # a re-resolution released more meanwhile: the next payout, under its own key
                after = _next_payout(after, order.version + 1)
            paid = await _save_recorded(
                uow,
                ctx,
                order,
                after,
                event="payout_paid",
                details={
                    "payout": payout_id,
                    "amount": order.payout_amount,
                    "gateway": gateway,
                    **(note or {}),
                },
            )
            return paid, True

    # -- default and second chance -----------------------------------------------------------

    async def default(self, ctx: Context, order_id: str) -> Order:
        """The payment window passed: keep the deposit as a penalty, offer the runner-up."""
        order = await self._load(order_id)
        if order.status is not OrderStatus.AWAITING_PAYMENT:
            return order
        if self.db.clock.now_us() < order.pay_by_us:
            return order
        if not await self._stop_rest(ctx, order):
            return await self._sync_paid(ctx, order.id)
        deposit = await self._seize_deposit(ctx, order)
        if deposit is None:
            return order  # the deposit's capture is still in flight

        async def change(uow: UnitOfWork, current: Order) -> tuple[Order, dict[str, Any]]:
            if current.payment_intent_id != order.payment_intent_id:
                raise _RestStarted  # a pay made the rest's intent after _stop_rest looked
            if deposit and not current.deposit_in_escrow:
                # The authorization captured is the deposit, even if a renewal swapped the
                # order to another one meanwhile (the renewal then voids its own).
                current = replace(current, deposit_intent_id=order.deposit_intent_id)
            return await _penalise(uow, current, deposit)

        try:
            return await self._step(ctx, order_id, Event.DEFAULT, change)
        except _RestStarted:
            return await self.default(ctx, order_id)  # stop that intent first (set only once)

    async def _stop_rest(self, ctx: Context, order: Order) -> bool:
        """Cancel the rest's intent if it is still open; False when it succeeded (or may)."""
        if order.payment_intent_id is None:
            return True
        intent, _ = await self.payments.get(order.payment_intent_id)
        if intent.status in _OPEN_INTENT:
            intent = await self.payments.cancel(ctx, intent.id, reason="abandoned")
        return intent.status is IntentStatus.CANCELED

    async def _seize_deposit(self, ctx: Context, order: Order) -> int | None:
        """Capture what is left of the deposit authorization; its captured amount (0: none)."""
        if order.deposit_intent_id is None or order.deposit_in_escrow > 0:
            return 0
        deposit, _ = await self.payments.get(order.deposit_intent_id)
        if deposit.status is IntentStatus.REQUIRES_CAPTURE:
            deposit = await self.payments.capture(ctx, deposit.id, amount_to_capture=None)
        if deposit.status is IntentStatus.PROCESSING:
            return None
        if deposit.status is not IntentStatus.SUCCEEDED:
            return 0
        return _held(deposit)

    async def accept_offer(self, ctx: Context, order_id: str) -> Order:
        """The runner-up takes the second-chance offer: a new order at their own highest bid."""
        async with self.db.transaction() as uow:
            order = await _locked(uow, order_id)
            role, principal = ctx.actor.role, ctx.actor.principal_id
            if role in _LIMITED and principal != order.runner_up_bidder_id:
                raise OrderNotFound(f"no order {order_id!r}")
            now = uow.clock.now_us()
            expires = order.offer_expires_us
            if order.offer_status is not OfferStatus.OPEN or expires is None or now >= expires:
                raise OfferNotOpen(f"order {order.id} has no open second-chance offer")
            if order.runner_up_bidder_id is None or order.runner_up_amount is None:
                raise LedgerInvariantError(f"order {order.id}: an offer with no runner-up")
            terms = OrderTerms(
                lot_id=order.lot_id,
                seller_id=order.seller_id,
                buyer_id=order.runner_up_bidder_id,
                currency=order.currency,
                hammer_price=order.runner_up_amount,
                buyer_premium_bps=order.buyer_premium_bps,
                seller_commission_bps=order.seller_commission_bps,
                payment_window_s=order.payment_window_s,
                inspection_period_s=order.inspection_period_s,
            )
            new = await _open(uow, ctx, terms, generation=order.generation + 1, parent=order.id)
            accepted = await _save(
                uow,
                order,
                replace(order, offer_status=OfferStatus.ACCEPTED, offer_order_id=new.id),
            )
            await _record(uow, ctx, accepted, "second_chance_accepted", {"order": new.id})
            return new

    async def _expire_offer(self, ctx: Context, order_id: str) -> int:
        async with self.db.transaction() as uow:
            order = await _locked(uow, order_id)
            expires = order.offer_expires_us
            if order.offer_status is not OfferStatus.OPEN or expires is None:
                return 0
            if uow.clock.now_us() < expires:
                return 0
            expired = await _save(uow, order, replace(order, offer_status=OfferStatus.EXPIRED))
            await _record(uow, ctx, expired, "second_chance_expired", {})
            if self.on_settled is not None:
                await self.on_settled(uow, ctx, expired.lot_id)  # nobody else will buy it here
            return 1

    # -- the sweeper ---------------------------------------------------------------------------

    async def sweep(self, ctx: Context) -> dict[str, int]:
        """One pass over the timers: pays that stopped half-way, payments finished later,
        payment windows, ship windows, auto-delivery, inspection ends, payouts and refunds to
        resume, second-chance offers to expire. Each order's step runs on its own: one that
        raises is logged and counted as ``failed`` and the pass goes on."""
        counts = dict.fromkeys(
            (
                "resumed",
                "paid",
                "defaulted",
                "canceled",
                "delivered",
                "released",
                "payouts",
                "refunds",
                "offers",
            ),
            0,
        )
        now = self.db.clock.now_us()
        grace_us = int(self.config.sweeper_grace_s * 1_000_000)
        batch = self.config.sweep_batch
        unshipped_since = now - self.config.ship_window_s * 1_000_000
        quiet = now - self.config.auto_delivery_s * 1_000_000
        async with self.db.read() as uow:

            async def queue(name: str, conditions: list[sa.ColumnElement[bool]]) -> list[str]:
                # Round-robin (db.queues): orders that stay put (a buyer who left a 3-D Secure
                # challenge, a payout for an operator) never fill every pass's page.
                keys = await storage.ids_where(
                    uow, conditions, limit=batch, after=self._cursors.at(name)
                )
                self._cursors.read(name, keys, batch, now=now)  # sorted by updated_us
                return [order_id for _, order_id in keys]

            interrupted = await queue(
                "interrupted",
                storage.pay_interrupted(now, now - grace_us, _LABELS[Event.PAY], _LIVE_DEPOSIT),
            )
            waiting = await queue("waiting", storage.awaiting_with_intent())
            due = await queue("due", storage.due_for_default(now))
            unshipped = await queue("unshipped", storage.paid_before(unshipped_since))
            shipped = await queue("shipped", storage.shipped_before(quiet))
            inspected = await queue("inspected", storage.inspection_over(now))
            payouts = await queue("payouts", storage.payout_pending(now - grace_us))
            payouts += await queue("no_destination", storage.payout_no_destination())
            refunds = await queue("refunds", storage.refunds_unstarted(now - grace_us))
            offers = await queue("offers", storage.offers_expiring(now))

        async def defaulted(order_id: str) -> int:
            return (await self.default(ctx, order_id)).status is OrderStatus.DEFAULTED

        async def delivered(order_id: str) -> int:
            return await self._timer(ctx, order_id, Event.AUTO_DELIVER)

        async def released(order_id: str) -> int:
            return await self._timer(ctx, order_id, Event.INSPECTION_END)

        async def paid_out(order_id: str) -> int:
            return (await self._payout(ctx, order_id)).payout_status not in _PAYABLE

        async def refunded(order_id: str) -> int:
            return (await self.drive_refunds(ctx, order_id)).refunds_outstanding == 0

        queues: list[tuple[str, list[str], Callable[[str], Awaitable[int]]]] = [
            ("resumed", interrupted, lambda order_id: self._resume_pay(ctx, order_id)),
            ("paid", waiting, lambda order_id: self._poll_payment(ctx, order_id)),
            ("defaulted", due, defaulted),
            ("canceled", unshipped, lambda order_id: self._ship_timeout(ctx, order_id)),
            ("delivered", shipped, delivered),
            ("released", inspected, released),
            ("payouts", payouts, paid_out),
            ("refunds", refunds, refunded),
            ("offers", offers, lambda order_id: self._expire_offer(ctx, order_id)),
        ]
        failed = 0
        for name, order_ids, step in queues:
            for order_id in order_ids:
                # One order's failure (a gateway error, a broken row) is logged and skipped:
                # it must not hold up every order behind it in this pass and every later one.
                try:
                    counts[name] += await step(order_id)
                except Exception:
                    failed += 1
                    log.exception("escrow.sweep_step_failed", step=name, order=order_id)
        counts["failed"] = failed
        return counts

    async def _resume_pay(self, ctx: Context, order_id: str) -> int:
        """Finish the deposit's part of a pay whose request stopped before its rest's intent
        was recorded (the process died, the gateway timed out): capture the authorization into
        escrow, so that it neither lapses unrenewed (escrow refuses renewals once a pay was
        asked for) nor waits for a retry, and mark the order paid if that covers the total.
        The rest is the buyer's to retry: the card they named is not kept. 1 when the order
        moved."""
        order = await self._load(order_id)
        if order.status is not OrderStatus.AWAITING_PAYMENT or order.payment_intent_id is not None:
            return 0
        if self.db.clock.now_us() >= order.pay_by_us:
            return 0  # the default's now: it captures the deposit as the penalty
        taken = await self._take_deposit(ctx, order)
        after = await self._sync_paid(ctx, order.id)
        moved = (
            taken.deposit_in_escrow > order.deposit_in_escrow or after.status is not order.status
        )
        if moved:
            log.info("escrow.pay_resumed", order=order.id, status=after.status.value)
        return int(moved)

    async def _poll_payment(self, ctx: Context, order_id: str) -> int:
        order = await self._load(order_id)
        if order.payment_intent_id is None or order.status is not OrderStatus.AWAITING_PAYMENT:
            return 0
        intent, _ = await self.payments.get(order.payment_intent_id)
        if intent.status is not IntentStatus.SUCCEEDED:
            return 0
        after = await self._sync_paid(ctx, order_id)
        return int(after.status is OrderStatus.PAID)

    async def _ship_timeout(self, ctx: Context, order_id: str) -> int:
        """The ship window passed: cancel and refund; 0 when it shipped meanwhile."""
        try:
            await self._cancel(ctx, order_id, Event.SHIP_TIMEOUT, "ship_window")
        except InvalidTransition:
            return 0
        return 1

    async def _timer(self, ctx: Context, order_id: str, event: Event) -> int:
        """A timer's transition; 0 when the order moved on meanwhile (a buyer's word won)."""
        change = _delivered if event is Event.AUTO_DELIVER else _release_all
        try:
            order = await self._step(ctx, order_id, event, change)
        except InvalidTransition:
            return 0
        if event is Event.INSPECTION_END:
            await self._payout(ctx, order.id)
        return 1

    async def _load(self, order_id: str) -> Order:
        async with self.db.read() as uow:
            order = await storage.get_order(uow, order_id)
        if order is None:
            raise OrderNotFound(f"no order {order_id!r}")
        return order


# -- changes applied inside a transition's transaction ------------------------------------------


async def _delivered(uow: UnitOfWork, order: Order) -> tuple[Order, dict[str, Any]]:
    now = uow.clock.now_us()
    ends = now + order.inspection_period_s * 1_000_000
    return replace(order, delivered_us=now, inspection_ends_us=ends), {"inspection_ends_us": ends}


async def _release_all(uow: UnitOfWork, order: Order) -> tuple[Order, dict[str, Any]]:
    return await _settle(uow, order, 0)


async def _settle(
    uow: UnitOfWork, order: Order, refund: int, *, suffix: str = ""
) -> tuple[Order, dict[str, Any]]:
    """Release what is not refunded (one linked chain) and plan the refunds, in this
    transaction; the seller's payout key is recorded here, before any gateway call."""
    split = settle(order.fees, order.currency, refund)
    cover = order.chargeback_uncovered
    if refund < cover:
        raise RefundOutOfRange(
            f"the buyer's bank already took {cover} back: refund_amount must be at least that",
            minimum=cover,
            maximum=order.total,
        )
    transfers: list[TransferInput] = []
    if cover:
        # The bank took it back from the gateway (platform:chargebacks); escrow pays it back.
        contra = f"platform:chargebacks:{order.currency}"
        transfers.append(_transfer(order, "chargeback.cover", order.escrow_account, contra, cover))
    if split.to_seller:
        transfers.append(
            _transfer(
                order, "release.seller", order.escrow_account, order.seller_account, split.to_seller
            )
        )
    if split.to_revenue:
        revenue = f"platform:revenue:{order.currency}"
        transfers.append(
            _transfer(order, "release.revenue", order.escrow_account, revenue, split.to_revenue)
        )
    plan = _refund_plan(order, refund - cover, suffix, refunded=order.chargebacks)
    deposit_share = plan.get(f"{order.deposit_intent_id}{suffix}", 0)
    if deposit_share:
        # The deposit intent refunds from its own account: route its share back there first.
        transfers.append(
            _transfer(
                order, "refund.route", order.escrow_account, order.deposit_account, deposit_share
            )
        )
    if transfers:
        _ensure_ledger(await ledger.post(uow, _linked(transfers)), f"settlement of {order.id}")
    payout = PayoutStatus.PENDING if split.to_seller else PayoutStatus.NONE
    settled = replace(
        order,
        refunded_amount=refund,
        refund_plan=plan,
        refunds_outstanding=len(plan),
        released_to_seller=split.to_seller,
        released_to_revenue=split.to_revenue,
        payout_status=payout,
        payout_key=f"{order.id}.payout" if split.to_seller else None,
        payout_amount=split.to_seller,
        chargeback_covered=order.chargeback_covered + cover,
    )
    details = {
        "refund": refund,
        "chargeback_covered": cover,
        "to_seller": split.to_seller,
        "to_revenue": split.to_revenue,
        "premium_kept": split.kept.premium,
        "commission_kept": split.kept.commission,
    }
    return settled, details


def _refund_plan(
    order: Order, refund: int, suffix: str, *, refunded: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Which intent refunds how much (keys: the intent + ``suffix``): the rest's intent first,
    then the deposit, each within what it paid less ``refunded`` (live refunds by intent)."""
    done = refunded or {}
    plan: dict[str, int] = {}
    rest_left = order.total - order.deposit_in_escrow
    if order.payment_intent_id is not None:
        rest_left -= done.get(order.payment_intent_id, 0)
    from_rest = min(refund, max(rest_left, 0))
    if from_rest and order.payment_intent_id is not None:
        plan[f"{order.payment_intent_id}{suffix}"] = from_rest
    from_deposit = refund - from_rest
    if from_deposit:
        deposit_left = order.deposit_in_escrow - done.get(order.deposit_intent_id or "", 0)
        if order.deposit_intent_id is None or from_deposit > deposit_left:
            raise LedgerInvariantError(f"order {order.id}: refund beyond its payments")
        plan[f"{order.deposit_intent_id}{suffix}"] = from_deposit
    return plan


def _live_by_intent(order: Order, dead: Mapping[str, int]) -> dict[str, int]:
    """What the order's live refunds (planned, started or made; not ``dead``) and chargebacks
    take per intent."""
    live: dict[str, int] = dict(order.chargebacks)
    for key, amount in order.refund_plan.items():
        if key not in dead:
            intent = refund_intent(key)
            live[intent] = live.get(intent, 0) + amount
    return live


async def chargeback(
    uow: UnitOfWork, ctx: Context, booked: Chargeback, book: ChargebackBooking
) -> None:
    """Payments books a chargeback on ``booked.payment_intent`` (``platform:chargebacks →
    gateway``, by ``book``), in this transaction: if the intent paid an order (or its deposit),
    the order records it, and one whose money is still in escrow turns ``disputed`` (release
    frozen until an operator resolves; the resolution pays the chargeback back from escrow).

    The order's row is locked before the booking locks the ledger accounts: the order every
    escrow transaction takes them in (a payout's completion: the order, then ``seller payable →
    gateway``), so the two never deadlock. A deposit's intent with no order yet is booked
    alone; the order the lot close opens later carries it (:func:`open_order`)."""
    order_id = await storage.order_of_intent(uow, booked.payment_intent)
    if order_id is None:
        await book()
        return
    order = await _locked(uow, order_id)
    if not await book():
        return  # booked before (a redelivery): the order has it already
    target = next_status(order.status, Event.CHARGEBACK)
    if target is None:
        raise LedgerInvariantError(f"order {order.id}: no chargeback from {order.status}")
    taken = order.chargebacks.get(booked.payment_intent, 0) + booked.amount
    changed = replace(
        order, status=target, chargebacks={**order.chargebacks, booked.payment_intent: taken}
    )
    if target is OrderStatus.DISPUTED and order.status is not OrderStatus.DISPUTED:
        changed = replace(changed, dispute_reason="chargeback")
    saved = await _save(uow, order, changed)
    details = {
        "event": Event.CHARGEBACK.value,
        "payment_intent": booked.payment_intent,
        "dispute": booked.dispute_id,
        "amount": booked.amount,
        "frozen": target is OrderStatus.DISPUTED,
    }
    await _record(uow, ctx, saved, "chargeback", details)


async def _rerouted(
    uow: UnitOfWork, order: Order, dead: Mapping[str, int], first: int, refund: int
) -> tuple[Order, dict[str, Any]]:
    """A re-resolution's money, one linked chain: a dead deposit refund's share comes back
    ``deposit → escrow``; what is now released (first - refund) goes ``escrow → seller`` and
    ``escrow → revenue``; the new refunds (refund - live) are planned (``:r<n>`` keys), a
    deposit share routed ``escrow → deposit`` again."""
    n = order.version + 1
    live = first - sum(dead.values())
    # A chargeback since the first resolution: escrow pays it back (as a resolution's cover)
    # and it counts toward the refund.
    cover = order.chargeback_uncovered
    if refund - live < cover:
        raise RefundOutOfRange(
            f"the buyer's bank already took {cover} back: refund_amount must be at least "
            f"{live + cover}",
            minimum=live + cover,
            maximum=first,
        )
    before, after = (
        settle(order.fees, order.currency, first),
        settle(order.fees, order.currency, refund),
    )
    to_seller = after.to_seller - before.to_seller
    to_revenue = after.to_revenue - before.to_revenue
    if to_seller < 0 or to_revenue < 0:
        raise LedgerInvariantError(f"order {order.id}: a smaller refund released less")
    deposit_back = sum(
        v for k, v in dead.items() if refund_intent(k) == (order.deposit_intent_id or "")
    )
    kept = {k: v for k, v in order.refund_plan.items() if k not in dead}
    plan = _refund_plan(
        order, refund - live - cover, f":r{n}", refunded=_live_by_intent(order, dead)
    )
    deposit_out = plan.get(f"{order.deposit_intent_id}:r{n}", 0)
    escrow, seller = order.escrow_account, order.seller_account
    revenue = f"platform:revenue:{order.currency}"
    steps = [
        (f"reroute.{n}", order.deposit_account, escrow, deposit_back),
        (f"chargeback.cover.{n}", escrow, f"platform:chargebacks:{order.currency}", cover),
        (f"release.seller.{n}", escrow, seller, to_seller),
        (f"release.revenue.{n}", escrow, revenue, to_revenue),
        (f"refund.route.{n}", escrow, order.deposit_account, deposit_out),
    ]
    transfers = [_transfer(order, *step) for step in steps if step[3]]
    if transfers:
        _ensure_ledger(await ledger.post(uow, _linked(transfers)), f"re-resolution of {order.id}")
    ids = {k: v for k, v in order.refund_ids.items() if k not in dead}
    changed = replace(
        order,
        refunded_amount=order.refunded_amount - first + refund,
        refund_plan={**kept, **plan},
        refund_ids=ids,
        refunds_outstanding=len(kept) + len(plan) - len(ids),
        released_to_seller=order.released_to_seller + to_seller,
        released_to_revenue=order.released_to_revenue + to_revenue,
        chargeback_covered=order.chargeback_covered + cover,
    )
    if to_seller and changed.payout_status in _PAYOUT_IDLE:
        # (pending or awaiting a destination: the payout under way chains the next one; after
        # a failed one, the next pays everything released and not yet paid out)
        changed = _next_payout(changed, n)
    details = {
        "refund": refund,
        "dropped": sorted(dead),
        "chargeback_covered": cover,
        "to_seller": to_seller,
        "to_revenue": to_revenue,
    }
    return changed, details


async def _penalise(
    uow: UnitOfWork, order: Order, deposit_captured: int
) -> tuple[Order, dict[str, Any]]:
    penalties = f"platform:penalties:{order.currency}"
    balance = await _balance(uow, order.escrow_account)
    if balance > order.deposit_in_escrow:
        raise InvalidTransition(
            f"order {order.id}: payment arrived; it is not in default",
            order_status=order.status.value,
        )
    transfers = []
    if order.deposit_in_escrow:
        transfers.append(
            _transfer(
                order, "penalty.escrow", order.escrow_account, penalties, order.deposit_in_escrow
            )
        )
    if deposit_captured and not order.deposit_in_escrow:
        # A deposit already moved into escrow is penalised from there, never a second time.
        transfers.append(
            _transfer(order, "penalty.deposit", order.deposit_account, penalties, deposit_captured)
        )
    if transfers:
        _ensure_ledger(await ledger.post(uow, _linked(transfers)), f"penalty of {order.id}")
    offer = order.runner_up_bidder_id is not None
    now = uow.clock.now_us()
    defaulted = replace(
        order,
        offer_status=OfferStatus.OPEN if offer else OfferStatus.NONE,
        offer_expires_us=now + order.payment_window_s * 1_000_000 if offer else None,
    )
    penalty = order.deposit_in_escrow or deposit_captured
    return defaulted, {"penalty": penalty, "second_chance": offer}


def _payout_suffix(order: Order) -> str:
    """The payout transfer's id suffix: ``payout`` for the first payout key ``{order}.payout``,
    ``payout.<n>`` for a later one ``{order}.payout.<n>``."""
    key = order.payout_key or ""
    prefix = f"{order.id}."
    if not key.startswith(prefix):
        raise LedgerInvariantError(f"order {order.id}: payout key {key!r} is not its own")
    return key.removeprefix(prefix)


def _next_payout(order: Order, n: int) -> Order:
    """A new pending payout of what is released but not yet paid out, under a fresh key."""
    return replace(
        order,
        payout_status=PayoutStatus.PENDING,
        payout_key=f"{order.id}.payout.{n}",
        payout_amount=order.released_to_seller - order.paid_out,
        payout_id=None,
    )


# -- plumbing ------------------------------------------------------------------------------------


_MARKED_FAILED = "marked_failed_by_operator"


async def _marked_failed(uow: UnitOfWork, order_id: str, key: str) -> bool:
    """Whether an operator marked the payout under ``key`` failed (its timeline says so)."""
    failed = await storage.events_named(uow, order_id, "payout_failed")
    return any(e.get("key") == key and e.get("code") == _MARKED_FAILED for e in failed)


async def _ambiguous_events(uow: UnitOfWork, order_id: str) -> list[dict[str, Any]]:
    return await storage.events_named(uow, order_id, "payout_ambiguous")


async def _read(uow: UnitOfWork, order_id: str) -> Order:
    order = await storage.get_order(uow, order_id)
    if order is None:
        raise OrderNotFound(f"no order {order_id!r}")
    return order


async def _locked(uow: UnitOfWork, order_id: str) -> Order:
    order = await storage.get_order(uow, order_id, for_update=True)
    if order is None:
        raise OrderNotFound(f"no order {order_id!r}")
    return order


async def _save(uow: UnitOfWork, before: Order, after: Order) -> Order:
    saved = replace(after, version=before.version + 1, updated_us=uow.clock.now_us())
    if not await storage.save_order(uow, saved, expected_version=before.version):
        raise LedgerInvariantError(f"order {before.id} changed under its row lock")
    return saved


async def _balance(uow: UnitOfWork, account_id: str) -> int:
    """Posted credits minus posted debits (what the account holds for sure)."""
    try:
        account = await ledger.get_account(uow, account_id)
    except AccountNotFound:
        return 0
    b = account.balances
    return b.credits_posted - b.debits_posted

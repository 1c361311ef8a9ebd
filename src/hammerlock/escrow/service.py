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
  already moved into escrow).

Hot rows: ``open_order`` creates the shared ``platform:*`` and seller accounts only when a plain
read does not find them (no row lock on them in the lot-close transaction), and
``platform:revenue`` is touched only by a release, never by a payment.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

import sqlalchemy as sa
import structlog

from hammerlock.audit import service as audit
from hammerlock.audit.model import Context
from hammerlock.db.engine import Database
from hammerlock.db.uow import UnitOfWork
from hammerlock.escrow import storage
from hammerlock.escrow.errors import (
    InvalidTrackingNumber,
    InvalidTransition,
    OfferNotOpen,
    OrderNotFound,
    PaymentMethodRequired,
    RefundTooLarge,
)
from hammerlock.escrow.model import (
    Event,
    OfferStatus,
    Order,
    OrderStatus,
    OrderTerms,
    PayoutStatus,
    escrow_account,
    fees_for,
    new_order_id,
    next_status,
    settle,
    valid_tracking_number,
)
from hammerlock.escrow.views import order_json
from hammerlock.ledger import service as ledger
from hammerlock.ledger.errors import AccountNotFound
from hammerlock.ledger.model import (
    AccountFlag,
    AccountInput,
    LedgerInvariantError,
    TransferFlag,
    TransferInput,
)
from hammerlock.payments.gateways.base import Gateway, GatewayError, GatewayRejected, PayoutRequest
from hammerlock.payments.model import CaptureMethod, IntentStatus, PaymentIntent, RefundReason
from hammerlock.payments.service import NewIntent, NewRefund, Payments
from hammerlock.security.pan import contains_pan
from hammerlock.webhooks import service as webhooks

__all__ = ["CardOnFile", "Escrow", "EscrowConfig", "OrderView", "open_order"]

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


@dataclass(frozen=True, slots=True)
class EscrowConfig:
    auto_delivery_s: int = 14 * 86_400  # no word from the buyer this long after shipping
    default_gateway: str = "sandbox"
    sweeper_grace_s: float = 10.0  # a payout or refund this quiet is resumed by the sweeper
    sweep_batch: int = 100


@dataclass(frozen=True, slots=True)
class OrderView:
    order: Order
    escrow_balance: int
    timeline: list[dict[str, Any]]
    payment_intent: PaymentIntent | None = None


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
    ]


async def _ensure_accounts(uow: UnitOfWork, wanted: list[AccountInput]) -> None:
    """Create the accounts a plain read does not find; existing shared ones are never locked."""
    missing = []
    for account in wanted:
        try:
            await ledger.get_account(uow, account.id)
        except AccountNotFound:
            missing.append(account)
    if missing:
        results = await ledger.create_accounts(uow, None, missing, public=False)
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


async def _open(
    uow: UnitOfWork, ctx: Context, terms: OrderTerms, *, generation: int, parent: str | None
) -> Order:
    fees = fees_for(terms)
    now = uow.clock.now_us()
    order_id = _fresh_order_id(now)
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
    await storage.insert_order(uow, order)
    await _record(
        uow,
        ctx,
        order,
        "created",
        {"total": fees.total, "premium": fees.premium, "commission": fees.commission},
    )
    return order


def _fresh_order_id(now_us: int) -> str:
    """A new ``ord_…`` id that the API's card-number guard will not refuse in a URL: about 3 in
    10,000 random ids hold a Luhn-valid, brand-prefixed digit run (say ``…a4000123456789012``)."""
    for _ in range(_ID_ATTEMPTS):
        order_id = new_order_id(now_us, secrets.token_hex(6))
        if not contains_pan(order_id):
            return order_id
    raise LedgerInvariantError("no card-number-free order id in 16 attempts")


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
    ) -> None:
        self.db = db
        self.payments = payments
        self.gateways = gateways
        self.config = config or EscrowConfig()
        self.card_on_file = card_on_file
        self.on_settled = on_settled

    # -- reads -------------------------------------------------------------------------------

    async def orders_of_lot(self, ctx: Context, lot_id: str) -> list[dict[str, Any]]:
        """The orders a lot led to (the winner's, then any second-chance one), those ``ctx``
        may see: ``{"id", "buyer_id", "status", "generation"}`` each."""
        async with self.db.transaction(write=False) as uow:
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
            if o is not None and _visible(ctx, o)
        ]

    async def get(self, ctx: Context, order_id: str) -> OrderView:
        async with self.db.transaction(write=False) as uow:
            order = await storage.get_order(uow, order_id)
            if order is None or not _visible(ctx, order):
                raise OrderNotFound(f"no order {order_id!r}")
            balance = await _balance(uow, order.escrow_account)
            timeline = await storage.timeline(uow, order.id, limit=_TIMELINE_MAX)
        intent = None
        if order.payment_intent_id is not None:
            intent, _ = await self.payments.get(order.payment_intent_id)
        return OrderView(order, balance, timeline, intent)

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
    ) -> Order:
        """Lock the order, check ``event`` against the transition table, apply ``change`` (which
        may post ledger transfers in the same transaction), save, record."""
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
            saved = await _save(uow, order, changed)
            name = label or _LABELS.get(event, event.value)
            await _record(uow, ctx, saved, name, {"event": event.value, **details})
            if self.on_settled is not None and saved.status in _SETTLES_THE_LOT:
                await self.on_settled(uow, ctx, saved.lot_id)  # lot closed → settled, same txn
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
            deposit = await self.payments.capture(
                ctx, deposit.id, amount_to_capture=min(deposit.amount_capturable, order.total)
            )
        elif deposit.status is IntentStatus.PROCESSING:
            deposit = await self.payments.drive(ctx, deposit.id)
        held = deposit.amount_received - deposit.amount_refunded
        if deposit.status is not IntentStatus.SUCCEEDED or held <= 0:
            return order  # voided or lapsed: the rest intent charges the whole total
        amount = min(held, order.total)

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
            saved = await _save(uow, current, replace(current, deposit_in_escrow=amount))
            await _record(uow, ctx, saved, "deposit_captured", {"amount": amount})
            return saved

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
                saved = await _save(
                    uow,
                    current,
                    replace(current, payment_intent_id=created.id, gateway=created.gateway),
                )
                await _record(
                    uow,
                    ctx,
                    saved,
                    "payment_started",
                    {"payment_intent": created.id, "amount": rest},
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
        async with self.db.transaction(write=False) as uow:
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
            paid = await _save(uow, order, replace(order, status=OrderStatus.PAID))
            await _record(uow, ctx, paid, Event.PAID.value, {"escrow_balance": balance})
            return paid

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
        order = await self._step(ctx, order_id, Event.ACCEPT, _release_all, side="buyer")
        return await self._payout(ctx, order.id)

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
        async with self.db.transaction(write=False) as uow:
            found = await storage.get_order(uow, order_id)
        if found is None:
            raise OrderNotFound(f"no order {order_id!r}")
        if refund_amount > found.total:
            raise RefundTooLarge(
                f"refund {refund_amount} is more than the {found.total} paid", total=found.total
            )
        event = Event.RESOLVE_REFUND if refund_amount == found.total else Event.RESOLVE_RELEASE

        async def change(uow: UnitOfWork, order: Order) -> tuple[Order, dict[str, Any]]:
            settled, details = await _settle(uow, order, refund_amount)
            return settled, {**details, "note": note}

        order = await self._step(ctx, order_id, event, change)
        order = await self.drive_refunds(ctx, order.id)
        return await self._payout(ctx, order.id)

    # -- refunds and payouts (after commit; resumable) ---------------------------------------

    async def drive_refunds(self, ctx: Context, order_id: str) -> Order:
        """Make the refunds the resolution planned (through payments, to the buyer's card)."""
        order = await self._load(order_id)
        for intent_id, amount in sorted(order.refund_plan.items()):
            if intent_id in order.refund_ids:
                continue
            refund = await self.payments.refund(
                ctx,
                NewRefund(payment_intent=intent_id, amount=amount, reason=RefundReason.DISPUTE),
                idempotency_key=f"{order.id}.refund.{intent_id}",
                scope=_SCOPE,  # the operator's call and the sweeper's resume are one refund
            )
            async with self.db.transaction() as uow:
                current = await _locked(uow, order.id)
                if intent_id in current.refund_ids:
                    order = current
                    continue
                ids = {**current.refund_ids, intent_id: refund.id}
                order = await _save(
                    uow,
                    current,
                    replace(
                        current,
                        refund_ids=ids,
                        refunds_outstanding=len(current.refund_plan) - len(ids),
                    ),
                )
                await _record(
                    uow,
                    ctx,
                    order,
                    "refund_started",
                    {"payment_intent": intent_id, "refund": refund.id, "amount": amount},
                )
        return order

    async def _payout(self, ctx: Context, order_id: str) -> Order:
        order = await self._load(order_id)
        if order.payout_status is not PayoutStatus.PENDING or order.payout_key is None:
            return order
        name = order.gateway or self.config.default_gateway
        gateway = self.gateways.get(name)
        if gateway is None:
            log.error("escrow.payout_no_gateway", order=order.id, gateway=name)
            return order
        try:
            payout_id = await self._call_payout(gateway, order, order.payout_key)
        except GatewayRejected as exc:
            return await self._payout_done(ctx, order.id, name, None, exc.code)
        except GatewayError as exc:
            log.warning("escrow.payout_pending", order=order.id, code=exc.code)
            return order
        return await self._payout_done(ctx, order.id, name, payout_id, None)

    async def _call_payout(self, gateway: Gateway, order: Order, key: str) -> str:
        # Always a payout of exactly what the ledger released to the seller. (Braintree's
        # release_from_escrow would pay out the whole sale — premium, commission and any partial
        # refund included — and only for sales held in its escrow, which intents do not ask for.)
        payout = await gateway.payout(
            PayoutRequest(
                payout_key=key,
                amount=order.released_to_seller,
                currency=order.currency,
                destination=order.seller_id,
            )
        )
        if payout.status != "paid":
            raise GatewayRejected(
                f"payout {payout.payout_id} {payout.status}", code="payout_failed"
            )
        return payout.payout_id

    async def _payout_done(
        self, ctx: Context, order_id: str, gateway: str, payout_id: str | None, failure: str | None
    ) -> Order:
        async with self.db.transaction() as uow:
            order = await _locked(uow, order_id)
            if order.payout_status is not PayoutStatus.PENDING:
                return order
            if failure is not None:
                failed = await _save(uow, order, replace(order, payout_status=PayoutStatus.FAILED))
                await _record(uow, ctx, failed, "payout_failed", {"code": failure})
                return failed
            await _ensure_accounts(
                uow,
                [
                    AccountInput(
                        f"gateway:{gateway}:{order.currency}",
                        order.currency,
                        "gateway",
                        AccountFlag(0),
                        "{}",
                    )
                ],
            )
            transfer = _transfer(
                order,
                "payout",
                order.seller_account,
                f"gateway:{gateway}:{order.currency}",
                order.released_to_seller,
            )
            _ensure_ledger(await ledger.post(uow, [transfer]), f"payout of {order.id}")
            paid = await _save(
                uow, order, replace(order, payout_status=PayoutStatus.PAID, payout_id=payout_id)
            )
            await _record(
                uow,
                ctx,
                paid,
                "payout_paid",
                {"payout": payout_id, "amount": order.released_to_seller, "gateway": gateway},
            )
            return paid

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
            return await _penalise(uow, current, deposit)

        return await self._step(ctx, order_id, Event.DEFAULT, change)

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
        return deposit.amount_received - deposit.amount_refunded

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
            return 1

    # -- the sweeper ---------------------------------------------------------------------------

    async def sweep(self, ctx: Context) -> dict[str, int]:
        """One pass over the timers: payments finished later, payment windows, auto-delivery,
        inspection ends, payouts and refunds to resume, second-chance offers to expire."""
        counts = dict.fromkeys(
            ("paid", "defaulted", "delivered", "released", "payouts", "refunds", "offers"), 0
        )
        now = self.db.clock.now_us()
        grace_us = int(self.config.sweeper_grace_s * 1_000_000)
        batch = self.config.sweep_batch
        async with self.db.transaction(write=False) as uow:
            waiting = await storage.ids_where(uow, storage.awaiting_with_intent(), limit=batch)
            due = await storage.ids_where(uow, storage.due_for_default(now), limit=batch)
            quiet = now - self.config.auto_delivery_s * 1_000_000
            shipped = await storage.ids_where(uow, storage.shipped_before(quiet), limit=batch)
            inspected = await storage.ids_where(uow, storage.inspection_over(now), limit=batch)
            payouts = await storage.ids_where(
                uow, storage.payout_pending(now - grace_us), limit=batch
            )
            refunds = await storage.ids_where(
                uow, storage.refunds_unstarted(now - grace_us), limit=batch
            )
            offers = await storage.ids_where(uow, storage.offers_expiring(now), limit=batch)
        for order_id in waiting:
            counts["paid"] += await self._poll_payment(ctx, order_id)
        for order_id in due:
            after = await self.default(ctx, order_id)
            counts["defaulted"] += after.status is OrderStatus.DEFAULTED
        for order_id in shipped:
            counts["delivered"] += await self._timer(ctx, order_id, Event.AUTO_DELIVER)
        for order_id in inspected:
            counts["released"] += await self._timer(ctx, order_id, Event.INSPECTION_END)
        for order_id in payouts:
            after = await self._payout(ctx, order_id)
            counts["payouts"] += after.payout_status is not PayoutStatus.PENDING
        for order_id in refunds:
            after = await self.drive_refunds(ctx, order_id)
            counts["refunds"] += after.refunds_outstanding == 0
        for order_id in offers:
            counts["offers"] += await self._expire_offer(ctx, order_id)
        return counts

    async def _poll_payment(self, ctx: Context, order_id: str) -> int:
        order = await self._load(order_id)
        if order.payment_intent_id is None or order.status is not OrderStatus.AWAITING_PAYMENT:
            return 0
        intent, _ = await self.payments.get(order.payment_intent_id)
        if intent.status is not IntentStatus.SUCCEEDED:
            return 0
        after = await self._sync_paid(ctx, order_id)
        return int(after.status is OrderStatus.PAID)

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
        async with self.db.transaction(write=False) as uow:
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


async def _settle(uow: UnitOfWork, order: Order, refund: int) -> tuple[Order, dict[str, Any]]:
    """Release what is not refunded (one linked chain) and plan the refunds, in this
    transaction; the seller's payout key is recorded here, before any gateway call."""
    split = settle(order.fees, order.currency, refund)
    transfers: list[TransferInput] = []
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
    plan = _refund_plan(order, refund)
    deposit_share = plan.get(order.deposit_intent_id or "", 0)
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
    )
    details = {
        "refund": refund,
        "to_seller": split.to_seller,
        "to_revenue": split.to_revenue,
        "premium_kept": split.kept.premium,
        "commission_kept": split.kept.commission,
    }
    return settled, details


def _refund_plan(order: Order, refund: int) -> dict[str, int]:
    """Which intent refunds how much: the rest's intent first, then the deposit."""
    plan: dict[str, int] = {}
    rest_paid = order.total - order.deposit_in_escrow
    from_rest = min(refund, rest_paid)
    if from_rest and order.payment_intent_id is not None:
        plan[order.payment_intent_id] = from_rest
    from_deposit = refund - from_rest
    if from_deposit:
        if order.deposit_intent_id is None:
            raise LedgerInvariantError(f"order {order.id}: refund beyond its payments")
        plan[order.deposit_intent_id] = from_deposit
    return plan


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


# -- plumbing ------------------------------------------------------------------------------------


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

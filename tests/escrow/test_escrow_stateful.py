"""The order state machine under random event sequences (issue #6's stateful test).

A Hypothesis state machine opens orders (with and without a deposit and a runner-up; cards that
succeed, decline or ask for 3-D Secure; totals that need a risk review), then throws events at
them in any order: pay (with the card on file or a new one), 3-D Secure challenges passed or
failed, review decisions, ship, confirm delivery, accept, dispute, resolve (full, partial or no
refund), refund reviews approved or rejected and resolving again after a rejection, an operator's
cancel of a paid order, refunds after release, chargebacks on the payment (in any state),
second-chance acceptance, and time passing (the sweeper and the payments janitor run: payment
windows, ship windows, auto-delivery, inspection ends).

After every step: money is conserved (per currency, every ledger account together sums to zero,
posted and pending); no escrow account is negative; every order only ever moved along the
transition table, and a terminal order never moves again. At the end every order is driven to
rest, and each ends in exactly one terminal state with the ledger matching it: released (escrow
empty, seller share released and paid out, the rest as revenue, refunds after release from
platform:refunds), refunded (escrow empty, the total refunded), defaulted (escrow empty, the
deposit kept as a penalty). SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine
from typing import Any, ClassVar, TypeVar

import pytest
import sqlalchemy as sa
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from hammerlock.audit.model import Actor, Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.errors import DomainError
from hammerlock.escrow.model import (
    TERMINAL,
    Order,
    OrderStatus,
    PayoutStatus,
    RefundKind,
    refund_kind,
    transitions,
)
from hammerlock.ledger import service as ledger
from hammerlock.ledger.errors import TransferNotFound
from hammerlock.ledger.storage import accounts as ledger_accounts
from hammerlock.ledger.storage import transfers as ledger_transfers
from hammerlock.payments.gateways.base import DISPUTE_CREATED, ChargeStatus, WebhookEvent
from hammerlock.payments.model import IntentStatus, RefundStatus, ReviewStatus
from hammerlock.settings import Settings
from tests.escrow.conftest import SYSTEM, install, open_test_order, party_ctx
from tests.payments.fake_gateway import FakeGateway

T = TypeVar("T")
BUYER, SELLER, RUNNER_UP = "bid_sm_buyer", "sel_sm_seller", "bid_sm_runner"
BUYER_CTX = party_ctx(BUYER, "bidder")
SELLER_CTX = party_ctx(SELLER, "seller")
RUNNER_CTX = party_ctx(RUNNER_UP, "bidder")
OPERATOR = party_ctx("op_sm", "operator")
REVIEWERS = [
    Context(actor=Actor(principal_id=f"rev_sm{n}", role="reviewer", key_id=f"key_rev{n}"))
    for n in (1, 2)
]
ALLOWED = {(before, after) for (before, _), after in transitions().items()}
_DEAD = frozenset({RefundStatus.CANCELED, RefundStatus.FAILED})
AUTO_DELIVERY_S = 5 * 86_400
_requests = itertools.count()


class _Env:
    def __init__(self, app_settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.clock = FixedClock()
        self.container = Container(app_settings, clock=self.clock, background=False)
        self.run(self.container.start())
        self.gateway = FakeGateway()
        self.escrow = install(self.container, self.gateway, auto_delivery_s=AUTO_DELIVERY_S)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        try:
            self.run(self.container.stop())
        finally:
            self.loop.close()


class OrdersMachine(RuleBasedStateMachine):
    env: ClassVar[_Env]
    orders = Bundle("orders")

    def __init__(self) -> None:
        super().__init__()
        self.escrow = self.env.escrow
        self.payments = self.env.container.payments
        self.ids: list[str] = []
        self.last: dict[str, OrderStatus] = {}

    def _try(self, coro: Coroutine[Any, Any, T]) -> T | None:
        try:
            return self.env.run(coro)
        except DomainError:
            return None

    def _order(self, order_id: str) -> Order:
        return self.env.run(self.escrow.get(SYSTEM, order_id)).order

    def _track(self, order_id: str) -> None:
        if order_id not in self.last:
            self.ids.append(order_id)
            self.last[order_id] = self._order(order_id).status

    # -- rules -----------------------------------------------------------------------------

    @initialize(target=orders, deposit=st.sampled_from([None, 5_000]), runner_up=st.booleans())
    def first(self, deposit: int | None, runner_up: bool) -> str:
        return self.open(100_000, 2_500, 1_000, deposit, runner_up, "tok_ok")

    @rule(
        target=orders,
        hammer=st.sampled_from([1, 999, 100_000, 1_234_567]),
        premium_bps=st.sampled_from([0, 1, 2_500, 3_333]),
        commission_bps=st.sampled_from([0, 777, 1_000]),
        deposit=st.sampled_from([None, 100, 50_000]),
        runner_up=st.booleans(),
        card=st.sampled_from(["tok_ok", "tok_ok", "tok_decline", "tok_3ds", None]),
    )
    def open(  # noqa: PLR0917 - Hypothesis passes the drawn values by name and by position
        self,
        hammer: int,
        premium_bps: int,
        commission_bps: int,
        deposit: int | None,
        runner_up: bool,
        card: str | None,
    ) -> str:
        opened = self.env.run(
            open_test_order(
                self.env.container,
                hammer=hammer,
                premium_bps=premium_bps,
                commission_bps=commission_bps,
                deposit=deposit,
                buyer=BUYER,
                seller=SELLER,
                runner_up=(RUNNER_UP, max(1, hammer - 1)) if runner_up else None,
                card=card,
                window_s=86_400,
                inspection_s=3 * 86_400,
            )
        )
        self._track(opened.order_id)
        return opened.order_id

    @rule(order=orders, method=st.sampled_from([None, "tok_ok_new", "tok_decline_new"]))
    def pay(self, order: str, method: str | None) -> None:
        token = None if method is None else f"{method}_{next(_requests)}"
        self._try(self.escrow.pay(BUYER_CTX, order, payment_method=token))

    @rule(order=orders, passed=st.booleans())
    def challenge(self, order: str, passed: bool) -> None:
        current = self._order(order)
        if current.payment_intent_id is None:
            return
        intent, _ = self.env.run(self.payments.get(current.payment_intent_id))
        key = intent.pending_key or intent.authorize_key
        charge = self.env.gateway.charges.get(key or "")
        if charge is None or charge.status is not ChargeStatus.REQUIRES_ACTION:
            return
        self.env.gateway.complete_challenge(charge.gateway_key, passed=passed)
        self.env.run(self.payments.janitor_pass(SYSTEM))

    @rule(order=orders, approve=st.booleans())
    def decide_payment_review(self, order: str, approve: bool) -> None:
        current = self._order(order)
        if current.payment_intent_id is not None:
            self._decide(current.payment_intent_id, approve=approve)

    def _decide(self, intent_id: str, *, approve: bool) -> None:
        _, review = self.env.run(self.payments.get(intent_id))
        if review is None or review.status is not ReviewStatus.OPEN:
            return
        for reviewer in REVIEWERS[: review.approvals_required if approve else 1]:
            self._try(self.payments.decide_review(reviewer, review.id, approve=approve, note=None))

    @rule(order=orders)
    def reject_refund_reviews(self, order: str) -> None:
        """A reviewer rejects a resolution's or a cancellation's refund: its amount stays in
        escrow until the operator resolves again (``_nudge``). Refunds after release are
        always approved here."""
        for key, refund_id in self._order(order).refund_ids.items():
            if refund_kind(key) is RefundKind.AFTER_RELEASE:
                continue
            refund = self.env.run(self.payments.get_refund(refund_id))
            if refund.status is RefundStatus.REQUIRES_REVIEW and refund.review_id:
                self._try(
                    self.payments.decide_review(
                        REVIEWERS[0], refund.review_id, approve=False, note=None
                    )
                )

    @rule(order=orders)
    def cancel(self, order: str) -> None:
        self._try(self.escrow.cancel(OPERATOR, order, reason="never shipped"))

    @rule(order=orders, share=st.sampled_from([(1, 1), (1, 2), (1, 1_000)]))
    def refund_after_release(self, order: str, share: tuple[int, int]) -> None:
        current = self._order(order)
        amount = max(1, (current.total - current.refunded_amount) * share[0] // share[1])
        self._try(
            self.escrow.refund_after_release(
                OPERATOR, order, amount=amount, reason="after", request_key=f"r{next(_requests)}"
            )
        )

    def _reresolve(self, order: Order) -> None:
        """Resolve again when a refund of the resolution was rejected: a full refund retried,
        a partial one given up (the rest released)."""
        dead = 0
        for key, refund_id in order.refund_ids.items():
            refund = self.env.run(self.payments.get_refund(refund_id))
            kind = refund_kind(key)
            if kind is not RefundKind.AFTER_RELEASE and refund.status in _DEAD:
                dead += order.refund_plan[key]
        if not dead:
            return
        first = order.total - order.released_to_seller - order.released_to_revenue
        amount = order.total if order.status is OrderStatus.REFUNDED else first - dead
        self._try(self.escrow.resolve(OPERATOR, order.id, refund_amount=amount))

    @rule(order=orders)
    def approve_refund_reviews(self, order: str) -> None:
        """Refunds asked for are approved (every reviewer)."""
        for refund_id in self._order(order).refund_ids.values():
            refund = self.env.run(self.payments.get_refund(refund_id))
            if refund.status is RefundStatus.REQUIRES_REVIEW and refund.review_id:
                for reviewer in REVIEWERS:
                    self._try(
                        self.payments.decide_review(
                            reviewer, refund.review_id, approve=True, note=None
                        )
                    )

    @rule(order=orders, dispute=st.booleans())
    def next_step(self, order: str, dispute: bool) -> None:
        """The usual next step of an order (reaches deep states in few steps)."""
        self._nudge(order, dispute=dispute)

    @rule(order=orders, carrier=st.sampled_from(["ups", "dhl"]))
    def ship(self, order: str, carrier: str) -> None:
        tracking = "1Z999AA10123456784" if carrier == "ups" else "1234567890"
        self._try(self.escrow.ship(SELLER_CTX, order, carrier=carrier, tracking=tracking))

    @rule(order=orders)
    def confirm_delivery(self, order: str) -> None:
        self._try(self.escrow.confirm_delivery(BUYER_CTX, order))

    @rule(order=orders)
    def accept(self, order: str) -> None:
        self._try(self.escrow.accept(BUYER_CTX, order))

    @rule(order=orders)
    def dispute(self, order: str) -> None:
        self._try(self.escrow.dispute(BUYER_CTX, order, reason="not as described"))

    @rule(order=orders, share=st.sampled_from([(0, 1), (1, 3), (1, 2), (1, 1)]))
    def resolve(self, order: str, share: tuple[int, int]) -> None:
        current = self._order(order)
        refund = current.total * share[0] // share[1]
        if current.status is OrderStatus.DISPUTED:  # never below what a chargeback took back
            refund = max(refund, current.chargeback_uncovered)
        self._try(self.escrow.resolve(OPERATOR, order, refund_amount=refund))

    @rule(order=orders, share=st.sampled_from([(1, 1), (1, 2), (1, 1_000)]))
    def chargeback(self, order: str, share: tuple[int, int]) -> None:
        """The buyer's bank takes back part of the rest's payment (the gateway's webhook)."""
        current = self._order(order)
        if current.payment_intent_id is None:
            return
        intent, _ = self.env.run(self.payments.get(current.payment_intent_id))
        if intent.status is not IntentStatus.SUCCEEDED or intent.authorize_key is None:
            return
        refunds = sum(
            amount for key, amount in current.refund_plan.items() if key.startswith(intent.id)
        )
        held = intent.amount_received - refunds - current.chargebacks.get(intent.id, 0)
        amount = held * share[0] // share[1]
        if amount <= 0:
            return
        event = WebhookEvent(
            gateway="sandbox",
            event_id=f"evt_sm{next(_requests)}",
            type=DISPUTE_CREATED,
            gateway_key=intent.authorize_key,
            charge_id=None,
            dispute_id=f"dp_sm{next(_requests)}",
            amount=amount,
        )
        self.env.run(self.payments.chargeback(SYSTEM, "sandbox", event))

    @rule(order=orders)
    def accept_second_chance(self, order: str) -> None:
        new = self._try(self.escrow.accept_offer(RUNNER_CTX, order))
        if new is not None:
            self._track(new.id)

    @rule(seconds=st.sampled_from([3_600, 86_400, 3 * 86_400, 6 * 86_400]))
    def time_passes(self, seconds: int) -> None:
        self.env.clock.advance(seconds)
        self.env.run(self.payments.janitor_pass(SYSTEM))
        self.env.run(self.escrow.sweep(SYSTEM))

    # -- invariants ------------------------------------------------------------------------

    async def _sums(self) -> list[Any]:
        a = ledger_accounts.c
        async with self.env.container.db.transaction(write=False) as uow:
            rows = await uow.conn.execute(
                sa.select(
                    a.currency,
                    sa.func.sum(a.credits_posted) - sa.func.sum(a.debits_posted),
                    sa.func.sum(a.credits_pending) - sa.func.sum(a.debits_pending),
                ).group_by(a.currency)
            )
            return list(rows)

    async def _escrows(self) -> list[Any]:
        a = ledger_accounts.c
        async with self.env.container.db.transaction(write=False) as uow:
            rows = await uow.conn.execute(
                sa.select(a.id, a.credits_posted, a.debits_posted, a.debits_pending).where(
                    a.id.like("escrow:%")
                )
            )
            return list(rows)

    @invariant()
    def money_is_conserved(self) -> None:
        for currency, posted, pending in self.env.run(self._sums()):
            assert (posted, pending) == (0, 0), currency

    @invariant()
    def escrow_is_never_negative(self) -> None:
        for account, posted_in, posted_out, pending_out in self.env.run(self._escrows()):
            assert posted_out + pending_out <= posted_in, account

    @invariant()
    def orders_follow_the_table(self) -> None:
        for order_id in self.ids:
            before, now = self.last[order_id], self._order(order_id).status
            if before is not now:
                assert before not in TERMINAL, (order_id, before, now)
                # a sweep may take two timer steps at once (shipped -> delivered -> released)
                assert (before, now) in ALLOWED or before is OrderStatus.SHIPPED, (before, now)
            self.last[order_id] = now

    # -- the end: everything to rest, then the ledger must match each terminal state -------

    def teardown(self) -> None:
        for _ in range(8):
            for n, order_id in enumerate(self.ids):
                self._nudge(order_id, dispute=n % 2 == 1)
                # A resolution's refund asked for just now is approved before the clock moves:
                # eight days on, its review would have expired (refund canceled, the money kept
                # in escrow for the operator to resolve again — and round it would go).
                self.approve_refund_reviews(order_id)
            self.env.clock.advance(8 * 86_400)
            self.env.run(self.payments.janitor_pass(SYSTEM))
            self.env.run(self.escrow.sweep(SYSTEM))
            if all(self._at_rest(self._order(o)) for o in self.ids):
                break
        for order_id in self.ids:
            self._check_terminal(self._order(order_id))

    def _at_rest(self, order: Order) -> bool:
        """Terminal, with every refund made and no payout to come (a refund the sweeper's
        cancel asked for may still wait for its review)."""
        if order.status not in TERMINAL or order.refunds_outstanding:
            return False
        if order.payout_status in {PayoutStatus.PENDING, PayoutStatus.NO_DESTINATION}:
            return False
        return all(
            self.env.run(self.payments.get_refund(r)).status is RefundStatus.SUCCEEDED
            for r in order.refund_ids.values()
        )

    def _nudge(self, order_id: str, *, dispute: bool) -> None:
        order = self._order(order_id)
        if order.payment_intent_id is not None:
            self._decide(order.payment_intent_id, approve=True)
        self.approve_refund_reviews(order_id)
        match order.status:
            case OrderStatus.AWAITING_PAYMENT:
                self.pay(order_id, "tok_ok_new" if dispute else None)
            case OrderStatus.PAID:
                self.ship(order_id, "dhl")
            case OrderStatus.SHIPPED:
                self.confirm_delivery(order_id)
            case OrderStatus.DELIVERED if dispute:
                self.dispute(order_id)
            case OrderStatus.DISPUTED:
                self.resolve(order_id, (1, 3) if dispute else (1, 1))
            case OrderStatus.RELEASED | OrderStatus.REFUNDED:
                self._reresolve(order)
            case _:
                pass

    def _check_terminal(self, order: Order) -> None:
        assert order.status in TERMINAL, order
        timeline = self.env.run(self.escrow.get(SYSTEM, order.id)).timeline
        ends = [e for e in timeline if OrderStatus(e["status"]) in TERMINAL]
        assert len({e["status"] for e in ends}) == 1, ends  # exactly one terminal state
        balance = self.env.run(self.escrow.get(SYSTEM, order.id)).escrow_balance
        assert balance == 0, (order.id, order.status, balance)
        seller = self._transfers(f"{order.id}:release.seller")
        revenue = self._transfers(f"{order.id}:release.revenue")
        payout = self._transfers(f"{order.id}:payout")
        after_release = sum(
            amount
            for key, amount in order.refund_plan.items()
            if refund_kind(key) is RefundKind.AFTER_RELEASE
        )
        match order.status:
            case OrderStatus.RELEASED:
                parts = order.released_to_seller + order.released_to_revenue
                assert parts + order.refunded_amount - after_release == order.total
                assert seller == order.released_to_seller
                assert revenue == order.released_to_revenue
                assert payout == order.paid_out == order.released_to_seller
                paid_out = PayoutStatus.PAID if seller else PayoutStatus.NONE
                assert order.payout_status is paid_out
            case OrderStatus.REFUNDED:
                assert after_release == 0
                assert order.refunded_amount == order.total
                assert (seller, revenue, payout) == (0, 0, 0)
                self._refunds_succeeded(order)
            case OrderStatus.DEFAULTED:
                assert (seller, revenue, payout) == (0, 0, 0)
                kept = self._transfer(f"{order.id}:penalty.deposit")
                kept += self._transfer(f"{order.id}:penalty.escrow")
                assert kept == self._deposit_captured(order)
            case _:
                raise AssertionError(order.status)
        if order.status is OrderStatus.RELEASED and order.refunded_amount:
            self._refunds_succeeded(order)

    def _refunds_succeeded(self, order: Order) -> None:
        assert order.refunds_outstanding == 0
        total = 0
        for refund_id in order.refund_ids.values():
            refund = self.env.run(self.payments.get_refund(refund_id))
            assert refund.status is RefundStatus.SUCCEEDED, refund
            total += refund.amount
        # what a chargeback gave back was paid to platform:chargebacks from escrow, not refunded
        assert total + order.chargeback_covered == order.refunded_amount

    def _deposit_captured(self, order: Order) -> int:
        if order.deposit_intent_id is None:
            return 0
        deposit, _ = self.env.run(self.payments.get(order.deposit_intent_id))
        if deposit.status is not IntentStatus.SUCCEEDED:
            return 0
        return deposit.amount_received

    def _transfers(self, prefix: str) -> int:
        """The sum of the transfers ``prefix`` and ``prefix.<n>`` (a re-resolution's)."""

        async def read() -> int:
            t = ledger_transfers.c
            async with self.env.container.db.transaction(write=False) as uow:
                total = await uow.conn.scalar(
                    sa.select(sa.func.coalesce(sa.func.sum(t.amount), 0)).where(
                        sa.or_(t.id == prefix, t.id.like(f"{prefix}.%"))
                    )
                )
                return int(total or 0)

        return self.env.run(read())

    def _transfer(self, transfer_id: str) -> int:
        async def read() -> int:
            async with self.env.container.db.transaction(write=False) as uow:
                try:
                    return (await ledger.get_transfer(uow, transfer_id)).amount
                except TransferNotFound:
                    return 0

        return self.env.run(read())


def _run(app_settings: Settings, max_examples: int, *, steps: int) -> None:
    env = _Env(app_settings)
    machine = type("OrdersMachineRun", (OrdersMachine,), {"env": env})
    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                settings.default, max_examples=max_examples, stateful_step_count=steps
            ),
        )
    finally:
        env.close()


def test_orders_under_random_events(app_settings: Settings) -> None:
    _run(app_settings, max(5, settings.default.max_examples // 10), steps=15)


@pytest.mark.slow
@pytest.mark.timeout(1_500)
def test_orders_under_many_random_events(app_settings: Settings) -> None:
    _run(app_settings, 200, steps=25)

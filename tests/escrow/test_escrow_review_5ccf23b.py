"""Review of 5ccf23b (refunds after release, chargebacks, cancel, re-resolve, payout
destinations): each test fails without its fix. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.escrow.errors import PaymentMethodRequired, RefundOutOfRange
from hammerlock.escrow.model import OrderStatus, PayoutStatus
from hammerlock.ledger.check import run_check
from hammerlock.payments.gateways.base import GatewayUnavailable, Payout, PayoutRequest
from tests.escrow.conftest import SYSTEM, install, open_test_order
from tests.escrow.test_escrow_chargebacks import dispute
from tests.escrow.test_escrow_flow import BUYER, OPERATOR, SELLER, balance
from tests.escrow.test_escrow_refunds import _disputed_big, _reject_refund
from tests.payments.fake_gateway import FakeGateway


async def test_a_chargeback_on_the_deposit_before_the_rest_is_paid_freezes_the_order(
    container: Container, gateway: FakeGateway
) -> None:
    """A chargeback on the captured deposit while the order still awaits the rest leaves it
    ``awaiting_payment``; once the rest is paid the money is in escrow with a chargeback not
    covered, so the order must be frozen (``disputed``), not ``paid``: else its release (accept,
    the inspection timer) asks for a refund of 0 < the chargeback and fails for ever."""
    escrow, payments = container.escrow, container.payments
    opened = await open_test_order(container, hammer=100_000, deposit=20_000, card=None)
    with pytest.raises(PaymentMethodRequired):
        await escrow.pay(BUYER, opened.order_id, payment_method=None)
    order = (await escrow.get(SYSTEM, opened.order_id)).order
    assert order.deposit_in_escrow == 20_000
    assert order.deposit_intent_id is not None
    deposit, _ = await payments.get(order.deposit_intent_id)
    assert deposit.authorize_key is not None
    assert await payments.chargeback(
        SYSTEM, "sandbox", dispute(deposit.authorize_key, "dp_a", 5_000)
    )
    order = (await escrow.get(SYSTEM, order.id)).order
    assert order.status is OrderStatus.AWAITING_PAYMENT
    order, _ = await escrow.pay(BUYER, order.id, payment_method="tok_ok_rest")
    assert await balance(container, f"escrow:{order.id}") == order.total
    assert order.status is OrderStatus.DISPUTED
    assert order.dispute_reason == "chargeback"
    # no release without an operator; the resolution covers the chargeback
    order = await escrow.resolve(OPERATOR, order.id, refund_amount=5_000)
    assert order.status is OrderStatus.RELEASED
    assert order.chargeback_uncovered == 0
    assert await balance(container, f"escrow:{order.id}") == 0
    assert await balance(container, "platform:chargebacks:USD") == 0
    report = await run_check(container.db)
    assert report.ok, report.lines()


class GatedPayouts(FakeGateway):
    """Records what each payout key paid; the first payout, once armed, waits at a barrier;
    ``refuse_chained`` makes the next payout under a chained key (``….payout.<n>``) fail."""

    def __init__(self) -> None:
        super().__init__()
        self.paid: dict[str, int] = {}
        self.armed = False
        self.inside = asyncio.Event()
        self.release = asyncio.Event()
        self.refuse_chained = False

    async def payout(self, request: PayoutRequest) -> Payout:
        if self.armed:
            self.armed = False
            self.inside.set()
            await asyncio.wait_for(self.release.wait(), 10.0)
        elif self.refuse_chained and not request.payout_key.endswith(".payout"):
            self.refuse_chained = False
            raise GatewayUnavailable("down")
        self.paid[request.payout_key] = request.amount
        return await super().payout(request)


async def test_a_stale_payout_completion_never_marks_the_next_payout_paid(
    container: Container, clock: FixedClock
) -> None:
    """A resolution's payout call is slow; meanwhile the operator resolves again (more released)
    and that call pays the first key and chains the next payout, whose call fails. When the slow
    call answers, its completion must not mark the *chained* payout paid: the gateway never paid
    it, yet the ledger would show the seller paid out."""
    gateway = GatedPayouts()
    escrow = install(container, gateway)
    order = await _disputed_big(container, clock)
    gateway.armed = True
    slow = asyncio.create_task(escrow.resolve(OPERATOR, order.id, refund_amount=1_100_000))
    await asyncio.wait_for(gateway.inside.wait(), 10.0)
    order = (await escrow.get(SYSTEM, order.id)).order
    await _reject_refund(container, order)
    gateway.refuse_chained = True
    order = await escrow.resolve(OPERATOR, order.id, refund_amount=400_000)
    assert order.payout_status is PayoutStatus.PENDING  # the chained payout's call failed
    gateway.release.set()
    await slow
    order = (await escrow.get(SYSTEM, order.id)).order
    assert order.paid_out == sum(gateway.paid.values())
    clock.advance(1)
    await escrow.sweep(SYSTEM)
    order = (await escrow.get(SYSTEM, order.id)).order
    assert order.payout_status is PayoutStatus.PAID
    assert order.paid_out == order.released_to_seller == sum(gateway.paid.values())
    assert await balance(container, f"seller:{SELLER.actor.principal_id}:payable:USD") == 0
    report = await run_check(container.db)
    assert report.ok, report.lines()


async def test_resolving_again_covers_a_chargeback_that_came_after_the_resolution(
    container: Container, gateway: FakeGateway, clock: FixedClock
) -> None:
    """The resolution's refund is rejected (its money stays in escrow), then the buyer's bank
    charges back 300,000. Resolving again with a refund of 400,000 must give the buyer 400,000
    in all (300,000 by the bank, paid back from escrow to platform:chargebacks, and 100,000 by
    refund), never 400,000 by refund on top of the chargeback (the house losing 300,000)."""
    escrow, payments = container.escrow, container.payments
    order = await _disputed_big(container, clock)
    order = await escrow.resolve(OPERATOR, order.id, refund_amount=1_100_000)
    await _reject_refund(container, order)
    assert order.payment_intent_id is not None
    intent, _ = await payments.get(order.payment_intent_id)
    assert intent.authorize_key is not None
    assert await payments.chargeback(
        SYSTEM, "sandbox", dispute(intent.authorize_key, "dp_late", 300_000)
    )
    with pytest.raises(RefundOutOfRange):  # less than the bank already gave back
        await escrow.resolve(OPERATOR, order.id, refund_amount=299_999)
    order = await escrow.resolve(OPERATOR, order.id, refund_amount=400_000)
    assert order.refunded_amount == 400_000
    assert order.chargeback_uncovered == 0
    assert await balance(container, "platform:chargebacks:USD") == 0
    assert await balance(container, f"escrow:{order.id}") == 0
    refunded = sum(r.amount for r in gateway.refunds.values())
    assert refunded + order.chargeback_amount == 400_000
    report = await run_check(container.db)
    assert report.ok, report.lines()

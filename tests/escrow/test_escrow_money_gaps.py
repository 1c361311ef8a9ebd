"""Three money-correctness gaps of docs/escrow.md, closed; each test fails with its fix reverted.

(1) A chargeback booking and a payout's completion on one order take the order's row before
    the ledger's accounts (raced for real on PostgreSQL, the interleaving forced): no deadlock.
(2) A payout that failed is followed by one when a later re-resolution releases more to the
    seller (or released more while the failed call was under way): everything released and
    not yet paid out is paid, once, whatever the retries and sweepers.
(3) A chargeback on the winner's deposit before the lot closes is carried to the order the close
    opens: the order is frozen once paid and its resolution covers the chargeback.

After each: money is conserved (``run_check``: every currency's debits equal its credits,
balances recomputed from transfers) and escrow never goes below zero.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.escrow.errors import InvalidTransition, RefundOutOfRange
from hammerlock.escrow.model import Order, OrderStatus, OrderTerms, PayoutStatus
from hammerlock.escrow.service import chargeback as escrow_chargeback
from hammerlock.escrow.service import open_order
from hammerlock.ledger.check import run_check
from hammerlock.payments.gateways.base import (
    GatewayRejected,
    GatewayTimeout,
    Payout,
    PayoutRequest,
)
from tests.escrow.conftest import SYSTEM, install, make_deposit
from tests.escrow.test_escrow_chargebacks import _delivered, dispute
from tests.escrow.test_escrow_flow import BUYER, OPERATOR, balance
from tests.escrow.test_escrow_refunds import _disputed_big, _reject_refund
from tests.payments.fake_gateway import FakeGateway

_BARRIER_S = 10.0
_SELLER_PAYABLE = "seller:sel_seller:payable:USD"


async def _money_conserved(container: Container, order: Order) -> None:
    report = await run_check(container.db)
    assert report.ok, report.lines()
    assert await balance(container, f"escrow:{order.id}") >= 0


class Gate:
    """One pause: the first caller once armed waits (``inside`` set) until ``release``."""

    def __init__(self) -> None:
        self.armed = False
        self.inside = asyncio.Event()
        self.release = asyncio.Event()

    def arm(self) -> None:
        self.armed, self.inside, self.release = True, asyncio.Event(), asyncio.Event()

    async def pass_(self) -> None:
        if self.armed:
            self.armed = False
            self.inside.set()
            await asyncio.wait_for(self.release.wait(), _BARRIER_S)


class GatedPayouts(FakeGateway):
    """Payouts behind a :class:`Gate`; keys in ``refuse`` are refused (the same answer for
    every call under one key, as a real gateway's idempotency gives); ``paid`` maps each key
    paid to its amount."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = Gate()
        self.refuse: set[str] = set()
        self.paid: dict[str, int] = {}

    async def payout(self, request: PayoutRequest) -> Payout:
        await self.gate.pass_()
        if request.payout_key in self.refuse:
            return Payout(
                "sandbox", request.payout_key, "po_x", request.amount, request.currency, "failed"
            )
        if self.paid.setdefault(request.payout_key, request.amount) != request.amount:
            raise AssertionError(f"{request.payout_key} paid with two amounts")
        return await super().payout(request)


# -- (1) chargeback vs payout completion: one lock order -----------------------------------------


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_chargeback_and_a_payout_completion_on_one_order_never_deadlock(
    container: Container,
) -> None:
    """The payout's gateway call answers while a chargeback on the same order is being booked
    (the webhook's transaction paused in the escrow hook): the payout's completion locks the
    order and posts ``seller payable → gateway``; the booking posts ``platform:chargebacks →
    gateway`` and locks the order. Taken in opposite orders, PostgreSQL aborts one."""
    gateway = GatedPayouts()
    escrow = install(container, gateway)
    hook_gate = Gate()

    async def gated_hook(*args: Any) -> object:
        await hook_gate.pass_()
        return await escrow_chargeback(*args)

    container.payments.on_chargeback = gated_hook
    for n in range(3):
        order, key = await _delivered(container)
        gateway.gate.arm()
        accepting = asyncio.create_task(escrow.accept(BUYER, order.id))
        await asyncio.wait_for(gateway.gate.inside.wait(), _BARRIER_S)  # released, payout called
        hook_gate.arm()
        booking = asyncio.create_task(
            container.payments.chargeback(SYSTEM, "sandbox", dispute(key, f"dp_dl_{n}", 10_000))
        )
        await asyncio.wait_for(hook_gate.inside.wait(), _BARRIER_S)
        gateway.gate.release.set()  # the payout's completion runs ...
        await asyncio.sleep(0.3)
        hook_gate.release.set()  # ... while the chargeback's transaction goes on
        accepted, booked = await asyncio.gather(accepting, booking, return_exceptions=True)
        assert not isinstance(accepted, BaseException), f"payout completion: {accepted!r}"
        assert booked is True, f"chargeback booking: {booked!r}"
        order = (await escrow.get(SYSTEM, order.id)).order
        assert order.status is OrderStatus.RELEASED
        assert order.payout_status is PayoutStatus.PAID
        assert order.paid_out == order.released_to_seller == gateway.paid[f"{order.id}.payout"]
        assert order.chargeback_amount == 10_000
        assert await balance(container, "platform:chargebacks:USD") == -10_000 * (n + 1)
        await _money_conserved(container, order)


# -- (2) a follow-up payout after a failed one ---------------------------------------------------


async def test_resolving_again_after_a_failed_payout_pays_what_is_owed_once(
    container: Container, clock: FixedClock
) -> None:
    """The resolution's payout is refused and its refund rejected; resolving again releases
    more to the seller: a payout of everything released and not paid out follows, under its
    own key, and sweeping again (twice at once) pays nothing more."""
    gateway = GatedPayouts()
    escrow = install(container, gateway)
    order = await _disputed_big(container, clock)
    gateway.refuse.add(f"{order.id}.payout")
    order = await escrow.resolve(OPERATOR, order.id, refund_amount=1_100_000)
    assert order.payout_status is PayoutStatus.FAILED
    first = order.released_to_seller
    assert first > 0
    assert order.paid_out == 0
    await _reject_refund(container, order)
    order = await escrow.resolve(OPERATOR, order.id, refund_amount=400_000)
    assert order.released_to_seller > first
    assert order.payout_status is PayoutStatus.PAID, "no payout followed the failed one"
    assert order.paid_out == order.released_to_seller == sum(gateway.paid.values())
    assert len(gateway.paid) == 1
    clock.advance(1)
    await asyncio.gather(escrow.sweep(SYSTEM), escrow.sweep(SYSTEM))
    again = (await escrow.get(SYSTEM, order.id)).order
    assert (again.payout_status, again.paid_out) == (PayoutStatus.PAID, order.paid_out)
    assert sum(gateway.paid.values()) == order.released_to_seller
    assert await balance(container, _SELLER_PAYABLE) == 0
    await _money_conserved(container, order)


async def test_a_payout_failing_after_a_re_resolution_released_more_is_followed_once(
    container: Container, clock: FixedClock
) -> None:
    """The resolution's payout call is slow; the operator resolves again meanwhile (more
    released: the payout under way is to chain the next one), then that payout is refused.
    The follow-up is queued by the failure and paid once by two sweepers racing."""
    gateway = GatedPayouts()
    escrow = install(container, gateway)
    order = await _disputed_big(container, clock)
    gateway.refuse.add(f"{order.id}.payout")
    gateway.gate.arm()
    slow = asyncio.create_task(escrow.resolve(OPERATOR, order.id, refund_amount=1_100_000))
    await asyncio.wait_for(gateway.gate.inside.wait(), _BARRIER_S)
    order = (await escrow.get(SYSTEM, order.id)).order
    await _reject_refund(container, order)
    order = await escrow.resolve(OPERATOR, order.id, refund_amount=400_000)
    gateway.gate.release.set()
    await slow
    order = (await escrow.get(SYSTEM, order.id)).order
    assert order.payout_status is PayoutStatus.PENDING, "the failure queued no follow-up"
    assert order.payout_amount == order.released_to_seller
    clock.advance(1)
    counts = await asyncio.gather(escrow.sweep(SYSTEM), escrow.sweep(SYSTEM))
    assert sum(c["payouts"] for c in counts) >= 1
    order = (await escrow.get(SYSTEM, order.id)).order
    assert order.payout_status is PayoutStatus.PAID
    assert order.paid_out == order.released_to_seller == sum(gateway.paid.values())
    assert len(gateway.paid) == 1
    await escrow.sweep(SYSTEM)
    assert sum(gateway.paid.values()) == order.released_to_seller
    assert await balance(container, _SELLER_PAYABLE) == 0
    await _money_conserved(container, order)


async def test_the_sweeper_leaves_a_failed_payout_made_before_the_follow_up_alone(
    container: Container, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An order left failed with more released since (made under the old rule: no follow-up
    after a failed payout) was an operator's to settle, who may have paid it by hand: the
    sweeper pays nothing on it (a review found the first version of the follow-up did)."""
    gateway = GatedPayouts()
    escrow = install(container, gateway)
    order = await _disputed_big(container, clock)
    gateway.refuse.add(f"{order.id}.payout")
    order = await escrow.resolve(OPERATOR, order.id, refund_amount=1_100_000)
    await _reject_refund(container, order)
    old_rule = frozenset({PayoutStatus.NONE, PayoutStatus.PAID})
    with monkeypatch.context() as patched:
        patched.setattr("hammerlock.escrow.service._PAYOUT_IDLE", old_rule)
        order = await escrow.resolve(OPERATOR, order.id, refund_amount=400_000)
    assert order.payout_status is PayoutStatus.FAILED
    assert order.released_to_seller > order.paid_out + order.payout_amount
    clock.advance(1)
    await asyncio.gather(escrow.sweep(SYSTEM), escrow.sweep(SYSTEM))
    after = (await escrow.get(SYSTEM, order.id)).order
    assert (after.payout_status, after.paid_out) == (PayoutStatus.FAILED, 0)
    assert gateway.paid == {}
    await _money_conserved(container, order)


class AmbiguousPayouts(GatedPayouts):
    """The first call under a key pays and its answer is lost (a timeout); later calls under
    that key are refused as a reuse with other parameters (the seller changed destination)."""

    def __init__(self) -> None:
        super().__init__()
        self.payout_calls: dict[str, int] = {}

    async def payout(self, request: PayoutRequest) -> Payout:
        self.payout_calls[request.payout_key] = self.payout_calls.get(request.payout_key, 0) + 1
        if self.payout_calls[request.payout_key] == 1:
            await super().payout(request)  # the money moves …
            raise GatewayTimeout("no answer")  # … and the answer is lost
        raise GatewayRejected("payout_key used for another payout", code="idempotency_mismatch")


async def test_a_refusal_that_only_says_the_key_was_used_is_not_a_failed_payout(
    container: Container, clock: FixedClock
) -> None:
    """A payout paid but unanswered, retried after the destination changed, is refused as a
    key reuse: that is not a failed payout (whose amount the next payout pays again) — it stays
    pending for an operator, and a re-resolution releasing more never pays the first amount
    twice."""
    gateway = AmbiguousPayouts()
    escrow = install(container, gateway)
    order = await _disputed_big(container, clock)
    order = await escrow.resolve(OPERATOR, order.id, refund_amount=1_100_000)
    assert order.payout_status is PayoutStatus.PENDING  # the answer was lost
    first = order.payout_amount
    clock.advance(60)
    with capture_logs() as logs:
        await escrow.sweep(SYSTEM)
        await escrow.sweep(SYSTEM)  # reminded each pass; reported at error once (an hour)
    order = (await escrow.get(SYSTEM, order.id)).order
    assert order.payout_status is PayoutStatus.PENDING, "an ambiguous refusal marked it failed"
    errors = [
        e for e in logs if e["event"] == "escrow.payout_ambiguous" and e["log_level"] == "error"
    ]
    assert len(errors) == 1
    # the lost answer, then the first sweep's call (answered ambiguously, recorded); the second
    # sweep no longer calls the gateway under that key (a gateway that forgets keys would pay)
    assert gateway.payout_calls[f"{order.id}.payout"] == 2
    await _reject_refund(container, order)
    order = await escrow.resolve(OPERATOR, order.id, refund_amount=400_000)
    clock.advance(60)
    await escrow.sweep(SYSTEM)
    assert sum(gateway.paid.values()) == first  # paid once; the rest waits for the operator
    assert order.payout_status is PayoutStatus.PENDING
    await _money_conserved(container, order)


# -- (3) a chargeback on the deposit before the close --------------------------------------------


def _terms(lot: str, deposit_intent: str) -> OrderTerms:
    return OrderTerms(
        lot_id=lot,
        seller_id="sel_seller",
        buyer_id="bid_buyer",
        currency="USD",
        hammer_price=100_000,
        buyer_premium_bps=2_500,
        seller_commission_bps=1_000,
        payment_window_s=3_600,
        inspection_period_s=600,
        deposit_intent_id=deposit_intent,
    )


async def _deposit_key(container: Container, deposit_intent: str) -> str:
    deposit, _ = await container.payments.get(deposit_intent)
    assert deposit.authorize_key is not None
    return deposit.authorize_key


async def _open(container: Container, terms: OrderTerms) -> Order:
    async with container.db.transaction() as uow:
        order_id = await open_order(uow, SYSTEM, terms)
    return (await container.escrow.get(SYSTEM, order_id)).order


async def test_a_chargeback_on_the_deposit_before_the_close_is_carried_to_the_order(
    container: Container, gateway: FakeGateway
) -> None:
    escrow, payments = container.escrow, container.payments
    lot = "lot_cb_before_close"
    deposit_intent = await make_deposit(container, "bid_buyer", lot, 20_000)
    key = await _deposit_key(container, deposit_intent)
    assert await payments.chargeback(SYSTEM, "sandbox", dispute(key, "dp_early", 5_000))
    order = await _open(container, _terms(lot, deposit_intent))
    assert order.chargebacks == {deposit_intent: 5_000}, "the deposit's chargeback was lost"
    view = await escrow.get(SYSTEM, order.id)
    [carried] = [e for e in view.timeline if e["event"] == "chargeback"]
    assert carried["details"]["carried"] is True
    # a redelivery after the close books nothing and records nothing
    assert not await payments.chargeback(SYSTEM, "sandbox", dispute(key, "dp_early", 5_000))
    assert (await escrow.get(SYSTEM, order.id)).order.chargeback_amount == 5_000
    # paid in full: frozen, as for a chargeback on the order's own payment before it was paid
    order, _ = await escrow.pay(BUYER, order.id, payment_method="tok_ok_rest")
    assert await balance(container, f"escrow:{order.id}") == order.total
    assert order.status is OrderStatus.DISPUTED
    assert order.dispute_reason == "chargeback"
    with pytest.raises(InvalidTransition):
        await escrow.accept(BUYER, order.id)
    with pytest.raises(RefundOutOfRange):
        await escrow.resolve(OPERATOR, order.id, refund_amount=4_999)
    order = await escrow.resolve(OPERATOR, order.id, refund_amount=5_000)
    assert order.status is OrderStatus.RELEASED
    assert order.chargeback_uncovered == 0
    assert sum(r.amount for r in gateway.refunds.values()) == 0  # the bank gave it back
    assert order.released_to_seller + order.released_to_revenue + 5_000 == order.total
    assert await balance(container, f"escrow:{order.id}") == 0
    assert await balance(container, "platform:chargebacks:USD") == 0
    await _money_conserved(container, order)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_deposit_chargeback_racing_the_close_is_carried(container: Container) -> None:
    """The booking's transaction is paused in the escrow hook (no order yet) while the lot
    close opens the order: the close waits for the booking and carries it."""
    install(container, FakeGateway())
    hook_gate = Gate()

    async def gated_hook(*args: Any) -> object:
        await hook_gate.pass_()
        return await escrow_chargeback(*args)

    container.payments.on_chargeback = gated_hook
    lot = "lot_cb_race_close"
    deposit_intent = await make_deposit(container, "bid_buyer", lot, 20_000)
    key = await _deposit_key(container, deposit_intent)
    hook_gate.arm()
    booking = asyncio.create_task(
        container.payments.chargeback(SYSTEM, "sandbox", dispute(key, "dp_race", 7_000))
    )
    await asyncio.wait_for(hook_gate.inside.wait(), _BARRIER_S)
    opening = asyncio.create_task(_open(container, _terms(lot, deposit_intent)))
    await asyncio.sleep(0.3)
    hook_gate.release.set()
    assert await booking is True
    order = await opening
    assert order.chargebacks == {deposit_intent: 7_000}, "the close missed the booking"
    await _money_conserved(container, order)

"""Cancelling a paid order never shipped, refunds after release, and resolving again after risk
review rejected a resolution's refund (docs/escrow.md, ADR 0012). SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from hammerlock.audit.model import Actor, Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.escrow.errors import InvalidTransition, RefundOutOfRange, RefundTooLarge
from hammerlock.escrow.model import Order, OrderStatus, PayoutStatus, RefundKind, refund_kind
from hammerlock.payments.model import RefundStatus
from tests.escrow.conftest import SYSTEM, open_test_order, party_ctx
from tests.escrow.test_escrow_flow import BUYER, OPERATOR, SELLER, balance
from tests.payments.fake_gateway import FakeGateway

REVIEWER = Context(actor=Actor(principal_id="rev_1", role="reviewer", key_id="key_rev_1"))


async def _paid(container: Container, **terms: int) -> Order:
    opened = await open_test_order(container, **terms)  # type: ignore[arg-type]
    order, _ = await container.escrow.pay(BUYER, opened.order_id, payment_method=None)
    assert order.status is OrderStatus.PAID
    return order


async def _released(container: Container, **terms: int) -> Order:
    order = await _paid(container, **terms)
    await container.escrow.ship(SELLER, order.id, carrier="dhl", tracking="1234567890")
    order = await container.escrow.accept(BUYER, order.id)
    assert order.status is OrderStatus.RELEASED
    assert order.payout_status is PayoutStatus.PAID
    return order


async def _refund_statuses(container: Container, order: Order) -> dict[str, RefundStatus]:
    return {
        key: (await container.payments.get_refund(refund_id)).status
        for key, refund_id in order.refund_ids.items()
    }


# -- cancel ------------------------------------------------------------------------------------


async def test_operator_cancels_a_paid_order_in_full(
    container: Container, gateway: FakeGateway
) -> None:
    order = await _paid(container, hammer=100_000, deposit=20_000)
    order = await container.escrow.cancel(OPERATOR, order.id, reason="seller unreachable")
    assert order.status is OrderStatus.REFUNDED
    assert order.refunded_amount == order.total == 125_000
    assert order.refunds_outstanding == 0
    assert {refund_kind(k) for k in order.refund_plan} == {RefundKind.CANCELLATION}
    assert set((await _refund_statuses(container, order)).values()) == {RefundStatus.SUCCEEDED}
    assert sum(r.amount for r in gateway.refunds.values()) == 125_000
    assert await balance(container, f"escrow:{order.id}") == 0
    assert await balance(container, f"deposit:bid_buyer:{order.lot_id}") == 0
    assert (order.released_to_seller, order.payout_status) == (0, PayoutStatus.NONE)
    view = await container.escrow.get(SYSTEM, order.id)
    canceled = [e for e in view.timeline if e["event"] == "canceled"]
    assert [e["details"]["reason"] for e in canceled] == ["seller unreachable"]


async def test_cancel_is_refused_once_shipped(container: Container, gateway: FakeGateway) -> None:
    del gateway
    order = await _paid(container)
    await container.escrow.ship(SELLER, order.id, carrier="dhl", tracking="1234567890")
    with pytest.raises(InvalidTransition):
        await container.escrow.cancel(OPERATOR, order.id, reason="too late")
    opened = await open_test_order(container)  # awaiting payment: nothing to cancel either
    with pytest.raises(InvalidTransition):
        await container.escrow.cancel(OPERATOR, opened.order_id, reason="no")


async def test_the_sweeper_cancels_an_order_not_shipped_in_time(
    container: Container, gateway: FakeGateway, clock: FixedClock
) -> None:
    del gateway
    escrow = container.escrow
    late = await _paid(container, hammer=50_000)
    shipped = await _paid(container, hammer=60_000)
    await escrow.ship(SELLER, shipped.id, carrier="dhl", tracking="1234567890")
    clock.advance(escrow.config.ship_window_s - 1)
    assert (await escrow.sweep(SYSTEM))["canceled"] == 0
    clock.advance(1)
    counts = await escrow.sweep(SYSTEM)
    assert counts["canceled"] == 1
    after = (await escrow.get(SYSTEM, late.id)).order
    assert after.status is OrderStatus.REFUNDED
    assert after.refunded_amount == after.total
    assert await balance(container, f"escrow:{late.id}") == 0
    assert (await escrow.get(SYSTEM, shipped.id)).order.status is not OrderStatus.REFUNDED


# -- refund after release ----------------------------------------------------------------------


async def test_refund_after_release_comes_from_the_contra_account(
    container: Container, gateway: FakeGateway
) -> None:
    escrow = container.escrow
    order = await _released(container, hammer=100_000, deposit=20_000)
    refunds_before = await balance(container, "platform:refunds:USD")
    seller_before = await balance(container, "seller:sel_seller:payable:USD")
    order = await escrow.refund_after_release(
        OPERATOR, order.id, amount=30_000, reason="arrived broken", request_key="r1"
    )
    assert order.status is OrderStatus.RELEASED
    assert order.refunded_amount == 30_000
    assert order.refunds_outstanding == 0
    assert {refund_kind(k) for k in order.refund_plan} == {RefundKind.AFTER_RELEASE}
    # the contra account absorbs it; escrow stays empty; the seller is not charged back
    assert await balance(container, "platform:refunds:USD") == refunds_before - 30_000
    assert await balance(container, f"escrow:{order.id}") == 0
    assert await balance(container, "seller:sel_seller:payable:USD") == seller_before
    assert sum(r.amount for r in gateway.refunds.values()) == 30_000
    # a retry of the same request is the same refund
    again = await escrow.refund_after_release(
        OPERATOR, order.id, amount=30_000, reason="arrived broken", request_key="r1"
    )
    assert again.refunded_amount == 30_000
    assert len(gateway.refunds) == 1
    # the rest: 95,000 left, spread over the rest's intent (105,000 - 30,000) and the deposit
    with pytest.raises(RefundTooLarge):
        await escrow.refund_after_release(
            OPERATOR, order.id, amount=95_001, reason="too much", request_key="r2"
        )
    order = await escrow.refund_after_release(
        OPERATOR, order.id, amount=95_000, reason="all of it", request_key="r3"
    )
    assert order.refunded_amount == order.total
    assert set((await _refund_statuses(container, order)).values()) == {RefundStatus.SUCCEEDED}
    assert sum(r.amount for r in gateway.refunds.values()) == 125_000
    assert await balance(container, "platform:refunds:USD") == refunds_before - 125_000
    view = await escrow.get(SYSTEM, order.id)
    assert [e["event"] for e in view.timeline].count("refunded_after_release") == 2


async def test_refund_after_release_only_for_released_orders(
    container: Container, gateway: FakeGateway
) -> None:
    del gateway
    order = await _paid(container)
    with pytest.raises(InvalidTransition):
        await container.escrow.refund_after_release(
            OPERATOR, order.id, amount=1, reason="no", request_key="x"
        )
    with pytest.raises(RefundOutOfRange):
        await container.escrow.refund_after_release(
            OPERATOR, order.id, amount=0, reason="no", request_key="y"
        )


# -- resolving again after risk review rejected the refund ------------------------------------


async def _disputed_big(container: Container, clock: FixedClock) -> Order:
    """A 1,250,000 order (its payment and any refund ≥ 1,000,000 need a risk review)."""
    escrow = container.escrow
    opened = await open_test_order(container, hammer=1_000_000)
    order, intent = await escrow.pay(BUYER, opened.order_id, payment_method=None)
    assert intent is not None
    assert intent.review_id is not None
    await container.payments.decide_review(REVIEWER, intent.review_id, approve=True, note=None)
    clock.advance(1)
    await escrow.sweep(SYSTEM)
    await escrow.ship(SELLER, order.id, carrier="dhl", tracking="1234567890")
    await escrow.confirm_delivery(BUYER, order.id)
    order = await escrow.dispute(BUYER, order.id, reason="fake")
    assert order.status is OrderStatus.DISPUTED
    return order


async def _reject_refund(container: Container, order: Order) -> None:
    for refund_id in order.refund_ids.values():
        refund = await container.payments.get_refund(refund_id)
        assert refund.status is RefundStatus.REQUIRES_REVIEW
        assert refund.review_id is not None
        await container.payments.decide_review(REVIEWER, refund.review_id, approve=False, note="no")


async def test_resolve_again_after_a_rejected_refund_releases_the_rest(
    container: Container, gateway: FakeGateway, clock: FixedClock
) -> None:
    escrow = container.escrow
    order = await _disputed_big(container, clock)
    order = await escrow.resolve(OPERATOR, order.id, refund_amount=1_100_000)
    assert order.status is OrderStatus.RELEASED
    await _reject_refund(container, order)
    # the refund's money is stuck in escrow until an operator resolves again
    assert await balance(container, f"escrow:{order.id}") == 1_100_000
    with pytest.raises(RefundOutOfRange):
        await escrow.resolve(OPERATOR, order.id, refund_amount=1_100_001)
    order = await escrow.resolve(OPERATOR, order.id, refund_amount=400_000)
    assert order.status is OrderStatus.RELEASED
    assert order.refunded_amount == 400_000
    assert await balance(container, f"escrow:{order.id}") == 0
    assert set((await _refund_statuses(container, order)).values()) == {RefundStatus.SUCCEEDED}
    # released and paid out as if 400,000 had been the first resolution's refund
    expected = await escrow.get(SYSTEM, order.id)
    assert order.released_to_seller + order.released_to_revenue + 400_000 == order.total
    assert order.paid_out == order.released_to_seller
    assert order.payout_status is PayoutStatus.PAID
    assert await balance(container, "seller:sel_seller:payable:USD") == 0
    assert sum(r.amount for r in gateway.refunds.values()) == 400_000
    assert [e["event"] for e in expected.timeline].count("reresolved") == 1
    # nothing left to resolve again
    with pytest.raises(InvalidTransition):
        await escrow.resolve(OPERATOR, order.id, refund_amount=400_000)


async def test_resolve_again_retries_a_full_refund(
    container: Container, gateway: FakeGateway, clock: FixedClock
) -> None:
    escrow = container.escrow
    order = await _disputed_big(container, clock)
    order = await escrow.resolve(OPERATOR, order.id, refund_amount=order.total)
    assert order.status is OrderStatus.REFUNDED
    await _reject_refund(container, order)
    with pytest.raises(InvalidTransition):  # a refunded order is never released afterwards
        await escrow.resolve(OPERATOR, order.id, refund_amount=order.total - 1)
    order = await escrow.resolve(OPERATOR, order.id, refund_amount=order.total)
    assert order.status is OrderStatus.REFUNDED
    statuses = await _refund_statuses(container, order)
    assert list(statuses.values()) == [RefundStatus.REQUIRES_REVIEW]  # reviewed again
    refund = await container.payments.get_refund(next(iter(order.refund_ids.values())))
    assert refund.review_id is not None
    await container.payments.decide_review(REVIEWER, refund.review_id, approve=True, note=None)
    assert (await container.payments.get_refund(refund.id)).status is RefundStatus.SUCCEEDED
    assert await balance(container, f"escrow:{order.id}") == 0
    assert sum(r.amount for r in gateway.refunds.values()) == order.total


async def test_a_party_cannot_cancel_or_refund(container: Container, gateway: FakeGateway) -> None:
    """The service methods trust the route's permission; the routes (role matrix) refuse the
    buyer and the seller. Here: a resolution needs a disputed or resolved order."""
    del gateway
    order = await _paid(container)
    with pytest.raises(InvalidTransition):
        await container.escrow.resolve(party_ctx("op_2", "operator"), order.id, refund_amount=0)

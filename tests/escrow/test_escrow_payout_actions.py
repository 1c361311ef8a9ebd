"""An operator settles the payouts the sweeper cannot (docs/escrow.md "Operator payout
actions"): retry a failed payout under a new key; mark a pending (ambiguous) one paid or failed
as the gateway shows it. Money: every seller is paid exactly what was released, once."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.escrow.errors import InvalidTransition
from hammerlock.escrow.model import Order, PayoutAction, PayoutStatus
from hammerlock.payments.gateways.base import Payout, PayoutRequest
from tests.escrow.conftest import SYSTEM, install, open_test_order
from tests.escrow.test_escrow_flow import BUYER, OPERATOR, SELLER, balance
from tests.escrow.test_escrow_money_gaps import AmbiguousPayouts, GatedPayouts, _money_conserved

_PAYABLE = "seller:sel_seller:payable:USD"


class AmbiguousFirstKey(AmbiguousPayouts):
    """Only an order's first payout key is ambiguous; a retry's new key is paid normally."""

    async def payout(self, request: PayoutRequest) -> Payout:
        if request.payout_key.endswith(".payout"):
            return await super().payout(request)
        return await GatedPayouts.payout(self, request)


async def _released(container: Container) -> Order:
    escrow = container.escrow
    opened = await open_test_order(container, hammer=100_000)
    order, _ = await escrow.pay(BUYER, opened.order_id, payment_method=None)
    await escrow.ship(SELLER, order.id, carrier="ups", tracking="1Z999AA10123456784")
    return await escrow.accept(BUYER, order.id)


async def _events(container: Container, order_id: str) -> list[dict[str, object]]:
    view = await container.escrow.get(SYSTEM, order_id)
    return list(view.timeline)


async def test_retry_pays_a_failed_payout_once_under_a_new_key(container: Container) -> None:
    gateway = GatedPayouts()
    escrow = install(container, gateway)
    opened = await _released_with_refusal(container, gateway)
    assert opened.payout_status is PayoutStatus.FAILED
    gateway.refuse.clear()  # the seller fixed the destination
    assert await balance(container, _PAYABLE) == opened.released_to_seller  # still payable
    with pytest.raises(InvalidTransition):  # nothing pending to mark
        await escrow.settle_payout(
            OPERATOR, opened.id, action=PayoutAction.MARK_PAID, reason="x", payout_id="po_1"
        )
    order = await escrow.settle_payout(
        OPERATOR, opened.id, action=PayoutAction.RETRY, reason="seller fixed the destination"
    )
    assert order.payout_status is PayoutStatus.PAID
    assert order.payout_key != opened.payout_key
    assert gateway.paid == {order.payout_key: opened.released_to_seller}
    assert order.paid_out == order.released_to_seller
    assert await balance(container, _PAYABLE) == 0
    retried = [e for e in await _events(container, order.id) if e["event"] == "payout_retried"]
    assert len(retried) == 1
    assert retried[0]["details"]["reason"] == "seller fixed the destination"  # type: ignore[index]
    with pytest.raises(InvalidTransition):  # paid: nothing to retry
        await escrow.settle_payout(OPERATOR, order.id, action=PayoutAction.RETRY, reason="again")
    await _money_conserved(container, order)


async def _released_with_refusal(container: Container, gateway: GatedPayouts) -> Order:
    """A released order whose payout the gateway refused (the key in ``refuse``), then lifted
    so a new key would be paid."""
    escrow = container.escrow
    opened = await open_test_order(container, hammer=100_000)
    gateway.refuse.add(f"{opened.order_id}.payout")
    order, _ = await escrow.pay(BUYER, opened.order_id, payment_method=None)
    await escrow.ship(SELLER, order.id, carrier="ups", tracking="1Z999AA10123456784")
    return await escrow.accept(BUYER, order.id)


async def test_mark_paid_books_what_the_gateway_paid_once(
    container: Container, clock: FixedClock
) -> None:
    """The gateway paid but its answer was lost, and the retry is refused as a key reuse: the
    payout stays pending until the operator, having found it at the gateway, marks it paid."""
    gateway = AmbiguousPayouts()
    escrow = install(container, gateway)
    order = await _released(container)
    assert order.payout_status is PayoutStatus.PENDING
    clock.advance(60)
    await escrow.sweep(SYSTEM)  # refused as a reuse: still pending
    assert (await escrow.get(SYSTEM, order.id)).order.payout_status is PayoutStatus.PENDING
    with pytest.raises(InvalidTransition):  # the gateway's id is required
        await escrow.settle_payout(OPERATOR, order.id, action=PayoutAction.MARK_PAID, reason="x")
    with pytest.raises(InvalidTransition):  # retry is for failed payouts
        await escrow.settle_payout(OPERATOR, order.id, action=PayoutAction.RETRY, reason="x")
    done = await escrow.settle_payout(
        OPERATOR,
        order.id,
        action=PayoutAction.MARK_PAID,
        reason="found po_lost at the gateway",
        payout_id="po_lost",
    )
    assert (done.payout_status, done.payout_id) == (PayoutStatus.PAID, "po_lost")
    assert done.paid_out == done.released_to_seller == sum(gateway.paid.values())
    assert await balance(container, _PAYABLE) == 0
    with pytest.raises(InvalidTransition):
        await escrow.settle_payout(
            OPERATOR, order.id, action=PayoutAction.MARK_PAID, reason="x", payout_id="po_lost"
        )
    clock.advance(60)
    await escrow.sweep(SYSTEM)
    assert sum(gateway.paid.values()) == done.released_to_seller  # never paid again
    await _money_conserved(container, done)


async def test_mark_failed_then_retry_pays_once(container: Container, clock: FixedClock) -> None:
    """The operator finds nothing paid under the ambiguous key: marked failed, the money stays
    payable, and a retry pays it under a new key — the old key is never called again."""
    gateway = AmbiguousFirstKey()
    escrow = install(container, gateway)
    order = await _released(container)
    first_key = order.payout_key
    gateway.paid.clear()  # the gateway shows nothing under the first key after all
    failed = await escrow.settle_payout(
        OPERATOR, order.id, action=PayoutAction.MARK_FAILED, reason="nothing at the gateway"
    )
    assert failed.payout_status is PayoutStatus.FAILED
    assert await balance(container, _PAYABLE) == failed.released_to_seller
    clock.advance(60)
    await escrow.sweep(SYSTEM)  # the sweeper leaves a failed payout alone
    calls_before = dict(gateway.payout_calls)
    paid = await escrow.settle_payout(
        OPERATOR, order.id, action=PayoutAction.RETRY, reason="pay it now"
    )
    assert paid.payout_status is PayoutStatus.PAID
    assert gateway.payout_calls[first_key or ""] == calls_before[first_key or ""]
    assert gateway.paid == {paid.payout_key: paid.released_to_seller}
    await _money_conserved(container, paid)


async def test_a_late_success_for_a_payout_marked_failed_is_reported(
    container: Container,
) -> None:
    """If the gateway answers paid for a key an operator marked failed, the order is not
    changed (the operator's word stands) but an error says a retry would pay twice."""
    gateway = AmbiguousPayouts()
    escrow = install(container, gateway)
    order = await _released(container)
    await escrow.settle_payout(
        OPERATOR, order.id, action=PayoutAction.MARK_FAILED, reason="looked wrong"
    )
    with capture_logs() as logs:
        after = await escrow._payout_done(  # the late answer, as the gateway call makes it
            SYSTEM, order.id, "sandbox", "po_late", None, key=order.payout_key or ""
        )
    assert after.payout_status is PayoutStatus.FAILED
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "escrow.payout_paid_after_marked_failed"
    ]

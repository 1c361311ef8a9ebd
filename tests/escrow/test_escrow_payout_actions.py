"""An operator settles the payouts the sweeper cannot (docs/escrow.md "Operator payout
actions"): retry a failed payout under a new key; mark a pending (ambiguous) one paid or failed
as the gateway shows it. Money: every seller is paid exactly what was released, once."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from structlog.testing import capture_logs

from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.escrow.errors import InvalidPayoutAction, InvalidTransition, PayoutLookupFailed
from hammerlock.escrow.model import Order, PayoutAction, PayoutStatus
from hammerlock.payments.gateways.base import GatewayUnavailable, Payout, PayoutRequest
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
    with pytest.raises(InvalidTransition):  # pending, never answered ambiguously: not yet
        await escrow.settle_payout(
            OPERATOR, order.id, action=PayoutAction.MARK_PAID, reason="x", payout_id="po_lost"
        )
    clock.advance(60)
    await escrow.sweep(SYSTEM)  # refused as a reuse: still pending, recorded ambiguous
    await escrow.sweep(SYSTEM)  # … once
    assert (await escrow.get(SYSTEM, order.id)).order.payout_status is PayoutStatus.PENDING
    ambiguous = [e for e in await _events(container, order.id) if e["event"] == "payout_ambiguous"]
    assert [e["details"] for e in ambiguous] == [  # type: ignore[index]
        {"key": order.payout_key, "code": "idempotency_mismatch"}
    ]
    with pytest.raises(InvalidPayoutAction):  # the gateway's id is required
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
    clock.advance(60)
    await escrow.sweep(SYSTEM)  # the ambiguous answer, recorded
    gateway.paid.clear()  # the gateway shows nothing under the first key after all
    with pytest.raises(InvalidPayoutAction):
        await escrow.settle_payout(
            OPERATOR, order.id, action=PayoutAction.MARK_FAILED, reason="x", payout_id="po_1"
        )
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


@pytest.mark.parametrize("retried", [False, True])
async def test_a_late_success_for_a_payout_marked_failed_is_recorded(
    container: Container, clock: FixedClock, retried: bool
) -> None:
    """If the gateway answers paid for a key an operator marked failed — before or after a
    retry moved the order to a new key — the order is not changed (the operator's word stands)
    but the order records it and an error says the seller may be paid twice."""
    gateway = AmbiguousFirstKey()
    escrow = install(container, gateway)
    order = await _released(container)
    clock.advance(60)
    await escrow.sweep(SYSTEM)
    await escrow.settle_payout(
        OPERATOR, order.id, action=PayoutAction.MARK_FAILED, reason="looked wrong"
    )
    if retried:
        again = await escrow.settle_payout(
            OPERATOR, order.id, action=PayoutAction.RETRY, reason="pay"
        )
        assert again.payout_status is PayoutStatus.PAID
    with capture_logs() as logs:
        after, applied = await escrow._payout_outcome(  # the late answer, as the call makes it
            SYSTEM, order.id, "sandbox", "po_late", None, key=order.payout_key or ""
        )
    assert not applied
    assert after.payout_status is (PayoutStatus.PAID if retried else PayoutStatus.FAILED)
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "escrow.payout_paid_after_marked_failed"
    ]
    late = [
        e
        for e in await _events(container, order.id)
        if e["event"] == "payout_paid_after_marked_failed"
    ]
    assert [e["details"] for e in late] == [  # type: ignore[index]
        {"key": order.payout_key, "payout": "po_late", "gateway": "sandbox"}
    ]


async def test_a_payout_in_flight_cannot_be_marked(container: Container) -> None:
    """(Review.) The payout's call hangs at the gateway: the order is pending, never answered
    ambiguously — marking it failed (then retrying) could pay the seller twice: refused."""
    gateway = GatedPayouts()
    escrow = install(container, gateway)
    opened = await open_test_order(container, hammer=100_000)
    order, _ = await escrow.pay(BUYER, opened.order_id, payment_method=None)
    await escrow.ship(SELLER, order.id, carrier="ups", tracking="1Z999AA10123456784")
    gateway.gate.arm()
    accepting = asyncio.create_task(escrow.accept(BUYER, order.id))
    try:
        await asyncio.wait_for(gateway.gate.inside.wait(), 5)
        for action in (PayoutAction.MARK_FAILED, PayoutAction.MARK_PAID):
            with pytest.raises(InvalidTransition):
                await escrow.settle_payout(
                    OPERATOR,
                    order.id,
                    action=action,
                    reason="nothing seen",
                    payout_id="po_1" if action is PayoutAction.MARK_PAID else None,
                )
    finally:
        gateway.gate.release.set()
    done = await asyncio.wait_for(accepting, 5)
    assert done.payout_status is PayoutStatus.PAID
    assert sum(gateway.paid.values()) == done.released_to_seller


def _shown(events: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in events if (e.get("details") or {}).get("found_at_gateway")]  # type: ignore[union-attr]


async def test_an_ambiguous_payout_the_gateway_shows_is_settled_without_an_operator(
    container: Container, clock: FixedClock
) -> None:
    """Paid, the answer lost, the retry refused as a key reuse: the gateway shows the payout
    under its key, so the order is settled paid with the gateway's id — no operator, no second
    payout."""
    gateway = AmbiguousPayouts()
    gateway.lookups = True
    escrow = install(container, gateway)
    order = await _released(container)
    assert order.payout_status is PayoutStatus.PENDING  # the answer was lost
    clock.advance(60)
    await escrow.sweep(SYSTEM)
    done = (await escrow.get(SYSTEM, order.id)).order
    assert (done.payout_status, done.payout_id) == (PayoutStatus.PAID, "po_1")
    assert done.paid_out == done.released_to_seller == sum(gateway.paid.values())
    assert gateway.payout_calls == {order.payout_key: 2}  # the lost one and the refused one
    events = await _events(container, order.id)
    assert len(_shown(events)) == 1
    # recorded before the gateway was asked: no process calls the key again meanwhile
    assert [e["event"] for e in events].count("payout_ambiguous") == 1
    assert await balance(container, _PAYABLE) == 0
    clock.advance(60)
    await escrow.sweep(SYSTEM)
    assert gateway.payout_calls == {order.payout_key: 2}
    await _money_conserved(container, done)


async def test_a_payout_recorded_ambiguous_is_settled_once_the_gateway_shows_it(
    container: Container, clock: FixedClock
) -> None:
    gateway = AmbiguousPayouts()  # lookups off: the gateway cannot show it yet
    escrow = install(container, gateway)
    order = await _released(container)
    clock.advance(60)
    await escrow.sweep(SYSTEM)
    events = await _events(container, order.id)
    assert [e["event"] for e in events].count("payout_ambiguous") == 1
    gateway.lookups = True  # e.g. a gateway that indexes payouts by key after a delay
    clock.advance(60)
    await escrow.sweep(SYSTEM)  # asked a minute ago: not again yet (once every 5 minutes)
    assert (await escrow.get(SYSTEM, order.id)).order.payout_status is PayoutStatus.PENDING
    escrow._looked_up.clear()  # (monotonic time, not the test's clock): 5 minutes later
    await escrow.sweep(SYSTEM)
    done = (await escrow.get(SYSTEM, order.id)).order
    assert (done.payout_status, done.payout_id) == (PayoutStatus.PAID, "po_1")
    assert gateway.payout_calls == {order.payout_key: 2}  # never called again once ambiguous
    assert len(_shown(await _events(container, order.id))) == 1
    await _money_conserved(container, done)


async def test_a_payout_shown_with_another_amount_is_left_to_an_operator(
    container: Container, clock: FixedClock
) -> None:
    gateway = AmbiguousPayouts()
    gateway.lookups = True
    escrow = install(container, gateway)
    order = await _released(container)
    shown = gateway.made_payouts[order.payout_key or ""]
    gateway.made_payouts[order.payout_key or ""] = Payout(
        shown.gateway, shown.payout_key, shown.payout_id, shown.amount - 1, shown.currency, "paid"
    )
    clock.advance(60)
    with capture_logs() as logs:
        await escrow.sweep(SYSTEM)
    assert any(entry["event"] == "escrow.payout_lookup_mismatch" for entry in logs)
    after = (await escrow.get(SYSTEM, order.id)).order
    assert after.payout_status is PayoutStatus.PENDING
    assert await balance(container, _PAYABLE) == after.released_to_seller
    assert [e["event"] for e in await _events(container, order.id)].count("payout_ambiguous") == 1


async def test_mark_failed_is_refused_while_the_gateway_shows_the_payout_paid(
    container: Container, clock: FixedClock
) -> None:
    """The operator would mark failed (and retry) a payout the gateway did pay: refused, with
    the gateway's id to mark it paid instead — the seller is never paid twice."""
    gateway = AmbiguousPayouts()  # the sweeper cannot look it up…
    escrow = install(container, gateway)
    order = await _released(container)
    clock.advance(60)
    await escrow.sweep(SYSTEM)  # recorded ambiguous
    gateway.lookups = True  # … but the operator's action asks the gateway itself
    with pytest.raises(InvalidTransition, match="po_1"):
        await escrow.settle_payout(
            OPERATOR, order.id, action=PayoutAction.MARK_FAILED, reason="looked wrong"
        )
    after = (await escrow.get(SYSTEM, order.id)).order
    assert after.payout_status is PayoutStatus.PENDING
    done = await escrow.settle_payout(
        OPERATOR, order.id, action=PayoutAction.MARK_PAID, reason="shown", payout_id="po_1"
    )
    assert done.payout_status is PayoutStatus.PAID
    assert sum(gateway.paid.values()) == done.released_to_seller
    await _money_conserved(container, done)


class _LookupDown(AmbiguousPayouts):
    async def find_payout(self, payout_key: str) -> Payout | None:  # noqa: ARG002
        raise GatewayUnavailable("the gateway's API is down")


@pytest.mark.parametrize("shown", ["paid", "duplicate", "partly_reversed", "down"])
async def test_mark_failed_needs_the_gateways_word_that_nothing_reached_the_seller(
    container: Container, clock: FixedClock, shown: str
) -> None:
    gateway = _LookupDown() if shown == "down" else AmbiguousPayouts()
    escrow = install(container, gateway)
    order = await _released(container)
    clock.advance(60)
    await escrow.sweep(SYSTEM)  # recorded ambiguous (the sweeper's lookups are off)
    if shown != "down":
        made = gateway.made_payouts[order.payout_key or ""]
        gateway.made_payouts[order.payout_key or ""] = dataclasses.replace(made, status=shown)
        gateway.lookups = True
    expected = PayoutLookupFailed if shown == "down" else InvalidTransition
    with pytest.raises(expected):
        await escrow.settle_payout(
            OPERATOR, order.id, action=PayoutAction.MARK_FAILED, reason="looked wrong"
        )
    assert (await escrow.get(SYSTEM, order.id)).order.payout_status is PayoutStatus.PENDING


async def test_mark_failed_goes_through_for_a_payout_wholly_reversed(
    container: Container, clock: FixedClock
) -> None:
    gateway = AmbiguousPayouts()
    escrow = install(container, gateway)
    order = await _released(container)
    clock.advance(60)
    await escrow.sweep(SYSTEM)
    made = gateway.made_payouts[order.payout_key or ""]
    gateway.made_payouts[order.payout_key or ""] = dataclasses.replace(made, status="reversed")
    gateway.lookups = True
    failed = await escrow.settle_payout(
        OPERATOR, order.id, action=PayoutAction.MARK_FAILED, reason="reversed at the gateway"
    )
    assert failed.payout_status is PayoutStatus.FAILED

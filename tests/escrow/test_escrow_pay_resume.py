"""A pay whose request stopped half-way is finished by the sweeper (the deposit's part), and one
order's failing step does not hold up the sweeper's other work."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.db.queues import Cursors, Key
from hammerlock.escrow import storage as escrow_storage
from hammerlock.escrow.model import OrderStatus
from hammerlock.escrow.service import _LIVE_DEPOSIT, Escrow
from hammerlock.payments.model import IntentStatus
from tests.escrow.conftest import SYSTEM, Opened, open_test_order, party_ctx
from tests.escrow.test_escrow_flow import balance
from tests.payments.fake_gateway import FakeGateway

BUYER = party_ctx("bid_buyer", "bidder")
SELLER = party_ctx("sel_seller", "seller")


class Died(Exception):
    """The process stopped here."""


def die_once(monkeypatch: pytest.MonkeyPatch, escrow: Escrow, name: str) -> None:
    """``escrow.<name>`` raises on its next call, as if the process died there."""
    real = getattr(escrow, name)

    async def dies(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(escrow, name, real)
        raise Died(name)

    monkeypatch.setattr(escrow, name, dies)


async def pay_dies_at(
    container: Container, monkeypatch: pytest.MonkeyPatch, name: str, **order: Any
) -> Opened:
    """An order (``open_test_order(**order)``) whose buyer's pay died at ``escrow.<name>``,
    after ``payment_requested`` was recorded."""
    opened = await open_test_order(container, **order)
    die_once(monkeypatch, container.escrow, name)
    with pytest.raises(Died):
        await container.escrow.pay(BUYER, opened.order_id, payment_method=None)
    return opened


async def test_sweeper_takes_the_deposit_of_a_pay_that_stopped_before_it(
    container: Container, gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    del gateway
    escrow = container.escrow
    opened = await pay_dies_at(
        container, monkeypatch, "_take_deposit", hammer=100_000, deposit=20_000
    )
    order = (await escrow.get(SYSTEM, opened.order_id)).order
    assert order.deposit_in_escrow == 0
    assert order.deposit_intent_id is not None
    deposit, _ = await container.payments.get(order.deposit_intent_id)
    assert deposit.status is IntentStatus.REQUIRES_CAPTURE

    counts = await escrow.sweep(SYSTEM)
    assert counts["resumed"] == 1
    assert counts["failed"] == 0
    order = (await escrow.get(SYSTEM, opened.order_id)).order
    assert order.status is OrderStatus.AWAITING_PAYMENT
    assert order.deposit_in_escrow == 20_000
    assert order.payment_intent_id is None  # the rest is the buyer's to retry
    assert await balance(container, f"escrow:{order.id}") == 20_000
    assert await balance(container, f"deposit:bid_buyer:{opened.terms.lot_id}") == 0
    assert (await escrow.sweep(SYSTEM))["resumed"] == 0  # nothing left to resume

    paid, intent = await escrow.pay(BUYER, order.id, payment_method=None)
    assert intent is not None
    assert intent.amount == 125_000 - 20_000
    assert paid.status is OrderStatus.PAID
    assert await balance(container, f"escrow:{order.id}") == 125_000


async def test_sweeper_marks_paid_a_pay_that_stopped_after_the_deposit_covered_it(
    container: Container, gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    del gateway
    escrow = container.escrow
    opened = await pay_dies_at(
        container, monkeypatch, "_charge_rest", hammer=10_000, deposit=20_000
    )  # total 12,500
    order = (await escrow.get(SYSTEM, opened.order_id)).order
    assert (order.status, order.deposit_in_escrow) == (OrderStatus.AWAITING_PAYMENT, 12_500)

    assert (await escrow.sweep(SYSTEM))["resumed"] == 1
    order = (await escrow.get(SYSTEM, opened.order_id)).order
    assert order.status is OrderStatus.PAID
    assert await balance(container, f"escrow:{order.id}") == 12_500


async def test_sweeper_leaves_a_deposit_alone_while_no_pay_was_asked_for(
    container: Container, gateway: FakeGateway
) -> None:
    del gateway
    opened = await open_test_order(container, hammer=100_000, deposit=20_000)
    assert (await container.escrow.sweep(SYSTEM))["resumed"] == 0
    order = (await container.escrow.get(SYSTEM, opened.order_id)).order
    assert order.deposit_in_escrow == 0
    assert order.deposit_intent_id is not None
    deposit, _ = await container.payments.get(order.deposit_intent_id)
    assert deposit.status is IntentStatus.REQUIRES_CAPTURE


async def test_one_failing_order_does_not_hold_up_the_sweep(
    container: Container,
    gateway: FakeGateway,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    del gateway
    escrow = container.escrow
    stuck = await pay_dies_at(
        container, monkeypatch, "_take_deposit", hammer=100_000, deposit=20_000
    )
    shipped = await open_test_order(container, hammer=50_000)
    await escrow.pay(BUYER, shipped.order_id, payment_method=None)
    await escrow.ship(SELLER, shipped.order_id, carrier="ups", tracking="1Z999AA10123456784")
    await escrow.confirm_delivery(BUYER, shipped.order_id)
    clock.advance(601)  # the inspection period is over

    broken = await open_test_order(container, hammer=70_000)
    await escrow.pay(BUYER, broken.order_id, payment_method=None)
    await escrow.ship(SELLER, broken.order_id, carrier="ups", tracking="1Z999AA10123456784")
    await escrow.confirm_delivery(BUYER, broken.order_id)
    clock.advance(601)
    real_timer = escrow._timer

    async def timer(ctx: Any, order_id: str, event: Any) -> int:
        if order_id == broken.order_id:
            raise RuntimeError("a broken row")
        return await real_timer(ctx, order_id, event)

    monkeypatch.setattr(escrow, "_timer", timer)
    die_once(monkeypatch, escrow, "_resume_pay")  # the first queue's only order fails too

    counts = await escrow.sweep(SYSTEM)
    assert counts["failed"] == 2
    assert counts["released"] == 1
    assert (await escrow.get(SYSTEM, shipped.order_id)).order.status is OrderStatus.RELEASED
    assert (await escrow.get(SYSTEM, broken.order_id)).order.status is OrderStatus.DELIVERED
    # the next pass takes the order whose step failed once
    counts = await escrow.sweep(SYSTEM)
    assert counts["resumed"] == 1
    assert (await escrow.get(SYSTEM, stuck.order_id)).order.deposit_in_escrow == 20_000


async def test_a_pay_finding_the_deposit_captured_under_it_goes_on(
    container: Container, gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweeper resuming a pay (or a second pay) captured the deposit between this pay's read
    and its capture: the capture is refused, and the pay goes on from the captured deposit."""
    del gateway
    escrow, payments = container.escrow, container.payments
    opened = await open_test_order(container, hammer=100_000, deposit=20_000)
    order = (await escrow.get(SYSTEM, opened.order_id)).order
    assert order.deposit_intent_id is not None
    stale = await payments.get(order.deposit_intent_id)
    await payments.capture(SYSTEM, order.deposit_intent_id, amount_to_capture=None)
    real_get = payments.get
    served_stale = False

    async def get(intent_id: str) -> Any:
        nonlocal served_stale
        if intent_id == order.deposit_intent_id and not served_stale:
            served_stale = True
            return stale
        return await real_get(intent_id)

    monkeypatch.setattr(payments, "get", get)
    paid, intent = await escrow.pay(BUYER, order.id, payment_method=None)
    assert served_stale
    assert intent is not None
    assert intent.amount == 125_000 - 20_000
    assert paid.status is OrderStatus.PAID
    assert paid.deposit_in_escrow == 20_000
    assert await balance(container, f"escrow:{order.id}") == 125_000


async def test_after_the_deadline_the_sweeper_leaves_an_interrupted_pay_to_the_default(
    container: Container,
    gateway: FakeGateway,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    del gateway
    escrow = container.escrow
    opened = await pay_dies_at(
        container, monkeypatch, "_take_deposit", hammer=10_000, deposit=20_000, window_s=3_600
    )
    clock.advance(3_601)
    order = (await escrow.get(SYSTEM, opened.order_id)).order
    assert await escrow._resume_pay(SYSTEM, order.id) == 0  # even when called directly
    counts = await escrow.sweep(SYSTEM)
    assert counts["resumed"] == 0
    assert counts["defaulted"] == 1
    order = (await escrow.get(SYSTEM, opened.order_id)).order
    assert order.status is OrderStatus.DEFAULTED
    assert await balance(container, "platform:penalties:USD") == 20_000
    assert await balance(container, f"deposit:bid_buyer:{opened.terms.lot_id}") == 0


async def test_a_pay_racing_a_default_that_seized_the_whole_deposit_leaves_it_the_penalty(
    container: Container,
    gateway: FakeGateway,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Node B's default captured the whole 20,000 deposit (more than the 12,500 total); node
    A's pay, which read the deposit before, must neither move 12,500 of it into escrow (the
    order would turn paid and 7,500 would be stranded in the deposit account) nor charge a rest
    on the card: the whole deposit is the penalty."""
    del gateway
    escrow = container.escrow
    opened = await pay_dies_at(
        container, monkeypatch, "_take_deposit", hammer=10_000, deposit=20_000, window_s=3_600
    )
    order = (await escrow.get(SYSTEM, opened.order_id)).order
    clock.advance(3_601)
    assert await escrow._seize_deposit(SYSTEM, order) == 20_000  # node B, mid-default
    taken = await escrow._take_deposit(BUYER, order)  # node A, from its earlier read
    assert taken.deposit_in_escrow == 0
    assert await escrow._charge_rest(BUYER, taken, None) is None
    assert (await escrow.get(SYSTEM, order.id)).order.payment_intent_id is None
    after = await escrow.default(SYSTEM, order.id)  # node B goes on
    assert after.status is OrderStatus.DEFAULTED
    assert await balance(container, "platform:penalties:USD") == 20_000
    assert await balance(container, f"deposit:bid_buyer:{opened.terms.lot_id}") == 0
    assert await balance(container, f"escrow:{order.id}") == 0


async def test_an_interrupted_pay_whose_deposit_is_dead_never_enters_the_queue(
    container: Container, gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    del gateway
    escrow = container.escrow
    opened = await pay_dies_at(
        container, monkeypatch, "_take_deposit", hammer=100_000, deposit=20_000
    )
    order = (await escrow.get(SYSTEM, opened.order_id)).order
    assert order.deposit_intent_id is not None
    await container.payments.cancel(SYSTEM, order.deposit_intent_id, reason="abandoned")
    now = container.db.clock.now_us()
    async with container.db.read() as uow:
        queued = await escrow_storage.ids_where(
            uow,
            escrow_storage.pay_interrupted(now, now, "payment_requested", _LIVE_DEPOSIT),
            limit=10,
        )
    assert queued == []
    # ...and what the sweeper itself reads for that queue, with its own arguments.
    read_for: dict[str, list[Key]] = {}
    original = Cursors.read

    def spy(self: Cursors, queue: str, keys: list[Key], limit: int, *, now: Any = None) -> None:
        read_for.setdefault(queue, []).extend(keys)
        original(self, queue, keys, limit, now=now)

    monkeypatch.setattr(Cursors, "read", spy)
    counts = await escrow.sweep(SYSTEM)
    assert counts["resumed"] == 0
    assert counts["failed"] == 0
    assert order.id not in {order_id for _, order_id in read_for["interrupted"]}


async def test_buyers_who_left_their_challenge_do_not_starve_the_sweeper(
    container: Container, gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orders whose buyer left the 3-D Secure challenge stay awaiting payment (until the
    deadline) and are the oldest in the sweeper's queue; with more of them than a page, an
    order paid after them is still marked paid (the queue is read round-robin: db.queues)."""
    escrow = container.escrow
    monkeypatch.setattr(escrow, "config", dataclasses.replace(escrow.config, sweep_batch=2))
    for _ in range(5):  # abandoned: more than two pages
        left = await open_test_order(container, hammer=10_000, card="tok_3ds")
        _, waiting = await escrow.pay(BUYER, left.order_id, payment_method=None)
        assert waiting is not None
        assert waiting.status is IntentStatus.REQUIRES_ACTION
    opened = await open_test_order(container, hammer=10_000, card="tok_3ds")
    _, intent = await escrow.pay(BUYER, opened.order_id, payment_method=None)
    assert intent is not None
    [key] = [k for k in gateway.charges if k.startswith(intent.id)]
    gateway.complete_challenge(key, passed=True)
    await container.payments.janitor_pass(SYSTEM)
    for _ in range(3):  # ⌈6 / 2⌉ passes reach every waiting order
        await escrow.sweep(SYSTEM)
    assert (await escrow.get(SYSTEM, opened.order_id)).order.status is OrderStatus.PAID

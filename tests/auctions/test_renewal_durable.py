"""Deposit renewals are recorded in ``deposit_renewals`` before the gateway is asked (ADR 0019):
what a process learns about a renewal survives its restart, and any process finishes what
another left half done.

"A restart" here is a fresh :class:`Auctions` over the same database and payments: it has none
of the first one's memory, which is all a restart keeps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from hammerlock.auctions import storage as auction_storage
from hammerlock.auctions.model import RenewalState
from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock, format_rfc3339
from hammerlock.webhooks import service as webhooks
from tests.auctions.conftest import Market
from tests.auctions.deposit_support import (
    deposit_intents,
    held_intents,
    lot_with_deposit,
    order_of,
    renewal_attempts,
    restarted,
    wire,
)
from tests.payments.fake_gateway import FakeGateway

SYSTEM = Context.system("tests.renewal_durable")
_DAY = 86_400


async def test_a_processing_renewal_is_voided_by_a_restarted_process(
    market: Market, container: Container, clock: FixedClock, gateway: FakeGateway
) -> None:
    """The renewal's answer is lost (``processing``), the process restarts, the lot closes
    unsold (the deposit row moves on): the restarted process voids the renewal."""
    wire(container, gateway)
    lot, _, _ = await lot_with_deposit(market, clock, days=4.5)
    clock.advance(4.1 * _DAY)
    gateway.faults.add("timeout_after_charge")
    assert await container.auctions.renew_deposits(SYSTEM) == 0
    [attempt] = await renewal_attempts(container)
    assert attempt.state is RenewalState.OPEN
    assert attempt.intent_id is not None

    fresh = restarted(container.auctions)
    clock.advance(0.4 * _DAY + 1)
    fresh.renewed_us = clock.now_us()  # the close's pass does not scan renewals
    assert (await fresh.scheduler_pass(SYSTEM))["closed"] == 1
    for _ in range(2):
        await container.payments.janitor_pass(SYSTEM)  # the gateway did authorize it
        clock.advance(120)
        await fresh.scheduler_pass(SYSTEM)
    assert await held_intents(container, lot["id"]) == []
    [attempt] = await renewal_attempts(container)
    assert attempt.state is RenewalState.DONE


async def test_a_declined_renewal_is_tried_again_after_a_restart_and_not_before_its_time(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wire(container, gateway)
    lot, a, first = await lot_with_deposit(market, clock, days=6)
    clock.advance(4.1 * _DAY)
    real_create = container.payments.create

    async def declined(ctx: Context, new: Any, **kw: Any) -> Any:
        return await real_create(ctx, dataclasses.replace(new, payment_method="tok_decline"), **kw)

    monkeypatch.setattr(container.payments, "create", declined)
    assert await container.auctions.renew_deposits(SYSTEM) == 0
    monkeypatch.setattr(container.payments, "create", real_create)  # the card is fine again
    [attempt] = await renewal_attempts(container)
    assert attempt.state is RenewalState.DECLINED
    assert attempt.retry_at_us == clock.now_us() + 6 * 3_600 * 1_000_000
    # the marketplace is told, in the decline's transaction, so it can ask for another card
    async with container.db.read() as uow:
        page = await webhooks.list_events(
            uow, cursor=None, limit=10, event_type="deposit.renewal_declined"
        )
        [event] = [await webhooks.get_event(uow, item.id) for item in page.items]
    data = event.payload["data"]
    assert data["id"] == attempt.deposit_id
    assert data["lot_id"] == lot["id"]
    assert data["bidder_id"] == a.id
    assert data["renewal"]["status"] == "requires_payment_method"
    assert data["renewal"]["next_try"] == format_rfc3339(attempt.retry_at_us)
    first_intent, _ = await container.payments.get(first)
    assert first_intent.authorization_expires_us is not None
    assert data["authorization_expires"] == format_rfc3339(first_intent.authorization_expires_us)

    fresh = restarted(container.auctions)
    clock.advance(3_600)
    intents = len(await deposit_intents(container, lot["id"]))
    assert await fresh.renew_deposits(SYSTEM) == 0  # not yet: no new authorization asked for
    assert len(await deposit_intents(container, lot["id"])) == intents
    clock.advance(5 * 3_600 + 1)
    assert await fresh.renew_deposits(SYSTEM) == 1
    async with container.db.read() as uow:
        [deposit] = await auction_storage.deposits_of(uow, lot["id"], a.id)
    assert await held_intents(container, lot["id"]) == [deposit.payment_intent]
    assert deposit.payment_intent != first
    assert [x.state for x in await renewal_attempts(container)] == [
        RenewalState.DECLINED,
        RenewalState.DONE,
    ]


async def test_a_crash_between_the_swap_and_the_void_is_finished_after_a_restart(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The swap committed, then the process died before voiding the old authorization: both
    were held on the card. A restarted process voids the old one."""
    wire(container, gateway)
    lot, a, first = await lot_with_deposit(market, clock, days=6)
    clock.advance(4.1 * _DAY)
    crashing = container.auctions

    async def crash(*_: Any, **__: Any) -> bool:
        raise RuntimeError("the process dies here")

    monkeypatch.setattr(crashing, "_finish_swap", crash)
    assert await crashing.renew_deposits(SYSTEM) == 0  # the error is logged, the pass goes on
    assert len(await held_intents(container, lot["id"])) == 2
    [attempt] = await renewal_attempts(container)
    assert attempt.state is RenewalState.SWAPPED

    fresh = restarted(container.auctions)
    clock.advance(120)
    await fresh.renew_deposits(SYSTEM)
    async with container.db.read() as uow:
        [deposit] = await auction_storage.deposits_of(uow, lot["id"], a.id)
    assert deposit.payment_intent != first
    assert await held_intents(container, lot["id"]) == [deposit.payment_intent]
    [attempt] = await renewal_attempts(container)
    assert attempt.state is RenewalState.DONE


async def test_a_crash_inside_the_undo_is_finished_after_a_restart(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pay captured the old authorization between the renewal's swap and its void; the
    renewal's undo points the deposit and the order back at it, then the process dies before
    voiding the renewal. A restarted process voids it: the buyer's card is not held twice."""
    escrow = wire(container, gateway)
    auctions = container.auctions
    real_void = auctions._void
    captured: list[str] = []

    async def void(ctx: Context, intent_id: str) -> Any:
        intent, _ = await container.payments.get(intent_id)
        if not captured and intent.status.value == "requires_capture":
            order_of_lot = await order_of(container, intent.metadata["lot_id"])
            if order_of_lot["deposit_intent_id"] != intent_id:  # the old one, after the swap
                await container.payments.capture(SYSTEM, intent_id, amount_to_capture=10_000)
                captured.append(intent_id)
        elif captured and intent_id != captured[0]:
            raise RuntimeError("the process dies before voiding the renewal")
        return await real_void(ctx, intent_id)

    monkeypatch.setattr(auctions, "_void", void)
    lot, bidder, _ = await lot_with_deposit(market, clock, days=4, reserve=10_000)
    assert (await market.bid(lot["id"], bidder, 50_000)).status_code == 201
    clock.advance(4 * _DAY + 1)
    counts = await auctions.scheduler_pass(SYSTEM)
    assert counts["closed"] == 1
    order = await order_of(container, lot["id"])
    [attempt] = [x for x in await renewal_attempts(container) if x.state is RenewalState.UNDONE]
    assert order["deposit_intent_id"] == attempt.old_intent == captured[0]
    assert attempt.intent_id in await held_intents(container, lot["id"])

    fresh = restarted(auctions)
    fresh.payments = container.payments
    clock.advance(120)
    await fresh.renew_deposits(SYSTEM)
    assert attempt.intent_id not in await held_intents(container, lot["id"])
    [done] = [x for x in await renewal_attempts(container) if x.intent_id == attempt.intent_id]
    assert done.state is RenewalState.DONE
    paid, _ = await escrow.pay(SYSTEM, order["id"], payment_method=None)
    assert paid.status.value == "paid"
    assert paid.deposit_intent_id == captured[0]


async def test_an_attempt_whose_gateway_call_never_happened_is_closed_once_the_row_moved_on(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Recorded, then the process died before payments recorded anything: no authorization
    exists. Once the deposit row moved on and the attempt is ten minutes old it is closed."""
    wire(container, gateway)
    lot, _, _ = await lot_with_deposit(market, clock, days=4.5)
    clock.advance(4.1 * _DAY)

    async def dies(*_: Any, **__: Any) -> Any:
        raise RuntimeError("the process dies before the gateway call")

    monkeypatch.setattr(container.payments, "create", dies)
    assert await container.auctions.renew_deposits(SYSTEM) == 0
    monkeypatch.undo()
    [attempt] = await renewal_attempts(container)
    assert (attempt.state, attempt.intent_id) == (RenewalState.OPEN, None)

    fresh = restarted(container.auctions)
    clock.advance(0.4 * _DAY + 1)
    fresh.renewed_us = clock.now_us()
    assert (await fresh.scheduler_pass(SYSTEM))["closed"] == 1  # unsold: the row moves on
    fresh.renewed_us = 0
    await fresh.scheduler_pass(SYSTEM)
    [attempt] = await renewal_attempts(container)
    assert attempt.state is RenewalState.DONE  # the close was ~9.6 h after the attempt
    assert await held_intents(container, lot["id"]) == []

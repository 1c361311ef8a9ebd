"""Review s6d: renewal keys by row version, ``renew_retry``, the scheduler's (time, id) cursor.

Each test here demonstrates a bug found in review: it fails on the code it was written against.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from hammerlock.auctions import storage as auction_storage
from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock, format_rfc3339
from tests.auctions.conftest import Market
from tests.auctions.deposit_support import deposit_intents, make_deposit, order_of, wire
from tests.payments.fake_gateway import FakeGateway

SYSTEM = Context.system("tests.review_s6d")
_DAY = 86_400


async def _held(container: Container, lot_id: str) -> list[str]:
    intents = await deposit_intents(container, lot_id)
    return [i.id for i in intents if i.status.value == "requires_capture"]


# -- 1. a renewal answered "processing" at version v is orphaned once the row moves to v+1 ------


async def test_a_processing_renewal_is_not_left_held_once_the_close_moved_the_row_on(
    market: Market, container: Container, clock: FixedClock, gateway: FakeGateway
) -> None:
    """The renewal of the winner's held deposit (row version v, key ``…:v{v}``) reaches the
    gateway, which authorizes it, but the answer is lost: ``processing``; ``_renew_one``
    leaves it "for the next pass under the same key". The lot closes before that pass:
    ``_keep_deposit`` writes the row (HELD, v) → (KEPT, v+1), still on the first authorization.
    The janitor drives the processing intent: ``requires_capture``. The next renewal pass reads
    version v+1, so its key is ``…:v{v+1}``: a third authorization, swapped in; the one made
    under ``…:v{v}`` is never looked at again. The winner's card holds the deposit twice; the
    orphan stays until the janitor expires it days later."""
    wire(container, gateway)
    auctions = container.auctions
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    lot = await market.lot(
        seller,
        estimate=2_000_000,
        reserve_price=10_000,
        ends_at=format_rfc3339(clock.now_us() + int(4.5 * _DAY) * 1_000_000),
    )
    first = (await make_deposit(market, lot["id"], a))["payment_intent"]["id"]
    assert (await market.bid(lot["id"], a, 50_000)).status_code == 201

    clock.advance(4.1 * _DAY)  # within a day of the first authorization's lapse, lot still open
    gateway.faults.add("timeout_after_charge")  # the renewal's authorize: done, answer lost
    assert await auctions.renew_deposits(SYSTEM) == 0  # left "processing" for the next pass

    clock.advance(0.4 * _DAY + 1)
    auctions.renewed_us = clock.now_us()  # the close's pass does not scan renewals
    assert (await auctions.scheduler_pass(SYSTEM))["closed"] == 1
    await container.payments.janitor_pass(SYSTEM)  # resolves the processing renewal
    clock.advance(120)
    assert await auctions.renew_deposits(SYSTEM) == 1  # key …:v{v+1}: a new authorization

    order = await order_of(container, lot["id"])
    assert order["deposit_intent_id"] != first
    # What goes wrong: the renewal made under version v is still held, pointed at by nothing.
    assert await _held(container, lot["id"]) == [order["deposit_intent_id"]]


async def test_a_processing_renewal_is_not_left_held_once_the_lot_closed_unsold(
    market: Market, container: Container, clock: FixedClock, gateway: FakeGateway
) -> None:
    """The same for a loser's (here: unsold lot's) deposit: ``release_deposits`` voids the
    authorization the row points at and marks it released; the renewal left ``processing`` at
    version v is resolved by the janitor to ``requires_capture`` and nothing ever voids it."""
    wire(container, gateway)
    auctions = container.auctions
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    lot = await market.lot(
        seller,
        estimate=2_000_000,
        ends_at=format_rfc3339(clock.now_us() + int(4.5 * _DAY) * 1_000_000),
    )
    await make_deposit(market, lot["id"], a)
    clock.advance(4.1 * _DAY)
    gateway.faults.add("timeout_after_charge")
    assert await auctions.renew_deposits(SYSTEM) == 0
    clock.advance(0.4 * _DAY + 1)
    auctions.renewed_us = clock.now_us()
    assert (await auctions.scheduler_pass(SYSTEM))["closed"] == 1
    for _ in range(2):
        await container.payments.janitor_pass(SYSTEM)
        clock.advance(120)
        await auctions.scheduler_pass(SYSTEM)
    # What goes wrong: the renewal is authorized on the card of a bidder who lost nothing.
    assert await _held(container, lot["id"]) == []


# -- 2. a process's own six-hour retry bumps the row under another process's renewal ------------


async def test_a_retry_bump_does_not_orphan_another_processs_processing_renewal(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Processes A and C both saw the renewal under key ``…:v{v}`` declined (one shared intent)
    and each remembers its own retry six hours later (``renew_retry`` is per process). C's
    retry comes first: it bumps v → v+1 and authorizes under ``…:v{v+1}``, answer lost
    (``processing``: "the next pass resumes it, same key"). Thirty seconds later A's retry is
    due: A reads the row at v+1, bumps it to v+2 (nothing tells it C's attempt is in flight)
    and authorizes and swaps under ``…:v{v+2}``. Nobody ever asks for ``…:v{v+1}`` again: the
    janitor resolves it to ``requires_capture`` and it stays held beside the deposit's."""
    wire(container, gateway)
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    lot = await market.lot(
        seller,
        estimate=2_000_000,
        ends_at=format_rfc3339(clock.now_us() + 6 * _DAY * 1_000_000),
    )
    await make_deposit(market, lot["id"], a)
    proc_a = container.auctions
    proc_c = type(proc_a)(**{f: getattr(proc_a, f) for f in _init_fields(proc_a)})
    clock.advance(4.1 * _DAY)

    # The renewal under …:v{v} is declined (both processes get the same intent).
    real_create = container.payments.create

    async def declined(ctx: Context, new: Any, **kw: Any) -> Any:
        return await real_create(ctx, _with_card(new, "tok_decline_renewal"), **kw)

    monkeypatch.setattr(container.payments, "create", declined)
    await proc_a.renew_deposits(SYSTEM)
    await proc_c.renew_deposits(SYSTEM)
    async with container.db.read() as uow:
        [deposit] = await auction_storage.deposits_of(uow, lot["id"], a.id)
        declined_attempt = await auction_storage.get_renewal(uow, deposit.id, deposit.version)
    assert declined_attempt is not None
    assert declined_attempt.state.value == "declined"
    monkeypatch.setattr(container.payments, "create", real_create)

    clock.advance(6 * 3_600 + 1)
    gateway.faults.add("timeout_after_charge")
    assert await proc_c.renew_deposits(SYSTEM) == 0  # C: bump, authorize, answer lost
    clock.advance(30)
    assert await proc_a.renew_deposits(SYSTEM) == 1  # A: bump again, authorize, swap
    await container.payments.janitor_pass(SYSTEM)
    clock.advance(120)
    await proc_c.renew_deposits(SYSTEM)
    await proc_a.renew_deposits(SYSTEM)

    async with container.db.read() as uow:
        [deposit] = await auction_storage.deposits_of(uow, lot["id"], a.id)
    held = [(await container.payments.get(i))[0] for i in await _held(container, lot["id"])]
    # What goes wrong: C's renewal (key …:v{v+1}) is held with nothing pointing at it.
    assert [h.id for h in held] == [deposit.payment_intent], [h.idempotency_key for h in held]


# -- 3. a decline nobody remembers is never tried again ----------------------------------------


async def test_a_declined_renewal_is_tried_again_when_the_retry_memory_is_full(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """(Written when retries were remembered per process; since ADR 0019 the decline is recorded
    in ``deposit_renewals`` and there is no memory to fill — the test keeps the scenario.)
    Once ``renew_retry`` held ``_MAX_REMEMBERED`` entries (10,000; scaled down to 1 here,
    and filled), a declined renewal was not remembered. The next pass asks again under the same key
    (the row's version did not change: only a remembered retry bumps it), and ``payments.create``
    answers the same declined intent: no new attempt is ever made, however long the card has
    been fine again, until the memory empties (entries live up to 30 h; the renewal window is
    24 h) — the deposit lapses."""
    wire(container, gateway)
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    lot = await market.lot(
        seller,
        estimate=2_000_000,
        ends_at=format_rfc3339(clock.now_us() + 6 * _DAY * 1_000_000),
    )
    await make_deposit(market, lot["id"], a)
    auctions = container.auctions
    clock.advance(4.1 * _DAY)
    real_create = container.payments.create

    async def declined(ctx: Context, new: Any, **kw: Any) -> Any:
        return await real_create(ctx, _with_card(new, "tok_decline_renewal"), **kw)

    monkeypatch.setattr(container.payments, "create", declined)
    assert await auctions.renew_deposits(SYSTEM) == 0
    monkeypatch.setattr(container.payments, "create", real_create)  # the card is fine again
    renewed = 0
    for _ in range(3):
        clock.advance(6 * 3_600 + 1)
        renewed += await auctions.renew_deposits(SYSTEM)
    # What goes wrong: the same declined intent answers every pass; the deposit lapses.
    assert renewed == 1


def _init_fields(obj: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(obj) if f.init]


def _with_card(new: Any, token: str) -> Any:
    return dataclasses.replace(new, payment_method=token)

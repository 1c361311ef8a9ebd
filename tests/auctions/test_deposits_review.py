"""Review s6: deposits, buy-now, retraction, close, default and second chance.

Each test here demonstrates a bug found in review: it fails on the code it was written against.
"""

from __future__ import annotations

from typing import Any

import pytest

from hammerlock.auctions import storage as auction_storage
from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock, format_rfc3339
from hammerlock.escrow import service as escrow_service
from hammerlock.escrow import storage as escrow_storage
from hammerlock.escrow.service import Escrow
from hammerlock.ledger import service as ledger
from hammerlock.payments.gateways.base import ChargeStatus
from tests.auctions.conftest import Market, idem
from tests.auctions.deposit_support import deposit_intents, make_deposit, order_of, posted, wire
from tests.payments.fake_gateway import FakeGateway

SYSTEM = Context.system("tests.review_s6")
_DAY = 86_400


# -- 1. the winner's deposit lapses during the payment window: no penalty on default ---------------


async def test_a_defaulting_winner_forfeits_the_deposit_even_when_the_lot_ran_for_days(
    market: Market, container: Container, clock: FixedClock, gateway: FakeGateway
) -> None:
    """DESIGN.md: "Deposit holds that would outlive their authorization are renewed or replaced
    before expiry"; issue 6: on default "the deposit captured into platform:penalties".

    Renewal (``_renew_one``) only keeps the authorization alive until the lot's latest end, and
    only while the lot is open; the winner's deposit must live until ``pay_by`` (close + payment
    window, 48 h by default). A Visa deposit (5 days) authorized when a 4-day lot opened lapses a
    day into the payment window; the payments janitor voids it; the default then captures nothing.
    """
    escrow = wire(container, gateway)
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    b = await market.party("bidder", "B")
    now = clock.now_us()
    lot = await market.lot(
        seller,
        estimate=2_000_000,  # deposit 200,000
        reserve_price=10_000,
        ends_at=format_rfc3339(now + 4 * _DAY * 1_000_000),
    )
    for bidder in (a, b):
        dep = await make_deposit(market, lot["id"], bidder)
        assert dep["payment_intent"]["status"] == "requires_capture"
    assert (await market.bid(lot["id"], a, 50_000)).status_code == 201
    assert (await market.bid(lot["id"], b, 20_000)).status_code == 201

    clock.advance(4 * _DAY + 1)  # the lot ends; the scheduler closes it (and may renew)
    await container.auctions.renew_deposits(SYSTEM)
    counts = await container.auctions.scheduler_pass(SYSTEM)
    assert counts["closed"] == 1
    order = await order_of(container, lot["id"])
    assert order["status"] == "awaiting_payment"

    # Through the payment window, the background workers run as they do in production.
    for _ in range(4):
        clock.advance(12 * 3_600)
        await container.auctions.scheduler_pass(SYSTEM)
        await container.payments.janitor_pass(SYSTEM)
        await escrow.sweep(SYSTEM)
    clock.advance(60)
    await container.payments.janitor_pass(SYSTEM)
    await escrow.sweep(SYSTEM)

    order = await order_of(container, lot["id"])
    assert order["status"] == "defaulted"
    kept, _ = await container.payments.get(order["deposit_intent_id"])
    # What goes wrong: the authorization lapsed in the payment window and nobody renewed it.
    assert (kept.status.value, kept.canceled_reason) != ("canceled", "authorization_expired")
    # The lot's terms: the defaulting winner's deposit is kept as the penalty.
    assert await posted(container, "platform:penalties:USD") == 200_000


async def _winner_renewed_after_close(
    market: Market, container: Container, clock: FixedClock
) -> tuple[str, str, str, str]:
    """A 4-day lot won by one bidder; the close's scheduler pass renews the kept deposit.
    Returns (lot, buyer, the first authorization, the order's renewed one)."""
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    lot = await market.lot(
        seller,
        estimate=2_000_000,  # deposit 200,000
        reserve_price=10_000,
        ends_at=format_rfc3339(clock.now_us() + 4 * _DAY * 1_000_000),
    )
    first = (await make_deposit(market, lot["id"], a))["payment_intent"]["id"]
    assert (await market.bid(lot["id"], a, 50_000)).status_code == 201
    clock.advance(4 * _DAY + 1)
    counts = await container.auctions.scheduler_pass(SYSTEM)
    assert (counts["closed"], counts["renewed"]) == (1, 1)
    order = await order_of(container, lot["id"])
    assert order["deposit_intent_id"] != first
    return lot["id"], a.id, first, order["deposit_intent_id"]


async def test_a_kept_deposit_renewed_after_the_close_is_what_pay_captures(
    market: Market, container: Container, clock: FixedClock, gateway: FakeGateway
) -> None:
    """The order follows the renewal in the swap's transaction (``escrow.renew_deposit``): pay
    captures the live authorization into escrow, the old one is voided, no hold is left."""
    escrow = wire(container, gateway)
    lot_id, buyer, first, renewed = await _winner_renewed_after_close(market, container, clock)
    old, _ = await container.payments.get(first)
    assert (old.status.value, old.canceled_reason) == ("canceled", "abandoned")
    order = await order_of(container, lot_id)
    async with container.db.transaction(write=False) as uow:
        [event] = await escrow_storage.events_named(uow, order["id"], "deposit_renewed")
    assert (event["renews"], event["payment_intent"]) == (first, renewed)

    paid, _ = await escrow.pay(SYSTEM, order["id"], payment_method=None)
    assert paid.status.value == "paid"
    assert paid.deposit_intent_id == renewed
    # The hammer price (lifted to the reserve), all of it from the deposit.
    assert await posted(container, f"escrow:{order['id']}") == 10_000
    async with container.db.transaction(write=False) as uow:
        acct = await ledger.get_account(uow, f"deposit:{buyer}:{lot_id}")
    assert acct.balances.credits_pending == 0  # the rest of the authorization is released
    assert acct.balances.credits_posted == acct.balances.debits_posted == 10_000


async def test_an_old_deposit_captured_while_it_is_renewed_stays_the_orders_deposit(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pay that read the order before the renewal's swap captures the old authorization
    before the renewal voids it (and dies before booking it): the renewal points the order
    back at the captured one and voids its own — the next pay books the captured deposit and
    never captures a second one."""
    escrow = wire(container, gateway)
    auctions = container.auctions
    real_void = auctions._void
    captured: list[str] = []

    async def void(ctx: Context, intent_id: str) -> Any:
        intent, _ = await container.payments.get(intent_id)
        if not captured and intent.status.value == "requires_capture":
            order_of_lot = await order_of(container, intent.metadata["lot_id"])
            if order_of_lot["deposit_intent_id"] != intent_id:  # the old one, after the swap
                # What pay's _take_deposit does with the intent it read before the swap.
                await container.payments.capture(SYSTEM, intent_id, amount_to_capture=10_000)
                captured.append(intent_id)
        return await real_void(ctx, intent_id)

    monkeypatch.setattr(auctions, "_void", void)
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    lot = await market.lot(
        seller,
        estimate=2_000_000,
        reserve_price=10_000,
        ends_at=format_rfc3339(clock.now_us() + 4 * _DAY * 1_000_000),
    )
    first = (await make_deposit(market, lot["id"], a))["payment_intent"]["id"]
    assert (await market.bid(lot["id"], a, 50_000)).status_code == 201
    clock.advance(4 * _DAY + 1)
    counts = await auctions.scheduler_pass(SYSTEM)
    assert (counts["closed"], counts["renewed"]) == (1, 0)
    assert captured == [first]
    monkeypatch.setattr(auctions, "_void", real_void)

    order = await order_of(container, lot["id"])
    assert order["deposit_intent_id"] == first
    [renewal] = [i for i in await deposit_intents(container, lot["id"]) if i.id != first]
    assert renewal.status.value == "canceled"
    paid, _ = await escrow.pay(SYSTEM, order["id"], payment_method=None)
    assert paid.status.value == "paid"
    assert await posted(container, f"escrow:{order['id']}") == 10_000  # the reserve


# -- 2. a deposit whose authorization failed after the call leaves the bidder locked out -----------


async def test_a_failed_3ds_deposit_can_be_replaced(
    market: Market, container: Container, gateway: FakeGateway, clock: FixedClock
) -> None:
    """A deposit whose intent waits for 3-D Secure is ``held``; when the challenge fails the
    intent returns to ``requires_payment_method`` but the deposit stays ``held`` forever:
    ``_record_deposit`` answers every later POST with that dead deposit, and the bid path
    answers ``deposit_required`` — the bidder can never bid on the lot (a decline at creation
    is ``failed`` and may be retried; a decline one step later may not)."""
    seller = await market.party("seller")
    a = await market.party("bidder", card=False)
    r = await market.client.post(
        f"/v1/bidders/{a.id}/cards", json={"payment_method": "tok_3ds_a"}, headers=a.headers
    )
    assert r.status_code == 201
    lot = await market.lot(seller, estimate=2_000_000)
    first = await make_deposit(market, lot["id"], a)
    assert first["payment_intent"]["status"] == "requires_action"
    [key] = [k for k, c in gateway.charges.items() if c.status is ChargeStatus.REQUIRES_ACTION]
    gateway.complete_challenge(key, passed=False)
    failed = await container.payments.refresh(SYSTEM, first["payment_intent"]["id"])
    assert failed.status.value == "requires_payment_method"

    clock.advance(1)
    r = await market.client.post(
        f"/v1/bidders/{a.id}/cards", json={"payment_method": "tok_ok_a"}, headers=a.headers
    )
    assert r.status_code == 201
    again = await make_deposit(market, lot["id"], a)
    assert again["payment_intent"]["status"] == "requires_capture", again
    assert (await market.bid(lot["id"], a, 5_000)).status_code == 201


# -- 3. a loser's deposit whose authorization is in flight at the close stays on the card -------


async def test_a_deposit_authorizing_at_the_close_is_voided_once_it_lands(
    market: Market, container: Container, gateway: FakeGateway, clock: FixedClock
) -> None:
    """A deposit authorization that timed out at the gateway leaves its intent ``processing``
    (the deposit ``held``). The close's release calls ``_void``: a ``processing`` intent cannot
    be canceled, ``_void`` only logs ``deposit_not_voidable``, and ``release_deposits`` marks
    the deposit ``released`` and the lot ``deposits_released`` anyway. When the janitor then
    learns the charge was authorized, the intent sits in ``requires_capture``: the loser's card
    keeps the hold (and ``deposit:{bidder}:{lot}`` its pending credit) until the authorization
    lapses days later — "outbid at close: void the deposit hold" does not happen."""
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    lot = await market.lot(seller, estimate=2_000_000, reserve_price=1_900_000)
    gateway.faults.add("timeout_after_charge")
    r = await market.client.post(
        f"/v1/lots/{lot['id']}/deposits", json={}, headers={**a.headers, **idem()}
    )
    assert r.status_code in {200, 202}, r.text
    intent_id = r.json()["payment_intent"]["id"]
    assert r.json()["payment_intent"]["status"] == "processing"
    r = await market.client.post(
        f"/v1/lots/{lot['id']}/close", headers={**await market.staff(), **idem()}
    )
    assert r.json()["status"] == "unsold"
    # The background workers, as in production, for a while.
    for _ in range(3):
        clock.advance(60)
        await container.payments.janitor_pass(SYSTEM)
        await container.auctions.scheduler_pass(SYSTEM)
    intent, _ = await container.payments.get(intent_id)
    assert intent.status.value == "canceled", intent.status
    async with container.db.transaction(write=False) as uow:
        acct = await ledger.get_account(uow, f"deposit:{a.id}:{lot['id']}")
    assert acct.balances.credits_pending == 0


# -- 4. bad input answers 4xx, never 500 -------------------------------------------------------


@pytest.mark.parametrize(
    ("starts_at", "ends_at", "extra"),
    [
        # latest_end = ends_at + soft_close_cap_s lands past year 9999: the lot is stored,
        # then rendering it raises OverflowError (500) — on create and on every GET after.
        ("9999-12-31T00:00:00Z", "9999-12-31T12:00:00Z", {"soft_close_cap_s": 7 * 86_400}),
    ],
)
async def test_lot_times_at_the_edges_of_the_calendar_are_not_a_500(
    market: Market, starts_at: str, ends_at: str, extra: dict[str, Any]
) -> None:
    seller = await market.party("seller")
    body = {
        "title": "Edge",
        "currency": "USD",
        "estimate": 1_000,
        "starting_price": 100,
        "starts_at": starts_at,
        "ends_at": ends_at,
        **extra,
    }
    r = await market.client.post("/v1/lots", json=body, headers=seller.headers)
    assert r.status_code < 500, r.text
    if r.status_code == 201:
        r = await market.client.get(f"/v1/lots/{r.json()['id']}", headers=seller.headers)
        assert r.status_code < 500, r.text


# -- 5. the second-chance offer sells below the seller's reserve --------------------------------


async def test_a_second_chance_offer_never_sells_below_the_reserve(
    market: Market, container: Container, clock: FixedClock, gateway: FakeGateway
) -> None:
    """The reserve is the least the seller accepts ("below reserve → lot unsold"). With the
    leader's maximum at or above the reserve, the price is lifted to the reserve while the
    runner-up's maximum may sit below it; on default the runner-up is offered the lot at that
    maximum — a sale below the reserve nobody agreed to. (After a buy-now the runner-up's
    maximum is *always* below the reserve: buy-now is only offered until the reserve is met.)"""
    escrow = wire(container, gateway)
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    b = await market.party("bidder", "B")
    lot = await market.lot(seller, reserve_price=10_000, payment_window_s=600)
    assert (await market.bid(lot["id"], b, 8_000)).status_code == 201
    assert (await market.bid(lot["id"], a, 50_000)).status_code == 201
    r = await market.client.post(
        f"/v1/lots/{lot['id']}/close", headers={**await market.staff(), **idem()}
    )
    assert (r.json()["status"], r.json()["hammer_price"]) == ("closed", 10_000)
    clock.advance(601)
    await escrow.sweep(SYSTEM)
    order = await order_of(container, lot["id"])
    assert order["status"] == "defaulted"
    if order["offer_status"] == "open":
        assert order["runner_up_amount"] >= 10_000, order["runner_up_amount"]


# -- 6. a renewal racing the close hands the order a voided deposit ------------------------------


async def test_a_renewal_racing_the_close_leaves_the_order_a_live_deposit(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``_open_order`` reads the winner's deposits, then marks the held one ``kept`` with
    ``set_deposit(..., expected=None)``: nothing checks that the deposit still holds the intent
    it read, and the deposit row is not locked in between. Another process's scheduler pass
    (its ``claim_due`` skipped this locked lot and went on to ``renew_deposits``, whose page
    read still sees the lot ``open``) can swap the deposit to a renewed authorization and void
    the old one in that gap. The order is then opened on the voided intent (no penalty on
    default, the whole total charged on pay) while the renewed hold stays on the winner's card,
    attached to a ``kept`` deposit nobody voids."""
    if not container.db.is_postgres:
        pytest.skip("SQLite has one writer: the renewal cannot commit inside the close")
    wire(container, gateway)
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    now = clock.now_us()
    lot = await market.lot(
        seller,
        estimate=2_000_000,
        reserve_price=10_000,
        ends_at=format_rfc3339(now + int(4.6 * _DAY) * 1_000_000),
        soft_close_cap_s=_DAY,  # the lot may outlive the 5-day authorization: renewal is due
    )
    await make_deposit(market, lot["id"], a)
    assert (await market.bid(lot["id"], a, 50_000)).status_code == 201
    clock.advance(4.6 * _DAY + 1)

    original = auction_storage.deposits_of
    raced: list[int] = []

    async def deposits_of(uow: Any, lot_id: str, bidder_id: str | None = None) -> Any:
        found = await original(uow, lot_id, bidder_id)
        if bidder_id == a.id and not raced:  # the close's _open_order, under the lot's lock
            raced.append(await container.auctions.renew_deposits(SYSTEM))
        return found

    monkeypatch.setattr(auction_storage, "deposits_of", deposits_of)
    assert (await container.auctions.scheduler_pass(SYSTEM))["closed"] == 1
    assert raced == [1]
    monkeypatch.setattr(auction_storage, "deposits_of", original)

    order = await order_of(container, lot["id"])
    kept, _ = await container.payments.get(order["deposit_intent_id"])
    assert kept.status.value == "requires_capture", (kept.status, kept.canceled_reason)


async def test_no_renewal_once_a_pay_was_asked_for(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pay reads the deposit under the order's lock and captures it at once: a renewal
    swapping the order's deposit after that could let two pays capture two authorizations.
    Escrow refuses the swap (``renew_deposit``) and the renewal is voided."""
    escrow = wire(container, gateway)
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    lot = await market.lot(
        seller, estimate=2_000_000, reserve_price=10_000, payment_window_s=7 * _DAY
    )
    first = (await make_deposit(market, lot["id"], a))["payment_intent"]["id"]
    assert (await market.bid(lot["id"], a, 50_000)).status_code == 201
    clock.advance(3_601)
    assert (await container.auctions.scheduler_pass(SYSTEM))["closed"] == 1
    order = await order_of(container, lot["id"])

    async def asked_only(ctx: Context, current: Any, *rest: Any) -> Any:
        del ctx, rest
        return None if isinstance(current, Escrow) else current

    # The pay is asked for (recorded under the order's lock) but its gateway calls have not run
    # yet — the moment a renewal could slip in.
    monkeypatch.setattr(escrow, "_take_deposit", asked_only)
    monkeypatch.setattr(escrow, "_charge_rest", asked_only)
    pending, _ = await escrow.pay(SYSTEM, order["id"], payment_method=None)
    assert pending.status.value == "awaiting_payment"

    clock.advance(4.1 * _DAY)  # within a day of the first authorization's lapse
    # (Session 7: the auctions service asks escrow first, so no renewal is authorized at all;
    # the pass below pretends the pay was asked for between that check and the swap.)
    async with container.db.read() as uow:
        assert not await escrow_service.deposit_renewable(uow, first)
    monkeypatch.setattr(container.auctions, "order_takes_renewal", _yes)
    assert (await container.auctions.scheduler_pass(SYSTEM))["renewed"] == 0
    after = await order_of(container, lot["id"])
    assert after["deposit_intent_id"] == first
    kept, _ = await container.payments.get(first)
    assert kept.status.value == "requires_capture"
    others = [i for i in await deposit_intents(container, lot["id"]) if i.id != first]
    assert others, "a renewal was authorized"
    assert {(i.status.value, i.canceled_reason) for i in others} == {("canceled", "abandoned")}
    async with container.db.read() as uow:
        assert await escrow_storage.events_named(uow, order["id"], "deposit_renewed") == []


async def _yes(*_: Any) -> bool:
    return True

"""Parties and auctions end to end through HTTP, on SQLite and PostgreSQL, with the real
ledger, payments (an in-memory gateway) and escrow."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from hammerlock.auctions.service import mark_settled
from hammerlock.audit.model import Context
from hammerlock.audit.storage import audit_outbox
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.ledger import service as ledger
from hammerlock.security.permissions import Role
from hammerlock.vault.errors import TokenNotFound
from hammerlock.vault.model import TokenInfo
from tests.auctions.conftest import Market, idem
from tests.conftest import Keys
from tests.payments.fake_gateway import FakeGateway

pytestmark = pytest.mark.usefixtures("gateway")


async def _events(container: Container, action: str) -> list[dict[str, Any]]:
    async with container.db.transaction(write=False) as uow:
        rows = (
            await uow.conn.execute(
                sa.select(audit_outbox.c.event).where(audit_outbox.c.action == action)
            )
        ).scalars()
        return [orjson.loads(r) for r in rows]


# -- parties ------------------------------------------------------------------------------------


async def test_register_parties_with_their_own_keys(market: Market, keys: Keys) -> None:
    service = await keys.headers(Role.SERVICE)
    r = await market.client.post(
        "/v1/bidders", json={"name": "Ada", "email": "ada@example.com"}, headers=service
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"].startswith("bdr_")
    assert body["name"] == "Ada"
    own = {"Authorization": f"Bearer {body['api_key']}"}
    who = await market.client.get("/v1/whoami", headers=own)
    if who.status_code == 200:
        assert who.json()["principal_id"] == body["id"]
    r = await market.client.post("/v1/sellers", json={"name": "Shop"}, headers=service)
    assert r.status_code == 201
    assert r.json()["id"].startswith("slr_")
    r = await market.client.post("/v1/bidders", json={"name": "x"}, headers=own)
    assert r.status_code == 403


async def test_cards_are_the_bidders_own(market: Market) -> None:
    a = await market.party("bidder", card=False)
    b = await market.party("bidder", card=False)
    r = await market.client.post(
        f"/v1/bidders/{b.id}/cards", json={"payment_method": "tok_x"}, headers=a.headers
    )
    assert r.status_code == 404
    assert r.json()["code"] == "party_not_found"
    r = await market.client.post(
        f"/v1/bidders/{a.id}/cards", json={"payment_method": "tok_x"}, headers=a.headers
    )
    assert r.status_code == 201, r.text
    assert r.json()["payment_method"] == "tok_x"
    again = await market.client.post(
        f"/v1/bidders/{a.id}/cards", json={"payment_method": "tok_x"}, headers=a.headers
    )
    assert again.json()["id"] == r.json()["id"]


class _Vault:
    async def tokens(self, token_id: str) -> TokenInfo:
        if token_id != "tok_known":
            raise TokenNotFound(f"no token {token_id}")
        return TokenInfo(token_id, "visa", "4242", "424242", 12, 2030, "fp", 0)


async def test_cards_are_looked_up_at_the_vault(market: Market, container: Container) -> None:
    a = await market.party("bidder", card=False)
    container.vault = _Vault()  # type: ignore[assignment]
    try:
        r = await market.client.post(
            f"/v1/bidders/{a.id}/cards", json={"payment_method": "tok_nope"}, headers=a.headers
        )
        assert r.status_code == 422
        assert r.json()["code"] == "payment_method_invalid"
        r = await market.client.post(
            f"/v1/bidders/{a.id}/cards", json={"payment_method": "tok_known"}, headers=a.headers
        )
        assert r.status_code == 201
        assert (r.json()["brand"], r.json()["last4"]) == ("visa", "4242")
    finally:
        container.vault = None


# -- lots and bids ------------------------------------------------------------------------------


async def test_proxy_bidding_through_the_api(market: Market) -> None:
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    b = await market.party("bidder", "B")
    lot = await market.lot(seller, reserve_price=4_000)
    r = await market.bid(lot["id"], a, 3_000)
    assert r.status_code == 201, r.text
    assert (r.json()["seq"], r.json()["lot"]["current_price"]) == (1, 1_000)
    assert r.json()["lot"]["reserve_met"] is False
    r = await market.bid(lot["id"], b, 1_000)
    assert r.status_code == 422
    assert r.json()["code"] == "bid_too_low"
    assert r.json()["ask"] == 1_050
    r = await market.bid(lot["id"], b, 5_000)
    assert r.status_code == 201
    state = r.json()["lot"]
    assert (state["current_price"], state["leading_bidder_id"], state["reserve_met"]) == (
        4_000,
        b.id,
        True,
    )
    assert r.json()["seq"] == 2
    # A bidder never sees the reserve, nor another bidder's maximum.
    seen = await market.get(lot["id"], a.headers)
    assert "reserve_price" not in seen
    assert (await market.get(lot["id"]))["reserve_price"] == 4_000
    bids = (await market.client.get(f"/v1/lots/{lot['id']}/bids", headers=a.headers)).json()
    assert [x["seq"] for x in bids["data"]] == [1, 2]
    assert [x["max_amount"] for x in bids["data"]] == [3_000, None]


async def test_a_bid_is_idempotent_by_key(market: Market) -> None:
    seller = await market.party("seller")
    a = await market.party("bidder")
    lot = await market.lot(seller)
    headers = {**a.headers, **idem()}
    first = await market.client.post(
        f"/v1/lots/{lot['id']}/bids", json={"max_amount": 2_000}, headers=headers
    )
    again = await market.client.post(
        f"/v1/lots/{lot['id']}/bids", json={"max_amount": 2_000}, headers=headers
    )
    assert first.status_code == again.status_code == 201
    assert again.headers.get("idempotent-replayed") == "true"
    assert first.json()["id"] == again.json()["id"]
    assert (await market.get(lot["id"]))["bid_count"] == 1
    r = await market.client.post(
        f"/v1/lots/{lot['id']}/bids", json={"max_amount": 2_000}, headers=a.headers
    )
    assert r.status_code == 400  # Idempotency-Key required


async def test_who_may_bid(market: Market, keys: Keys) -> None:
    seller = await market.party("seller")
    a = await market.party("bidder")
    nocard = await market.party("bidder", card=False)
    draft = await market.lot(seller, open_=False)
    r = await market.bid(draft["id"], a, 2_000)
    assert r.status_code == 404  # a draft is not visible to bidders
    lot = await market.lot(seller)
    r = await market.bid(lot["id"], nocard, 2_000)
    assert (r.status_code, r.json()["code"]) == (409, "card_required")
    # A bidder-role key bound to the seller's own principal cannot bid on the seller's lot.
    sellers_bidder_key = (await keys.create(Role.BIDDER, seller.id))["headers"]
    r = await market.client.post(
        f"/v1/lots/{lot['id']}/bids",
        json={"max_amount": 2_000},
        headers={**sellers_bidder_key, **idem()},
    )
    assert (r.status_code, r.json()["code"]) == (403, "own_lot_bid")
    r = await market.bid(lot["id"], seller, 2_000)
    assert r.status_code == 403
    # The service bids on a bidder's behalf and must name it; a bidder cannot name another.
    service = await keys.headers(Role.SERVICE)
    r = await market.client.post(
        f"/v1/lots/{lot['id']}/bids", json={"max_amount": 2_000}, headers={**service, **idem()}
    )
    assert r.status_code == 422
    r = await market.client.post(
        f"/v1/lots/{lot['id']}/bids",
        json={"max_amount": 2_000, "bidder_id": a.id},
        headers={**service, **idem()},
    )
    assert r.status_code == 201, r.text
    r = await market.client.post(
        f"/v1/lots/{lot['id']}/bids",
        json={"max_amount": 9_000, "bidder_id": nocard.id},
        headers={**a.headers, **idem()},
    )
    assert r.status_code == 404


async def test_sellers_see_only_their_own_lots(market: Market) -> None:
    mine = await market.party("seller")
    other = await market.party("seller")
    lot = await market.lot(mine, open_=False)
    r = await market.client.get(f"/v1/lots/{lot['id']}", headers=other.headers)
    assert r.status_code == 404
    r = await market.client.post(f"/v1/lots/{lot['id']}/open", headers=other.headers)
    assert r.status_code == 404
    r = await market.client.post(
        "/v1/lots",
        json={
            "seller_id": mine.id,
            "title": "x",
            "currency": "USD",
            "estimate": 1,
            "starting_price": 1,
            "ends_at": "2027-01-01T00:00:00Z",
        },
        headers=other.headers,
    )
    assert r.status_code == 404


async def test_lot_terms_are_validated(market: Market) -> None:
    seller = await market.party("seller")
    bad: list[dict[str, Any]] = [
        {"increments": [{"from": 0, "step": 100}, {"from": 500, "step": 10}]},
        {"buy_now_price": 500},
        {"ends_at": "2025-01-01T00:00:00Z"},
        {"currency": "XXQ"},
    ]
    for terms in bad:
        body = {
            "title": "x",
            "currency": "USD",
            "estimate": 1,
            "starting_price": 1_000,
            "ends_at": "2027-01-01T00:00:00Z",
            **terms,
        }
        r = await market.client.post("/v1/lots", json=body, headers=seller.headers)
        assert r.status_code == 422, (terms, r.text)


async def test_not_open_lots_refuse_bids(market: Market, clock: FixedClock) -> None:
    seller = await market.party("seller")
    a = await market.party("bidder")
    later = await market.lot(
        seller, starts_at="2026-01-01T01:00:00Z", ends_at="2026-01-02T00:00:00Z"
    )
    assert later["status"] == "scheduled"
    r = await market.bid(later["id"], a, 2_000)
    assert (r.status_code, r.json()["code"]) == (409, "lot_not_open")
    clock.advance(3_600)
    r = await market.bid(later["id"], a, 2_000)  # due: opens on the first bid
    assert r.status_code == 201, r.text
    assert r.json()["lot"]["status"] == "open"


async def test_soft_close_extends_up_to_the_cap(market: Market, clock: FixedClock) -> None:
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    b = await market.party("bidder", "B")
    lot = await market.lot(
        seller,
        ends_at="2026-01-01T00:10:00Z",
        soft_close_s=60,
        soft_close_cap_s=90,
    )
    clock.advance(9 * 60 + 30)  # 30 s before the end
    r = await market.bid(lot["id"], a, 2_000)
    assert r.json()["lot"]["ends_at"] == "2026-01-01T00:10:30.000000Z"
    assert r.json()["lot"]["extensions"] == 1
    clock.advance(50)
    r = await market.bid(lot["id"], b, 3_000)
    assert r.json()["lot"]["ends_at"] == "2026-01-01T00:11:20.000000Z"
    clock.advance(40)
    r = await market.bid(lot["id"], a, 4_000)
    assert r.json()["lot"]["ends_at"] == "2026-01-01T00:11:30.000000Z"  # the cap
    clock.advance(31)
    r = await market.bid(lot["id"], b, 9_000)
    assert (r.status_code, r.json()["code"]) == (409, "lot_not_open")


async def test_retraction_recomputes_the_price(
    market: Market, keys: Keys, container: Container
) -> None:
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    b = await market.party("bidder", "B")
    lot = await market.lot(seller)
    await market.bid(lot["id"], a, 3_000)
    shill = (await market.bid(lot["id"], b, 9_000)).json()
    assert shill["lot"]["current_price"] == 3_100
    admin = await keys.headers(Role.ADMIN)
    r = await market.client.post(
        f"/v1/lots/{lot['id']}/bids/{shill['id']}/retract",
        json={"reason": "shill bidding"},
        headers={**admin, **idem()},
    )
    assert r.status_code == 200, r.text
    assert (r.json()["current_price"], r.json()["leading_bidder_id"]) == (1_000, a.id)
    operator = await keys.headers(Role.OPERATOR)
    r = await market.client.post(
        f"/v1/lots/{lot['id']}/bids/{shill['id']}/retract",
        json={"reason": "again"},
        headers={**operator, **idem()},
    )
    assert r.status_code == 403
    r = await market.bid(lot["id"], b, 2_000)
    assert r.json()["seq"] == 3  # the sequence does not give numbers back
    [event] = await _events(container, "auctions.bid.retract")
    assert event["details"]["reason"] == "shill bidding"
    assert event["actor"]["role"] == "admin"


# -- closing ------------------------------------------------------------------------------------


async def test_the_scheduler_closes_a_won_lot_and_opens_an_order(
    market: Market, container: Container, clock: FixedClock
) -> None:
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    b = await market.party("bidder", "B")
    lot = await market.lot(seller, reserve_price=2_000, buyer_premium_bps=2_500)
    await market.bid(lot["id"], a, 5_000)
    await market.bid(lot["id"], b, 2_500)
    ctx = Context.system("tests")
    assert (await container.auctions.scheduler_pass(ctx))["closed"] == 0
    clock.advance(3_600)
    assert (await container.auctions.scheduler_pass(ctx))["closed"] == 1
    assert (await container.auctions.scheduler_pass(ctx))["closed"] == 0
    closed = await market.get(lot["id"])
    assert (closed["status"], closed["hammer_price"], closed["winner_id"]) == (
        "closed",
        2_600,
        a.id,
    )
    [event] = await _events(container, "auctions.lot.close")
    assert event["details"]["order_id"].startswith("ord_")
    # A second close is a no-op answer.
    r = await market.client.post(
        f"/v1/lots/{lot['id']}/close", headers={**await market.staff(), **idem()}
    )
    assert r.status_code == 200
    assert len(await _events(container, "auctions.lot.close")) == 1


async def test_below_reserve_is_unsold_and_every_deposit_is_released(
    market: Market, container: Container, gateway: FakeGateway
) -> None:
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    b = await market.party("bidder", "B")
    lot = await market.lot(seller, estimate=2_000_000, reserve_price=1_900_000)
    assert (lot["deposit_required"], lot["deposit_amount"]) == (True, 200_000)
    r = await market.bid(lot["id"], a, 5_000)
    assert (r.status_code, r.json()["code"]) == (409, "deposit_required")
    deposits = {}
    for bidder in (a, b):
        r = await market.client.post(
            f"/v1/lots/{lot['id']}/deposits", json={}, headers={**bidder.headers, **idem()}
        )
        assert r.status_code == 200, r.text
        dep = r.json()
        assert dep["payment_intent"]["status"] == "requires_capture"
        assert dep["payment_intent"]["purpose"] == "deposit"
        deposits[bidder.id] = dep
    async with container.db.transaction(write=False) as uow:
        acct = await ledger.get_account(uow, f"deposit:{a.id}:{lot['id']}")
    assert acct.balances.credits_pending == 200_000
    assert (await market.bid(lot["id"], a, 5_000)).status_code == 201
    assert (await market.bid(lot["id"], b, 9_000)).status_code == 201
    r = await market.client.post(
        f"/v1/lots/{lot['id']}/close", headers={**await market.staff(), **idem()}
    )
    assert r.json()["status"] == "unsold"
    for dep in deposits.values():
        intent, _ = await container.payments.get(dep["payment_intent"]["id"])
        assert intent.status.value == "canceled"
    async with container.db.transaction(write=False) as uow:
        acct = await ledger.get_account(uow, f"deposit:{a.id}:{lot['id']}")
    assert acct.balances.credits_pending == 0
    assert len(await _events(container, "auctions.deposit.release")) == 2


async def test_the_winner_keeps_the_deposit_the_loser_gets_it_back(
    market: Market, container: Container
) -> None:
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    b = await market.party("bidder", "B")
    lot = await market.lot(seller, estimate=2_000_000, reserve_price=10_000)
    intents = {}
    for bidder in (a, b):
        r = await market.client.post(
            f"/v1/lots/{lot['id']}/deposits", json={}, headers={**bidder.headers, **idem()}
        )
        intents[bidder.id] = r.json()["payment_intent"]["id"]
    await market.bid(lot["id"], a, 50_000)
    await market.bid(lot["id"], b, 20_000)
    r = await market.client.post(
        f"/v1/lots/{lot['id']}/close", headers={**await market.staff(), **idem()}
    )
    assert (r.json()["status"], r.json()["winner_id"]) == ("closed", a.id)
    winner, _ = await container.payments.get(intents[a.id])
    loser, _ = await container.payments.get(intents[b.id])
    assert (winner.status.value, loser.status.value) == ("requires_capture", "canceled")


async def test_buy_now_closes_at_its_price_until_the_reserve_is_met(
    market: Market, container: Container
) -> None:
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    b = await market.party("bidder", "B")
    lot = await market.lot(seller, reserve_price=5_000, buy_now_price=8_000)
    assert lot["buy_now_price"] == 8_000
    await market.bid(lot["id"], a, 3_000)
    r = await market.client.post(
        f"/v1/lots/{lot['id']}/buy_now", json={}, headers={**b.headers, **idem()}
    )
    assert r.status_code == 200, r.text
    closed = r.json()["lot"]
    assert (closed["status"], closed["hammer_price"], closed["winner_id"]) == (
        "closed",
        8_000,
        b.id,
    )
    assert closed["close_reason"] == "buy_now"
    other = await market.lot(seller, reserve_price=5_000, buy_now_price=8_000)
    await market.bid(other["id"], a, 6_000)  # meets the reserve: buy-now is withdrawn
    r = await market.client.post(
        f"/v1/lots/{other['id']}/buy_now", json={}, headers={**b.headers, **idem()}
    )
    assert (r.status_code, r.json()["code"]) == (409, "buy_now_unavailable")


async def test_a_deposit_waiting_for_3ds_does_not_admit_bids(market: Market) -> None:
    seller = await market.party("seller")
    a = await market.party("bidder", card=False)
    r = await market.client.post(
        f"/v1/bidders/{a.id}/cards", json={"payment_method": "tok_3ds_a"}, headers=a.headers
    )
    assert r.status_code == 201
    lot = await market.lot(seller, estimate=2_000_000)
    r = await market.client.post(
        f"/v1/lots/{lot['id']}/deposits", json={}, headers={**a.headers, **idem()}
    )
    assert r.status_code == 200, r.text
    assert r.json()["payment_intent"]["status"] == "requires_action"
    first = r.json()["id"]
    r = await market.bid(lot["id"], a, 5_000)
    assert (r.status_code, r.json()["code"]) == (409, "deposit_required")
    again = await market.client.post(
        f"/v1/lots/{lot['id']}/deposits", json={}, headers={**a.headers, **idem()}
    )
    assert again.json()["id"] == first  # one live deposit per bidder and lot


async def test_a_declined_deposit_can_be_retried_with_another_card(
    market: Market, clock: FixedClock
) -> None:
    seller = await market.party("seller")
    a = await market.party("bidder", card=False)
    lot = await market.lot(seller, estimate=2_000_000)
    r = await market.client.post(
        f"/v1/lots/{lot['id']}/deposits", json={}, headers={**a.headers, **idem()}
    )
    assert (r.status_code, r.json()["code"]) == (409, "card_required")
    await market.client.post(
        f"/v1/bidders/{a.id}/cards", json={"payment_method": "tok_decline_a"}, headers=a.headers
    )
    r = await market.client.post(
        f"/v1/lots/{lot['id']}/deposits", json={}, headers={**a.headers, **idem()}
    )
    assert r.json()["status"] == "failed", r.text
    clock.advance(1)  # the latest card on file is the one charged
    await market.client.post(
        f"/v1/bidders/{a.id}/cards", json={"payment_method": "tok_ok_a"}, headers=a.headers
    )
    r = await market.client.post(
        f"/v1/lots/{lot['id']}/deposits", json={}, headers={**a.headers, **idem()}
    )
    assert (r.json()["status"], r.json()["payment_intent"]["status"]) == (
        "held",
        "requires_capture",
    )
    assert (await market.bid(lot["id"], a, 5_000)).status_code == 201


async def test_a_deposit_is_renewed_before_its_authorization_lapses(
    market: Market, container: Container, clock: FixedClock
) -> None:
    seller = await market.party("seller")
    a = await market.party("bidder")
    lot = await market.lot(seller, estimate=2_000_000, ends_at="2026-01-11T00:00:00Z")
    r = await market.client.post(
        f"/v1/lots/{lot['id']}/deposits", json={}, headers={**a.headers, **idem()}
    )
    old = r.json()["payment_intent"]
    assert old["authorization_expires_at"] is not None
    ctx = Context.system("tests")
    assert await container.auctions.renew_deposits(ctx) == 0  # days left: nothing to do
    clock.advance(4.5 * 86_400)  # within a day of the card authorization's end
    assert await container.auctions.renew_deposits(ctx) == 1
    assert await container.auctions.renew_deposits(ctx) == 0
    before, _ = await container.payments.get(old["id"])
    assert before.status.value == "canceled"
    [event] = await _events(container, "auctions.deposit.renew")
    renewed, _ = await container.payments.get(event["details"]["new"])
    assert renewed.status.value == "requires_capture"
    assert (await market.bid(lot["id"], a, 5_000)).status_code == 201
    async with container.db.transaction(write=False) as uow:
        acct = await ledger.get_account(uow, f"deposit:{a.id}:{lot['id']}")
    assert acct.balances.credits_pending == 200_000  # one hold, not two


async def test_escrow_marks_a_closed_lot_settled(market: Market, container: Container) -> None:
    seller = await market.party("seller")
    a = await market.party("bidder")
    lot = await market.lot(seller)
    await market.bid(lot["id"], a, 5_000)
    ctx = Context.system("tests")
    async with container.db.transaction() as uow:
        assert await mark_settled(uow, ctx, lot["id"]) is False  # open: nothing to settle
        assert await mark_settled(uow, ctx, "lot_missing") is False  # never blocks a release
    assert (await market.get(lot["id"]))["status"] == "open"
    await market.client.post(
        f"/v1/lots/{lot['id']}/close", headers={**await market.staff(), **idem()}
    )
    async with container.db.transaction() as uow:
        assert await mark_settled(uow, ctx, lot["id"]) is True
    async with container.db.transaction() as uow:
        assert await mark_settled(uow, ctx, lot["id"]) is False
    assert (await market.get(lot["id"]))["status"] == "settled"


async def test_a_custom_increments_table(market: Market) -> None:
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    b = await market.party("bidder", "B")
    table = [{"from": 0, "step": 100}, {"from": 5_000, "step": 500}]
    lot = await market.lot(seller, increments=table)
    assert lot["increments"] == table
    await market.bid(lot["id"], a, 9_000)
    r = await market.bid(lot["id"], b, 5_000)
    assert r.json()["lot"]["current_price"] == 5_500
    assert r.json()["lot"]["ask"] == 6_000


async def test_a_lot_closed_while_a_deposit_is_authorized_leaves_no_hold_on_the_card(
    market: Market, container: Container, gateway: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The card is authorized outside any transaction; a close in that gap must not leave the
    hold on the card (the close saw a pending deposit with nothing to void)."""
    del gateway
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    lot = await market.lot(seller, estimate=2_000_000, reserve_price=1_900_000)
    payments = container.payments
    create = payments.create

    async def create_then_close(*args: Any, **kwargs: Any) -> Any:
        intent = await create(*args, **kwargs)
        await container.auctions.close(Context.system("tests"), lot["id"])
        await container.auctions.release_deposits(Context.system("tests"), lot["id"])
        return intent

    monkeypatch.setattr(payments, "create", create_then_close)
    r = await market.client.post(
        f"/v1/lots/{lot['id']}/deposits", json={}, headers={**a.headers, **idem()}
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "released"
    intent, _ = await payments.get(r.json()["payment_intent"]["id"])
    assert intent.status.value == "canceled"
    async with container.db.transaction(write=False) as uow:
        acct = await ledger.get_account(uow, f"deposit:{a.id}:{lot['id']}")
    assert acct.balances.credits_pending == 0

"""A closed lot becomes ``settled`` when its money story ends — its order released or refunded,
or defaulted with nobody left to buy (no second-chance offer, or the offer expired)."""

from __future__ import annotations

from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from tests.auctions.conftest import Market, idem
from tests.auctions.deposit_support import order_of, wire
from tests.payments.fake_gateway import FakeGateway

SYSTEM = Context.system("tests.auctions")
_WINDOW_S = 600


async def _closed_lot(market: Market, *, bidders: int) -> str:
    seller = await market.party("seller")
    lot = await market.lot(seller, payment_window_s=_WINDOW_S)
    for n in range(bidders):
        bidder = await market.party("bidder", f"B{n}")
        assert (await market.bid(lot["id"], bidder, 5_000 + 1_000 * n)).status_code == 201
    r = await market.client.post(
        f"/v1/lots/{lot['id']}/close", headers={**await market.staff(), **idem()}
    )
    assert r.json()["status"] == "closed", r.text
    return str(lot["id"])


async def test_a_default_with_no_runner_up_settles_the_lot(
    market: Market, container: Container, clock: FixedClock, gateway: FakeGateway
) -> None:
    escrow = wire(container, gateway)
    lot_id = await _closed_lot(market, bidders=1)
    clock.advance(_WINDOW_S + 1)
    await escrow.sweep(SYSTEM)
    order = await order_of(container, lot_id)
    assert (order["status"], order["offer_status"]) == ("defaulted", "none")
    assert (await market.get(lot_id))["status"] == "settled"


async def test_a_lot_whose_second_chance_offer_expires_is_settled_then(
    market: Market, container: Container, clock: FixedClock, gateway: FakeGateway
) -> None:
    escrow = wire(container, gateway)
    lot_id = await _closed_lot(market, bidders=2)
    clock.advance(_WINDOW_S + 1)
    await escrow.sweep(SYSTEM)
    order = await order_of(container, lot_id)
    assert (order["status"], order["offer_status"]) == ("defaulted", "open")
    assert (await market.get(lot_id))["status"] == "closed"  # the runner-up may still buy it
    clock.advance(_WINDOW_S + 1)
    await escrow.sweep(SYSTEM)
    assert (await order_of(container, lot_id))["offer_status"] == "expired"
    assert (await market.get(lot_id))["status"] == "settled"

"""From the first bid to the seller's payout over HTTP: parties, a lot with deposits, bids, the
close (which opens the order in its own transaction), payment on the card on file, shipping,
acceptance, release and payout (to the seller's payout destination); and the tables of
migrations 0007 and 0008 match storage."""

from __future__ import annotations

import httpx
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from hammerlock.auctions import service as auctions_service
from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.db.metadata import metadata
from hammerlock.escrow import storage as escrow_storage
from hammerlock.escrow.service import Escrow, EscrowConfig
from hammerlock.parties import service as parties_service
from hammerlock.parties import storage as parties_storage
from hammerlock.payments.gateways.base import Payout, PayoutRequest
from hammerlock.payments.service import Payments, PaymentsConfig
from hammerlock.risk.model import RiskRules
from hammerlock.risk.service import RulesAssessor
from hammerlock.security.permissions import Role
from tests.auctions.conftest import Market, idem
from tests.conftest import Keys
from tests.payments.fake_gateway import FakeGateway

MINE = {
    escrow_storage.escrow_orders.name,
    escrow_storage.escrow_order_events.name,
    parties_storage.payout_destinations.name,  # migration 0008
}


def _diff(conn: sa.Connection) -> list[object]:
    mine = sa.MetaData(naming_convention=metadata.naming_convention)
    for name in MINE:
        metadata.tables[name].to_metadata(mine)
    context = MigrationContext.configure(
        conn,
        opts={
            "include_name": lambda name, type_, _parent: type_ != "table" or name in MINE,
            "compare_type": True,
        },
    )
    return list(compare_metadata(context, mine))


async def test_storage_tables_match_the_migration(container: Container) -> None:
    async with container.db.engine.connect() as conn:
        diff = await conn.run_sync(_diff)
    assert diff == []


@pytest.fixture
def market(client: httpx.AsyncClient, keys: Keys, clock: FixedClock) -> Market:
    return Market(client, keys, clock)


async def _order_of(container: Container, lot_id: str) -> str:
    t = escrow_storage.escrow_orders
    async with container.db.transaction(write=False) as uow:
        rows = await uow.conn.execute(sa.select(t.c.id).where(t.c.lot_id == lot_id))
        [order_id] = [r[0] for r in rows]
    return str(order_id)


class RecordingPayouts(FakeGateway):
    def __init__(self) -> None:
        super().__init__()
        self.destinations: list[str] = []

    async def payout(self, request: PayoutRequest) -> Payout:
        self.destinations.append(request.destination)
        return await super().payout(request)


async def test_a_lot_from_bids_to_payout(
    market: Market, container: Container, clock: FixedClock
) -> None:
    fake = RecordingPayouts()
    container.gateways["sandbox"] = fake
    container.payments = Payments(
        container.db,
        container.gateways,
        config=PaymentsConfig(janitor_grace_s=0),
        risk=RulesAssessor(RiskRules()),
    )
    container.auctions.payments = container.payments
    container.escrow = Escrow(
        container.db,
        container.payments,
        container.gateways,
        config=EscrowConfig(sweeper_grace_s=0),
        card_on_file=parties_service.default_card,
        on_settled=auctions_service.mark_settled,
        payout_destination=parties_service.payout_destination,
    )
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    b = await market.party("bidder", "B")
    lot = await market.lot(
        seller,
        estimate=1_500_000,
        reserve_price=1_000_000,
        buyer_premium_bps=2_500,
        seller_commission_bps=1_000,
        payment_window_s=3_600,
        inspection_period_s=600,
    )
    for bidder in (a, b):
        r = await market.client.post(
            f"/v1/lots/{lot['id']}/deposits", json={}, headers={**bidder.headers, **idem()}
        )
        assert r.status_code == 200, r.text
    assert (await market.bid(lot["id"], a, 1_200_000)).status_code == 201
    assert (await market.bid(lot["id"], b, 1_100_000)).status_code == 201
    clock.advance(3_600)
    assert (await container.auctions.scheduler_pass(Context.system("tests")))["closed"] == 1
    order_id = await _order_of(container, lot["id"])

    r = await market.client.get(f"/v1/orders/{order_id}", headers=a.headers)
    order = r.json()
    assert order["status"] == "awaiting_payment"
    hammer = order["amounts"]["hammer_price"]
    assert hammer >= 1_100_000
    # The runner-up's maximum is never shown to the winner; staff see it.
    assert order["second_chance"]["amount"] is None
    staff_view = await market.client.get(f"/v1/orders/{order_id}", headers=await market.staff())
    assert staff_view.json()["second_chance"]["amount"] == 1_100_000
    assert (await market.client.get(f"/v1/orders/{order_id}", headers=b.headers)).status_code == 404
    # The lot names its order to those who may see it: the winner yes, the loser not.
    seen_by_a = (await market.client.get(f"/v1/lots/{lot['id']}", headers=a.headers)).json()
    assert [o["id"] for o in seen_by_a["orders"]] == [order_id]
    seen_by_b = (await market.client.get(f"/v1/lots/{lot['id']}", headers=b.headers)).json()
    assert seen_by_b["orders"] == []

    r = await market.client.post(
        f"/v1/orders/{order_id}/pay", json={}, headers={**a.headers, **idem()}
    )
    assert r.status_code == 200, r.text
    paid = r.json()
    total = paid["amounts"]["total"]
    deposit = paid["deposit"]["in_escrow"]
    assert deposit == 150_000  # 10 % of the estimate
    # The rest's charge is above the review threshold: the order waits for a reviewer.
    assert paid["payment_intent"]["amount"] == total - deposit
    assert paid["status"] == "awaiting_payment"
    assert paid["escrow_balance"] == deposit
    assert paid["payment_intent"]["status"] == "requires_review"
    review = paid["payment_intent"]["review"]["id"]
    reviewer = await market.keys.headers(Role.REVIEWER)
    r = await market.client.post(
        f"/v1/reviews/{review}/approve", json={}, headers={**reviewer, **idem()}
    )
    assert r.status_code == 200, r.text
    assert (await container.escrow.sweep(Context.system("tests")))["paid"] == 1

    r = await market.client.post(
        f"/v1/orders/{order_id}/ship",
        json={"carrier": "fedex", "tracking_number": "449044304137821"},
        headers={**seller.headers, **idem()},
    )
    assert r.json()["status"] == "shipped", r.text
    r = await market.client.post(
        f"/v1/orders/{order_id}/accept", json={}, headers={**a.headers, **idem()}
    )
    done = r.json()
    assert done["status"] == "released"
    assert done["escrow_balance"] == 0
    # The seller has no payout destination yet: the payout waits (not an error) ...
    assert done["payout"]["status"] == "no_destination"
    assert fake.destinations == []
    assert (await container.escrow.sweep(Context.system("tests")))["payouts"] == 0
    # ... until the seller names one (an account id at the gateway, never a card number).
    path = f"/v1/sellers/{seller.id}/payout_destination"
    for body, status in (
        ({"gateway_account": "4242424242424242"}, 400),  # pan_not_allowed, before validation
        ({"gateway_account": "a" * 129}, 422),
        ({"gateway_account": "acct 1"}, 422),
        ({"gateway_account": "acct_1", "extra": 1}, 422),
    ):
        r = await market.client.put(path, json=body, headers=seller.headers)
        assert r.status_code == status, r.text
    r = await market.client.put(path, json={"gateway_account": "acct_1"}, headers=a.headers)
    assert r.status_code == 403, r.text  # a bidder may not
    r = await market.client.put(
        path, json={"gateway_account": "acct_seller_1"}, headers=seller.headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["gateway_account"] == "acct_seller_1"
    assert (await container.escrow.sweep(Context.system("tests")))["payouts"] == 1
    r = await market.client.get(f"/v1/orders/{order_id}", headers=seller.headers)
    done = r.json()
    assert done["payout"]["status"] == "paid"
    assert fake.destinations == ["acct_seller_1"]
    events = [e["event"] for e in done["timeline"]]
    assert events[-3:] == ["payout_no_destination", "payout_started", "payout_paid"]
    assert done["released"]["to_seller"] == hammer - hammer // 10
    settled = (await market.client.get(f"/v1/lots/{lot['id']}", headers=a.headers)).json()
    assert settled["status"] == "settled"  # the release settled the lot, in its transaction

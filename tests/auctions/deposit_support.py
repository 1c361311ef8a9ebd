"""Shared setup for the deposit and renewal tests: escrow and payments wired on the fake
gateway, deposits, orders, intents, renewal attempts, and "a restart" (a fresh ``Auctions``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa

from hammerlock.auctions import service as auctions_service
from hammerlock.auctions import storage as auction_storage
from hammerlock.auctions.service import Auctions
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock, format_rfc3339
from hammerlock.escrow import storage as escrow_storage
from hammerlock.escrow.service import Escrow, EscrowConfig
from hammerlock.ledger import service as ledger
from hammerlock.ledger.errors import AccountNotFound
from hammerlock.parties import service as parties_service
from hammerlock.payments import storage as payments_storage
from hammerlock.payments.service import Payments, PaymentsConfig
from tests.auctions.conftest import Market, idem
from tests.payments.fake_gateway import FakeGateway

_DAY = 86_400


def wire(container: Container, gateway: FakeGateway) -> Escrow:
    """Payments and escrow on the fake gateway, as the e2e escrow test wires them."""
    container.gateways["sandbox"] = gateway
    container.payments = Payments(
        container.db, container.gateways, config=PaymentsConfig(janitor_grace_s=0)
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
    return container.escrow


async def order_of(container: Container, lot_id: str) -> dict[str, Any]:
    t = escrow_storage.escrow_orders
    async with container.db.transaction(write=False) as uow:
        rows = (await uow.conn.execute(sa.select(t).where(t.c.lot_id == lot_id))).mappings()
        [row] = list(rows)
    return dict(row)


async def posted(container: Container, account: str) -> int:
    async with container.db.transaction(write=False) as uow:
        try:
            acct = await ledger.get_account(uow, account)
        except AccountNotFound:
            return 0
    return acct.balances.credits_posted - acct.balances.debits_posted


async def make_deposit(market: Market, lot_id: str, bidder: Any) -> dict[str, Any]:
    r = await market.client.post(
        f"/v1/lots/{lot_id}/deposits", json={}, headers={**bidder.headers, **idem()}
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def deposit_intents(container: Container, lot_id: str) -> list[Any]:
    t = payments_storage.payment_intents
    async with container.db.transaction(write=False) as uow:
        rows = (await uow.conn.execute(sa.select(t.c.id))).scalars().all()
    intents = [(await container.payments.get(i))[0] for i in rows]
    return [i for i in intents if i.metadata.get("lot_id") == lot_id]


def restarted(auctions: Auctions) -> Auctions:
    init = [f.name for f in dataclasses.fields(auctions) if f.init]
    return type(auctions)(**{name: getattr(auctions, name) for name in init})


async def held_intents(container: Container, lot_id: str) -> list[str]:
    return [
        i.id
        for i in await deposit_intents(container, lot_id)
        if i.status.value == "requires_capture"
    ]


async def renewal_attempts(container: Container) -> list[auction_storage.Renewal]:
    t = auction_storage.deposit_renewals
    async with container.db.read() as uow:
        rows = (await uow.conn.execute(t.select().order_by(t.c.version))).mappings().all()
    return [auction_storage._renewal(r) for r in rows]


async def lot_with_deposit(
    market: Market, clock: FixedClock, *, days: float, reserve: int | None = None
) -> tuple[dict[str, Any], Any, str]:
    seller = await market.party("seller")
    a = await market.party("bidder", "A")
    extra = {} if reserve is None else {"reserve_price": reserve}
    lot = await market.lot(
        seller,
        estimate=2_000_000,
        ends_at=format_rfc3339(clock.now_us() + int(days * _DAY) * 1_000_000),
        **extra,
    )
    first = (await make_deposit(market, lot["id"], a))["payment_intent"]["id"]
    return lot, a, first

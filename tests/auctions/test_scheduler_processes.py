"""The closing scheduler across processes: three ``hammerlock serve`` processes share one
PostgreSQL database; 200 lots end within the same second; each is closed exactly once (one
``auctions.lot.close`` audit event, at most one order per lot) and the sold ones have an order.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from hammerlock.auctions.service import Auctions, NewLot
from hammerlock.auctions.storage import lots
from hammerlock.audit.model import Context
from hammerlock.audit.storage import audit_log, audit_outbox
from hammerlock.clock import SystemClock
from hammerlock.db.engine import Database, create_database
from hammerlock.escrow.storage import escrow_orders
from hammerlock.parties import service as parties
from hammerlock.parties.model import PartyKind
from hammerlock.payments.service import Payments
from hammerlock.settings import Settings
from tests.conftest import require_service
from tests.servers import Server, cluster

pytestmark = [pytest.mark.processes, pytest.mark.xdist_group("processes")]

LOTS = 200
NODES = 3
PEPPER = "scheduler-test-pepper"
DEADLINE_S = 60.0


@pytest.fixture
def backend() -> str:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return "postgresql"


@pytest.fixture
def servers(database_url: str, tmp_path: Path) -> Iterator[list[Server]]:
    with cluster(
        database_url, tmp_path, NODES, pepper=PEPPER, auctions_scheduler_interval_s="0.1"
    ) as started:
        yield started


@pytest.fixture
async def db(database_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    database = create_database(
        Settings(data_dir=tmp_path / "probe", database_url=database_url), SystemClock()
    )
    try:
        yield database
    finally:
        await database.dispose()


async def _seed(db: Database) -> set[str]:
    """200 open lots; every other one has a winning bid. (Their end is set afterwards.)"""
    ctx = Context.system("tests")
    pepper = PEPPER.encode()
    async with db.transaction() as uow:
        seller, _ = await parties.register(
            uow, ctx, kind=PartyKind.SELLER, name="s", email=None, pepper=pepper
        )
        bidder, _ = await parties.register(
            uow, ctx, kind=PartyKind.BIDDER, name="b", email=None, pepper=pepper
        )
        await parties.add_card(uow, ctx, bidder.id, payment_method="tok_ok", brand=None, last4=None)
    auctions = Auctions(db, Payments(db, {}))
    now = db.clock.now_us()
    sold: set[str] = set()
    for i in range(LOTS):
        lot = await auctions.create_lot(
            ctx,
            NewLot(
                seller_id=seller.id,
                title=f"lot {i}",
                currency="USD",
                estimate=0,
                starting_price=100,
                reserve_price=500,
                starts_at_us=now,
                ends_at_us=now + 600_000_000,
                soft_close_s=0,
            ),
        )
        await auctions.open_lot(ctx, lot.id)
        if i % 2 == 0:
            await auctions.place_bid(
                ctx, lot.id, bidder_id=bidder.id, max_amount=1_000, idempotency_key=None
            )
            sold.add(lot.id)
    return sold


async def _close_events(db: Database) -> tuple[Counter[str], Counter[str]]:
    async with db.snapshot() as uow:
        pending = (
            await uow.conn.execute(
                sa.select(audit_outbox.c.event).where(audit_outbox.c.action == "auctions.lot.close")
            )
        ).scalars()
        logged = (
            await uow.conn.execute(
                sa.select(audit_log.c.canonical).where(audit_log.c.action == "auctions.lot.close")
            )
        ).scalars()
        events = [orjson.loads(e) for e in [*pending, *logged]]
    by_lot = Counter(e["resource"]["id"] for e in events)
    return by_lot, Counter(e["origin"]["node"] for e in events)


async def test_each_lot_closes_exactly_once_across_three_processes(
    servers: list[Server], db: Database
) -> None:
    assert len(servers) == NODES
    sold = await _seed(db)
    # All 200 end within the same second, one second from now: the test moves the ends (after
    # seeding, whose duration varies with the machine's load).
    second_us = (db.clock.now_us() // 1_000_000 + 2) * 1_000_000
    async with db.transaction() as uow:
        ids = (await uow.conn.execute(sa.select(lots.c.id).order_by(lots.c.id))).scalars().all()
        for i, lot_id in enumerate(ids):
            end = second_us + i * 4_000
            await uow.conn.execute(
                lots.update().where(lots.c.id == lot_id).values(ends_at_us=end, latest_end_us=end)
            )
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        async with db.transaction(write=False) as uow:
            open_left = (
                await uow.conn.execute(
                    sa.select(sa.func.count()).select_from(lots).where(lots.c.status == "open")
                )
            ).scalar_one()
        if open_left == 0:
            break
        await asyncio.sleep(0.2)
    assert open_left == 0, f"{open_left} lots still open"
    await asyncio.sleep(0.5)  # any late duplicate would have committed by now
    closes, nodes = await _close_events(db)
    assert len(nodes) >= 2, nodes  # the processes did race for the same lots
    assert len(closes) == LOTS
    assert set(closes.values()) == {1}, [k for k, v in closes.items() if v != 1]
    async with db.transaction(write=False) as uow:
        rows = (await uow.conn.execute(sa.select(lots.c.id, lots.c.status))).all()
        orders = Counter(
            (await uow.conn.execute(sa.select(escrow_orders.c.lot_id))).scalars().all()
        )
    statuses = dict(rows)
    assert {k for k, v in statuses.items() if v == "closed"} == sold
    assert {k for k, v in statuses.items() if v == "unsold"} == set(statuses) - sold
    assert set(orders) == sold
    assert set(orders.values()) == {1}

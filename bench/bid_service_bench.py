"""Bids through the auctions service, without HTTP: what the group-committed write path itself
decides per second on one hot lot, on PostgreSQL (ADR 0013).

`make bench-auctions` measures bids through the HTTP API; this isolates the database side of it
(batches of bids, one transaction each), so the two together show where the time goes. Prints
its figures; nothing is written to docs/benchmarks.md.

Usage: .venv/bin/python bench/bid_service_bench.py [--callers 16 64] [--duration 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import asyncpg

from hammerlock.auctions.errors import BidTooLow
from hammerlock.auctions.service import NewLot
from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.clock import SystemClock
from hammerlock.db.migrate import migrate
from hammerlock.logs import configure_logging
from hammerlock.parties import service as parties
from hammerlock.parties.model import PartyKind
from hammerlock.settings import Settings

PG = "postgresql://postgres@127.0.0.1:5432"
DBNAME = "hl_bench_bid_service"
BIDDERS = 64
SPACING = 2_000_000  # cents between successive maxima: above the ask whatever the band


async def run(callers: int, duration_s: float, data_dir: Path) -> None:
    admin = await asyncpg.connect(f"{PG}/postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "{DBNAME}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{DBNAME}"')
    settings = Settings(
        data_dir=data_dir,
        database_url=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DBNAME}",
        api_key_pepper="bench-pepper-not-secret",  # type: ignore[arg-type]
        db_pool_size=20,
    )
    container = Container(settings, clock=SystemClock(), background=True)
    await migrate(container.db)
    await container.start()
    try:
        ctx = Context.system("bench")
        async with container.db.transaction() as uow:
            seller, _ = await parties.register(
                uow, ctx, kind=PartyKind.SELLER, name="s", email=None, pepper=container.pepper
            )
            bidders = []
            for i in range(BIDDERS):
                bidder, _ = await parties.register(
                    uow, ctx, kind=PartyKind.BIDDER, name=f"b{i}", email=None,
                    pepper=container.pepper,
                )  # fmt: skip
                await parties.add_card(
                    uow, ctx, bidder.id, payment_method=f"tok_{i}", brand=None, last4=None
                )
                bidders.append(bidder.id)
        now = container.clock.now_us()
        lot = await container.auctions.create_lot(
            ctx,
            NewLot(
                seller_id=seller.id,
                title="hot lot",
                currency="USD",
                estimate=0,
                starting_price=100,
                starts_at_us=now,
                ends_at_us=now + 3_600_000_000,
            ),
        )
        await container.auctions.open_lot(ctx, lot.id)
        accepted = refused = 0
        top = 0
        stop = time.monotonic() + duration_s

        async def caller(i: int) -> None:
            nonlocal accepted, refused, top
            while time.monotonic() < stop:
                top += SPACING
                try:
                    await container.auctions.place_bid(
                        ctx, lot.id, bidder_id=bidders[i % BIDDERS], max_amount=top,
                        idempotency_key=None,
                    )  # fmt: skip
                    accepted += 1
                except BidTooLow:
                    refused += 1

        started = time.monotonic()
        cpu0 = time.process_time()
        await asyncio.gather(*(caller(i) for i in range(callers)))
        elapsed, cpu = time.monotonic() - started, time.process_time() - cpu0
        writer = container.auctions.bids
        print(
            f"{callers:>3} callers: {accepted / elapsed:,.0f} accepted bids/s "
            f"({refused / elapsed:,.0f} refused/s), {writer.requests / max(writer.batches, 1):.1f} "
            f"bids per transaction, {1000 * cpu / max(accepted + refused, 1):.2f} ms CPU per bid "
            f"(load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    finally:
        await container.stop()
        await admin.execute(f'DROP DATABASE IF EXISTS "{DBNAME}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--duration", type=float, default=5)
    args = parser.parse_args()
    configure_logging("error", "console")  # the server's own logs (alerts on 250 new keys…)
    for callers in args.callers:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(run(callers, args.duration, Path(tmp)))


if __name__ == "__main__":
    main()

"""SQL statements and transactions per lot settlement step, counted in process.

The HTTP app (FastAPI, through httpx's ASGI transport: no sockets, no server process) on a
scratch PostgreSQL database, with the embedded card vault and the sandbox gateway, background
tasks off. Each lot is prepared (create, open, one bid) and then settled one step at a time:
close (admin) → `GET /v1/lots/{id}` (names the order) → pay (sandbox gateway through the vault)
→ ship → accept (release + payout). SQLAlchemy's `before_cursor_execute`, `begin`, `commit` and
`rollback` events on the app's engine count, per step, the statements sent to PostgreSQL
(BEGIN/COMMIT/ROLLBACK included, autocommit units not) and the transactions begun. Counts do not
depend on the machine: this is the database round-trip budget of a settlement, not its speed.
The ledger is checked afterwards.

`--show-sql` prints the statements of the last settlement. Appends the table with date and
machine to docs/benchmarks.md unless --no-record.

Usage: .venv/bin/python bench/settlement_statements.py [--lots 10] [--no-record] [--show-sql]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import os
import platform
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy import event
from sqlalchemy.engine import Connection

sys.path.insert(0, str(Path(__file__).resolve().parent))
from auction_bench import admin_sql, free_port, loadavg
from hammerlock.api.app import create_app
from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.clock import SystemClock
from hammerlock.db.engine import create_database
from hammerlock.db.migrate import migrate
from hammerlock.ledger.check import run_check
from hammerlock.logs import configure_logging
from hammerlock.security import service as keys_service
from hammerlock.security.permissions import Role
from hammerlock.settings import Settings
from hammerlock.vault.cli import start_embedded_vault, stop_embedded_vault

ROOT = Path(__file__).resolve().parent.parent
PG = "postgresql://postgres@127.0.0.1:5432"
DBNAME = "hl_bench_statements"
STEPS = ("close", "get lot", "pay", "ship", "accept")
CARD = {"number": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2034, "cvc": "123"}


class Counter:
    """Statements and transactions per step, from the engine's events (only while a step runs)."""

    def __init__(self) -> None:
        self.step: str | None = None
        self.statements: collections.Counter[str] = collections.Counter()
        self.transactions: collections.Counter[str] = collections.Counter()
        self.log: list[tuple[str, str]] = []

    @contextlib.contextmanager
    def during(self, step: str | None) -> Iterator[None]:
        self.step = step
        try:
            yield
        finally:
            self.step = None

    def attach(self, engine: Any) -> None:
        def autocommit(conn: Connection) -> bool:
            return bool(conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT")

        def count(sql: str, *, begin: bool = False) -> None:
            if self.step is not None:
                self.statements[self.step] += 1
                self.transactions[self.step] += int(begin)
                self.log.append((self.step, sql))

        @event.listens_for(engine, "before_cursor_execute", named=True)
        def _execute(**kw: Any) -> None:
            count(" ".join(str(kw["statement"]).split())[:160])

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            if not autocommit(conn):
                count("BEGIN", begin=True)

        @event.listens_for(engine, "commit")
        def _commit(conn: Connection) -> None:
            if not autocommit(conn):
                count("COMMIT")

        @event.listens_for(engine, "rollback")
        def _rollback(conn: Connection) -> None:
            if not autocommit(conn):
                count("ROLLBACK")


async def settle(container: Container, vault_url: str, lots: int, counter: Counter) -> None:
    async with container.db.transaction() as uow:
        created = await keys_service.create_key(
            uow, Context.system("bench"), pepper=container.pepper, role=Role.ADMIN, name="bench"
        )
    transport = httpx.ASGITransport(app=create_app(container), raise_app_exceptions=True)
    headers = {"Authorization": f"Bearer {created.plaintext}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://bench", headers=headers, timeout=60
    ) as api:

        async def post(
            path: str, body: dict[str, object], key: str | None = None, step: str | None = None
        ) -> dict[str, Any]:
            h = {"Idempotency-Key": str(uuid.uuid4())}
            if key:
                h["Authorization"] = f"Bearer {key}"
            with counter.during(step):
                r = await api.post(path, json=body, headers=h)
            if r.status_code >= 300:
                sys.exit(f"{path}: {r.status_code} {r.text}")
            result: dict[str, Any] = r.json()
            return result

        async with httpx.AsyncClient(timeout=30) as vault:
            r = await vault.post(f"{vault_url}/v1/tokens", json=CARD)
            r.raise_for_status()
            token = r.json()["id"]
        seller = await post("/v1/sellers", {"name": "bench seller"})
        r = await api.put(
            f"/v1/sellers/{seller['id']}/payout_destination", json={"gateway_account": "acct_b"}
        )
        r.raise_for_status()
        bidder = await post("/v1/bidders", {"name": "bench bidder"})
        await post(f"/v1/bidders/{bidder['id']}/cards", {"payment_method": token})
        for _ in range(lots):
            ends_at = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
            lot = await post(
                "/v1/lots",
                {
                    "seller_id": seller["id"],
                    "title": "bench lot",
                    "currency": "USD",
                    "estimate": 50_000,
                    "starting_price": 1_000,
                    "ends_at": ends_at.isoformat(),
                    "buyer_premium_bps": 2500,
                    "seller_commission_bps": 1000,
                },
            )
            await post(f"/v1/lots/{lot['id']}/open", {})
            await post(f"/v1/lots/{lot['id']}/bids", {"max_amount": 5_000}, key=bidder["api_key"])
            await post(f"/v1/lots/{lot['id']}/close", {}, step="close")
            with counter.during("get lot"):
                r = await api.get(f"/v1/lots/{lot['id']}")
            r.raise_for_status()
            order = r.json()["orders"][0]["id"]
            paid = await post(f"/v1/orders/{order}/pay", {}, step="pay")
            if paid["status"] != "paid":
                sys.exit(f"pay: {paid}")
            tracking = "1Z" + uuid.uuid4().hex[:16].upper()
            shipping: dict[str, object] = {"carrier": "ups", "tracking_number": tracking}
            await post(f"/v1/orders/{order}/ship", shipping, step="ship")
            done = await post(f"/v1/orders/{order}/accept", {}, step="accept")
            if done["status"] != "released":
                sys.exit(f"accept: {done}")
    report = await run_check(container.db)
    if not report.ok:
        sys.exit("ledger check found problems: " + "; ".join(report.lines()[:5]))


async def run(lots: int, data_dir: Path) -> tuple[Counter, str]:
    await admin_sql(f'DROP DATABASE IF EXISTS "{DBNAME}" WITH (FORCE)')
    await admin_sql(f'CREATE DATABASE "{DBNAME}"')
    conn = await asyncpg.connect(f"{PG}/{DBNAME}", timeout=10)
    try:
        pg_version = str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()
    os.environ.update(
        {
            "HAMMERLOCK_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DBNAME}",
            "HAMMERLOCK_DATA_DIR": str(data_dir),
            "HAMMERLOCK_LOG_LEVEL": "warning",
            "HAMMERLOCK_VAULT_PORT": str(free_port()),
            "HAMMERLOCK_VAULT_TOKENIZE_IP_LIMIT": "100000",
            "HAMMERLOCK_VAULT_TOKENIZE_CARD_LIMIT": "100000",
            "HAMMERLOCK_API_KEY_PEPPER": "bench-pepper",
        }
    )
    os.environ.pop("HAMMERLOCK_VAULT_URL", None)
    settings = Settings()
    db = create_database(settings, SystemClock())
    try:
        await migrate(db)
    finally:
        await db.dispose()
    vault, vault_url = start_embedded_vault(settings)
    counter = Counter()
    try:
        os.environ["HAMMERLOCK_VAULT_URL"] = vault_url
        container = Container(Settings(), background=False)
        await container.start()
        try:
            counter.attach(container.db.engine.sync_engine)
            await settle(container, vault_url, lots, counter)
        finally:
            await container.stop()
    finally:
        stop_embedded_vault(vault)
        await admin_sql(f'DROP DATABASE IF EXISTS "{DBNAME}" WITH (FORCE)')
    return counter, pg_version


def machine(pg_version: str) -> str:
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return (
        f"{platform.node()} · {os.cpu_count()} cores (nproc) · {mem_kb / 1024 / 1024:.0f} GiB · "
        f"{platform.python_implementation()} {platform.python_version()} · PostgreSQL {pg_version}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lots", type=int, default=10, help="lots settled (counts are averaged)")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs")
    parser.add_argument(
        "--show-sql", action="store_true", help="print the last settlement's statements"
    )
    args = parser.parse_args()
    if args.lots < 1:
        parser.error("--lots must be at least 1")
    n = args.lots
    configure_logging("warning", "console")  # not a log line per request
    load_start = loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        counter, pg_version = asyncio.run(run(n, Path(tmp) / "data"))
    st, tx = counter.statements, counter.transactions
    if args.show_sql:
        per_step: dict[str, list[str]] = collections.defaultdict(list)
        for step, sql in counter.log:
            per_step[step].append(sql)
        for step in STEPS:
            last = per_step[step][-(len(per_step[step]) // n) :] if per_step[step] else []
            print(f"==== {step} ({len(last)})")
            for sql in last:
                print("   ", sql)
    lines = [
        "",
        (
            f"### {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC — `make bench-auctions`: SQL "
            f"statements per lot settlement (`bench/settlement_statements.py`, {n} lots)"
        ),
        "",
        f"Machine: {machine(pg_version)} · load average {load_start} (1/5/15 min) at the start",
        "",
        (
            "In process (ASGI transport), embedded vault, sandbox gateway, background tasks off; "
            "statements sent to PostgreSQL per settlement (mean over the lots, BEGIN/COMMIT "
            "included) and transactions begun. Ledger check passed."
        ),
        "",
        "| step | statements | transactions |",
        "|---|---:|---:|",
        *(f"| {s} | {st[s] / n:.1f} | {tx[s] / n:.1f} |" for s in STEPS),
        f"| **total** | **{sum(st.values()) / n:.1f}** | **{sum(tx.values()) / n:.1f}** |",
    ]
    print("\n".join(lines))
    if not args.no_record:
        with (ROOT / "docs" / "benchmarks.md").open("a") as fh:
            fh.write("\n".join(lines) + "\n")
        print("appended to docs/benchmarks.md")


if __name__ == "__main__":
    main()

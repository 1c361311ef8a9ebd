"""`make bench-ledger`: the ledger against pgbench and a naive baseline, in one run, one machine.

1. pgbench's built-in TPC-B-like script (-s 10 -c 8 -j 2 -T 20) in a scratch database: the
   yardstick every other figure is divided by.
2. The transfer route over HTTP, one API process, load from wrk (a C client, so the client does
   not eat the server's CPU), 8 connections:
   - naive: one database transaction per request (HAMMERLOCK_LEDGER_GROUP_COMMIT=0);
   - group commit: concurrent requests coalesced into one transaction;
   - batches of 1,000 transfers per request (PostgreSQL, then SQLite in WAL, synchronous=FULL);
   - the same with every transfer debiting one hot account.
   Successes are counted on the ledger afterwards (rows in ledger_transfers), not by wrk.
3. `hammerlock ledger check` over >= 1,000,000 transfers on PostgreSQL.

Prints each figure and its ratio to pgbench, and appends them with the date and machine to
docs/benchmarks.md. Needs PostgreSQL on 127.0.0.1:5432, pgbench and wrk (installed via apt if
missing and run as root).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx

from hammerlock.clock import SystemClock
from hammerlock.db.engine import create_database
from hammerlock.db.migrate import migrate
from hammerlock.ledger.check import run_check
from hammerlock.ledger.model import AccountFlag, AccountInput, TransferInput
from hammerlock.ledger.service import LedgerRequest
from hammerlock.ledger.service import create_accounts as create
from hammerlock.ledger.writer import run_with_retries
from hammerlock.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG = "postgresql://postgres@127.0.0.1:5432"
LUA = ROOT / "bench" / "transfers.lua"
ACCOUNTS = 1_000


def sh(cmd: list[str], **kw: object) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600, **kw).stdout  # type: ignore[call-overload,no-any-return]


def ensure_tools() -> None:
    missing = [t for t in ("pgbench", "wrk") if shutil.which(t) is None]
    if missing and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=False, timeout=600)
    missing = [t for t in ("pgbench", "wrk") if shutil.which(t) is None]
    if missing:
        sys.exit(f"missing tools: {', '.join(missing)} (apt-get install {' '.join(missing)})")


async def admin(sql: str) -> None:
    conn = await asyncpg.connect(f"{PG}/test", timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def scalar(dsn: str, sql: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


def fresh_pg(name: str) -> str:
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    return f"{PG}/{name}"


def pgbench(duration_s: int) -> float:
    dsn = fresh_pg("hl_bench_pgbench")
    sh(["pgbench", "-i", "-s", "10", "-q", dsn])
    out = sh(["pgbench", "-c", "8", "-j", "2", "-T", str(duration_s), dsn])
    match = re.search(r"tps = ([0-9.]+)", out)
    if match is None:
        sys.exit(f"could not read pgbench output:\n{out}")
    return float(match.group(1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(db_url: str, *, group_commit: bool, data_dir: Path) -> Iterator[tuple[str, str]]:
    env = {
        **os.environ,
        "HAMMERLOCK_DATABASE_URL": db_url,
        "HAMMERLOCK_DATA_DIR": str(data_dir),
        "HAMMERLOCK_LOG_LEVEL": "warning",
        "HAMMERLOCK_LEDGER_GROUP_COMMIT": "1" if group_commit else "0",
        "HAMMERLOCK_DB_POOL_SIZE": "20",
    }
    sh([str(BIN / "hammerlock"), "migrate"], env=env)
    key = (
        sh(
            [str(BIN / "hammerlock"), "keys", "create", "--role", "service", "--name", "bench"],
            env=env,
        )
        .strip()
        .splitlines()[-1]
    )
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "hammerlock"), "serve", "--port", str(port), "--no-vault", "--no-migrate"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        else:
            sys.exit("server did not start")
        yield base, key
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def create_accounts(base: str, key: str, hot: str) -> None:
    accounts = [
        {"id": f"acc-{n}", "currency": "USD", "code": "bench"} for n in range(1, ACCOUNTS + 1)
    ]
    accounts.append({"id": hot, "currency": "USD", "code": "escrow"})
    r = httpx.post(
        f"{base}/v1/ledger/accounts",
        json={"accounts": accounts},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    r.raise_for_status()


def count_transfers(db_url: str, prefix: str) -> int:
    if db_url.startswith("sqlite"):
        import sqlite3  # noqa: PLC0415 - only for the SQLite scenarios

        path = db_url.split("///", 1)[1]
        with contextlib.closing(sqlite3.connect(path)) as conn:
            return int(
                conn.execute(
                    "SELECT count(*) FROM ledger_transfers WHERE id LIKE ?", (prefix + "-%",)
                ).fetchone()[0]
            )
    dsn = db_url.replace("postgresql+asyncpg://", "postgresql://")
    return asyncio.run(
        scalar(dsn, f"SELECT count(*) FROM ledger_transfers WHERE id LIKE '{prefix}-%'")
    )


def wrk(base: str, key: str, prefix: str, *, batch: int, hot: str, duration_s: int) -> str:
    return sh(
        [
            "wrk",
            "-t2",
            "-c8",
            f"-d{duration_s}s",
            "--timeout",
            "30s",
            "-s",
            str(LUA),
            base,
            "--",
            key,
            prefix,
            str(ACCOUNTS),
            str(batch),
            hot,
        ]
    )


def scenario(
    label: str, db_url: str, *, group_commit: bool, batch: int, hot: bool, duration_s: int
) -> float:
    prefix = re.sub(r"[^a-z0-9]", "", label.lower())[:20] + str(int(time.time()))
    with (
        tempfile.TemporaryDirectory() as data_dir,
        server(db_url, group_commit=group_commit, data_dir=Path(data_dir)) as (base, key),
    ):
        create_accounts(base, key, "hot-escrow")
        wrk(base, key, prefix + "w", batch=batch, hot="-", duration_s=2)  # warm-up
        started = time.monotonic()
        wrk(base, key, prefix, batch=batch, hot="hot-escrow" if hot else "-", duration_s=duration_s)
        elapsed = time.monotonic() - started
    ok = count_transfers(db_url, prefix)
    rate = ok / elapsed
    print(f"  {label:<58} {ok:>9} transfers  {rate:>10,.0f}/s", flush=True)
    return rate


async def fill(db_url: str, total: int) -> float:
    """Insert ``total`` transfers through the service (8,190 per transaction); time a check."""
    with tempfile.TemporaryDirectory() as d:
        db = create_database(Settings(data_dir=Path(d), database_url=db_url), SystemClock())
        await migrate(db)
        async with db.transaction() as uow:
            await create(
                uow,
                None,
                [
                    AccountInput(f"acc-{n}", "USD", "bench", AccountFlag(0), "{}")
                    for n in range(ACCOUNTS)
                ],
            )
        done, batch_no = 0, 0
        while done < total:
            size = min(8_190, total - done)
            transfers = [
                TransferInput(
                    id=f"fill-{batch_no}-{i}",
                    debit_account_id=f"acc-{(batch_no * 7 + i) % ACCOUNTS}",
                    credit_account_id=f"acc-{(batch_no * 7 + i + 1 + i % 5) % ACCOUNTS}",
                    amount=1 + i % 100,
                    currency="USD",
                    code="fill",
                )
                for i in range(size)
            ]
            await run_with_retries(db, [LedgerRequest(transfers, None, public=False)])
            done += size
            batch_no += 1
            if batch_no % 20 == 0:
                print(f"    filled {done:,}/{total:,}", flush=True)
        started = time.monotonic()
        report = await run_check(db)
        elapsed = time.monotonic() - started
        await db.dispose()
        if not report.ok:
            sys.exit("ledger check found problems: " + "; ".join(report.problems[:3]))
        return elapsed


def machine() -> str:
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    pg_version = sh(["pgbench", "--version"]).strip()
    return (
        f"{platform.node()} · {os.cpu_count()} cores (nproc) · {mem_kb / 1024 / 1024:.0f} GiB · "
        f"{platform.python_implementation()} {platform.python_version()} · {pg_version}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=20, help="seconds per load run")
    parser.add_argument("--check-transfers", type=int, default=1_000_000)
    parser.add_argument("--no-record", action="store_true", help="do not append to docs")
    args = parser.parse_args()
    ensure_tools()
    d = args.duration
    print(f"machine: {machine()}")
    print("pgbench TPC-B-like (-s 10 -c 8 -j 2):", flush=True)
    tps = pgbench(d)
    print(f"  {'pgbench tps':<58} {tps:>30,.0f}/s")
    rows: list[tuple[str, float, float | None]] = [
        ("pgbench TPC-B-like tps (the yardstick)", tps, None)
    ]

    pg_url = "postgresql+asyncpg://postgres@127.0.0.1:5432/"
    print("hammerlock over HTTP (1 API process, wrk -t2 -c8):", flush=True)
    runs = [
        ("1 transfer/request, naive (1 txn per request), PostgreSQL", False, 1, False, 1.0),
        ("1 transfer/request, group commit, PostgreSQL", True, 1, False, 1.0),
        ("1 transfer/request, group commit, hot account, PostgreSQL", True, 1, True, 1.0),
        ("1,000 transfers/request, group commit, PostgreSQL", True, 1000, False, 12.5),
        ("1,000 transfers/request, group commit, hot account, PostgreSQL", True, 1000, True, 12.5),
    ]
    for label, group, batch, hot, target in runs:
        fresh_pg("hl_bench_ledger")
        rate = scenario(
            label,
            pg_url + "hl_bench_ledger",
            group_commit=group,
            batch=batch,
            hot=hot,
            duration_s=d,
        )
        rows.append((label, rate, target))
    with tempfile.TemporaryDirectory() as sqlite_dir:
        for label, hot in (
            ("1,000 transfers/request, group commit, SQLite WAL FULL", False),
            ("1,000 transfers/request, group commit, hot account, SQLite", True),
        ):
            url = f"sqlite+aiosqlite:///{sqlite_dir}/{int(hot)}.db"
            rate = scenario(label, url, group_commit=True, batch=1000, hot=hot, duration_s=d)
            rows.append((label, rate, 12.5))

    print(f"ledger check over {args.check_transfers:,} transfers (PostgreSQL):", flush=True)
    check_db = fresh_pg("hl_bench_check")
    check_s = asyncio.run(
        fill(check_db.replace("postgresql://", "postgresql+asyncpg://"), args.check_transfers)
    )
    print(f"  ledger check: {check_s:.2f} s (target < 10 s)")
    for name in ("hl_bench_pgbench", "hl_bench_ledger", "hl_bench_check"):
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    lines = [
        "",
        f"### {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC — `make bench-ledger` (duration {d} s)",
        "",
        f"Machine: {machine()}",
        "",
        "| scenario | transfers/s | x pgbench | target |",
        "|---|---:|---:|---:|",
    ]
    for label, rate, target in rows:
        ratio = rate / tps
        lines.append(
            f"| {label} | {rate:,.0f} | {ratio:.2f}x | "
            + ("—" if target is None else f"≥ {target}x {'✅' if ratio >= target else '❌'}")
            + " |"
        )
    lines.append(
        f"| `hammerlock ledger check`, {args.check_transfers:,} transfers | {check_s:.2f} s | | "
        f"< 10 s {'✅' if check_s < 10 else '❌'} |"
    )
    print("\n".join(lines))
    if not args.no_record:
        with (ROOT / "docs" / "benchmarks.md").open("a") as fh:
            fh.write("\n".join(lines) + "\n")
        print("appended to docs/benchmarks.md")


if __name__ == "__main__":
    main()

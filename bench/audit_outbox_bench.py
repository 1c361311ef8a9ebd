"""What the audit outbox adds to a business transaction: a ledger transfer with and without its
audit event, measured in the same run, interleaved.

One transaction per transfer through the ledger service, as the naive API path runs it
(``ledger_service.post`` in ``db.transaction()``: lock the accounts, apply, write the transfer
and balances, commit with the backend's durability — SQLite WAL ``synchronous=FULL``,
PostgreSQL's defaults). "With": the request carries its context, so the ledger records its
``ledger.transfers.create`` event in ``audit_outbox`` in the same transaction (event built, RFC
8785 canonical form, one more INSERT). "Without": no context, no event — the only difference.
Modes alternate in blocks of ``--block`` transfers so a busy neighbour slows both alike; each
transfer is timed on its own (wall clock), and the medians are compared.

Target (issue #4): the outbox adds < 10% to the transaction's latency.

Usage: .venv/bin/python bench/audit_outbox_bench.py [--transfers N] [--block B]
       [--backend sqlite|postgresql]… [--doc]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit_bench_support import append_section, scratch_database
from hammerlock.audit.model import Actor, Context, Origin
from hammerlock.db.engine import Database
from hammerlock.ledger import service as ledger_service
from hammerlock.ledger.model import AccountFlag, AccountInput, TransferInput

TARGET = 0.10
ACCOUNTS = 100


async def transfer(db: Database, tid: str, ctx: Context | None, i: int) -> float:
    t = TransferInput(
        id=tid,
        debit_account_id=f"acc{i % ACCOUNTS}",
        credit_account_id=f"acc{(i + 1) % ACCOUNTS}",
        amount=1,
        currency="USD",
        code="bench",
    )
    started = time.perf_counter()
    async with db.transaction() as uow:
        [result] = await ledger_service.post(uow, [t], ctx=ctx, public=True)
    took = time.perf_counter() - started
    assert result == "ok", result
    return took


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(backend: str, transfers: int, block: int) -> list[str]:
    ctx = Context(
        actor=Actor(principal_id="prn_bench", role="service", key_id="key_bench"),
        origin=Origin(ip="10.0.0.7", user_agent="bench/1.0", node="bench-1"),
        request_id="req_bench",
    )
    async with scratch_database(backend) as (db, _settings):
        async with db.transaction() as uow:
            await ledger_service.create_accounts(
                uow,
                None,
                [
                    AccountInput(f"acc{i}", "USD", "bench", AccountFlag(0), "{}")
                    for i in range(ACCOUNTS)
                ],
            )
        for i in range(200):  # warm up both paths (statement caches, pages)
            await transfer(db, f"w{i}", ctx if i % 2 else None, i)
        timings: dict[bool, list[float]] = {True: [], False: []}
        for i in range(transfers * 2):
            with_event = (i // block) % 2 == 0
            timings[with_event].append(await transfer(db, f"t{i}", ctx if with_event else None, i))
    on, off = timings[True], timings[False]
    overhead = statistics.median(on) / statistics.median(off) - 1
    ok = "✅" if overhead < TARGET else "❌"
    print(
        f"{backend}: median {statistics.median(off) * 1e3:.3f} ms without the audit event, "
        f"{statistics.median(on) * 1e3:.3f} ms with it: {overhead:+.1%} "
        f"(p99 {pct(off, 0.99) * 1e3:.3f} / {pct(on, 0.99) * 1e3:.3f} ms)"
    )
    return [
        (
            f"| {backend}: transfer, no audit event (baseline) | "
            f"{statistics.median(off) * 1e3:.3f} | {pct(off, 0.9) * 1e3:.3f} | "
            f"{pct(off, 0.99) * 1e3:.3f} | | |"
        ),
        (
            f"| {backend}: transfer + `ledger.transfers.create` in `audit_outbox` | "
            f"{statistics.median(on) * 1e3:.3f} | {pct(on, 0.9) * 1e3:.3f} | "
            f"{pct(on, 0.99) * 1e3:.3f} | **{overhead:+.1%}** | < 10% {ok} |"
        ),
    ]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transfers", type=int, default=2_000, help="per mode")
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("--backend", action="append", choices=["sqlite", "postgresql"])
    parser.add_argument("--doc", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    lines = [
        (
            f"{args.transfers:,} transfers per mode, one transaction each, modes alternating in "
            f"blocks of {args.block}; latency in ms (wall clock, median / p90 / p99)."
        ),
        "",
        "| | median | p90 | p99 | outbox adds | target |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for backend in args.backend or ["sqlite", "postgresql"]:
        lines += await run(backend, args.transfers, args.block)
    if args.doc:
        append_section(
            "`make bench-audit`: the outbox's cost to a transfer (`bench/audit_outbox_bench.py`)",
            lines,
        )


if __name__ == "__main__":
    asyncio.run(main())

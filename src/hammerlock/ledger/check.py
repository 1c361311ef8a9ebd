"""``hammerlock ledger check``: recompute the ledger's invariants from its immutable records.

1. per currency, Σ debits = Σ credits (posted and pending);
2. each account's balances equal the sums of its transfers: posted, and pending (the holds no
   transfer resolved and that did not expire), and each hold's stored state agrees with them;
3. ledger_transfers refuses UPDATE and DELETE (its triggers are installed);
4. no limited account is over its limit, pending included.

Everything is computed by the database in a few aggregate queries, so it stays fast on millions
of transfers; it reads in one transaction so it sees one consistent state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from hammerlock.db.engine import Database
from hammerlock.ledger import storage

__all__ = ["CheckReport", "run_check"]


@dataclass(slots=True)
class CheckReport:
    transfers: int = 0
    currencies: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        currencies = "currency" if self.currencies == 1 else "currencies"
        head = f"checked {self.transfers} transfers in {self.currencies} {currencies}: " + (
            "all invariants hold" if self.ok else f"{len(self.problems)} problem(s)"
        )
        return [head, *self.problems]


async def _triggers_installed(db: Database) -> bool:
    async with db.transaction(write=False) as uow:
        if uow.is_postgres:
            query = sa.text(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'ledger_transfers'::regclass "
                "AND NOT tgisinternal"
            )
            return int((await uow.conn.execute(query)).scalar_one()) >= 2
        query = sa.text(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' "
            "AND tbl_name = 'ledger_transfers'"
        )
        return int((await uow.conn.execute(query)).scalar_one()) >= 2


async def run_check(db: Database, *, limit: int = 20) -> CheckReport:
    report = CheckReport()
    async with db.transaction(write=False) as uow:
        if uow.is_postgres:
            await uow.conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        report.transfers = await storage.count_transfers(uow)
        totals = await storage.currency_totals(uow)
        report.currencies = len(totals)
        for row in totals:
            if row["debits_posted"] != row["credits_posted"]:
                report.problems.append(
                    f"invariant 1: {row['currency']} posted debits {row['debits_posted']} != "
                    f"credits {row['credits_posted']}"
                )
            if row["debits_pending"] != row["credits_pending"]:
                report.problems.append(
                    f"invariant 1: {row['currency']} pending debits {row['debits_pending']} != "
                    f"credits {row['credits_pending']}"
                )
        for row in await storage.recomputed_mismatches(uow, limit):
            report.problems.append(
                f"invariant 2/4: account {row['id']}: stored "
                f"dp={row['debits_pending']} dpo={row['debits_posted']} "
                f"cp={row['credits_pending']} cpo={row['credits_posted']}, from transfers "
                f"dp={row['expected_debits_pending']} dpo={row['expected_debits_posted']} "
                f"cp={row['expected_credits_pending']} cpo={row['expected_credits_posted']}"
            )
        for row in await storage.hold_mismatches(uow, limit):
            resolution = (
                f"{row['resolved_as']} by {row['resolved_by']}"
                if row["resolved_by"]
                else "resolved by no transfer"
            )
            report.problems.append(
                f"invariant 2: hold {row['id']}: stored as {row['state']}, {resolution}"
            )
    if not await _triggers_installed(db):
        report.problems.append("invariant 3: ledger_transfers lacks its append-only triggers")
    return report

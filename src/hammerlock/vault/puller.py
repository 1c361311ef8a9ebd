"""Pulls the vault's audit events into the API's audit trail (the API runs it in background).

The vault keeps its own outbox (it has its own database); this puller, inside the API process,
asks ``GET /internal/v1/audit/events?after=N`` and inserts what it gets into the API's
``audit_outbox`` (from where the sequencer appends them to the Merkle log like any event).

Exactly-once, durably: the cursor ``N`` is the ``position`` of the ``audit_state`` row
``vault_puller:<vault>`` in the API database, and it advances in the same transaction as the
inserts. Inserts skip event ids already present (``audit_outbox.event_id`` is unique), and the
cursor moves only from the value this puller read (optimistic), so two API nodes pulling at once
insert each event once and one of them simply retries. The event is rebuilt field for field
(:func:`hammerlock.vault.wire.event_from_json`), so its canonical bytes are the vault's.
"""

from __future__ import annotations

import asyncio
import contextlib

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from hammerlock.audit.model import AuditEvent
from hammerlock.audit.service import canonical_bytes
from hammerlock.audit.storage import audit_outbox, audit_state
from hammerlock.db.engine import Database
from hammerlock.db.uow import UnitOfWork
from hammerlock.vault.client import VaultClient

__all__ = ["AuditPuller"]

log = structlog.get_logger("hammerlock.vault.puller")

MAX_PAGE = 1_000
_MAX_BACKOFF_S = 30.0


class AuditPuller:
    def __init__(
        self,
        db: Database,
        client: VaultClient,
        *,
        name: str = "vault",
        page_size: int = 500,
        interval_s: float = 1.0,
    ) -> None:
        if not 1 <= page_size <= MAX_PAGE:
            raise ValueError(f"page_size must be 1 to {MAX_PAGE}")
        self.db = db
        self.client = client
        self.state = f"vault_puller:{name}"[:64]
        self.page_size = page_size
        self.interval_s = interval_s

    def __repr__(self) -> str:
        return f"AuditPuller({self.state})"

    @staticmethod
    def _insert_ignoring(uow: UnitOfWork, table: sa.Table, column: str) -> sa.Insert:
        insert = pg_insert(table) if uow.is_postgres else sqlite_insert(table)
        return insert.on_conflict_do_nothing(index_elements=[column])

    async def cursor(self) -> int:
        async with self.db.transaction() as uow:
            await uow.conn.execute(
                self._insert_ignoring(uow, audit_state, "name").values(name=self.state, position=0)
            )
            position = await uow.conn.scalar(
                sa.select(audit_state.c.position).where(audit_state.c.name == self.state)
            )
        return int(position or 0)

    async def run_once(self) -> int:
        """Pull one page; returns how many events it brought in (0: caught up, or lost a race)."""
        after = await self.cursor()
        events, next_after = await self.client.audit_events(after=after, limit=self.page_size)
        if not events:
            return 0
        async with self.db.transaction() as uow:
            inserted = await self._insert_events(uow, events)
            moved = await uow.conn.execute(
                audit_state.update()
                .where(audit_state.c.name == self.state, audit_state.c.position == after)
                .values(position=next_after, updated_us=uow.clock.now_us())
            )
            if moved.rowcount != 1:
                raise _LostRace
        log.debug("vault.audit_pulled", count=len(events), inserted=inserted, position=next_after)
        return len(events)

    async def _insert_events(self, uow: UnitOfWork, events: list[AuditEvent]) -> int:
        rows = [
            {
                "event_id": e.event_id,
                "ts_us": e.ts_us,
                "action": e.action,
                "event": canonical_bytes(e).decode(),
            }
            for e in events
        ]
        result = await uow.conn.execute(
            self._insert_ignoring(uow, audit_outbox, "event_id"),
            rows,
        )
        return max(result.rowcount, 0)

    async def run_forever(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        failures = 0
        while not stop.is_set():
            try:
                pulled = await self.run_once()
                failures = 0
            except _LostRace:
                continue
            except Exception as exc:  # noqa: BLE001 - the vault may be down: retry, never die
                failures += 1
                log.warning("vault.audit_pull_failed", error=type(exc).__name__, attempt=failures)
                pulled = 0
            if pulled >= self.page_size:
                continue
            delay = min(self.interval_s * (2 ** min(failures, 5)), _MAX_BACKOFF_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)


class _LostRace(Exception):
    """Another puller moved the cursor first; this transaction rolled back."""

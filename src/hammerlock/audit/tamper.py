"""Alerts on attempts to change the audit trail (PCI DSS 10.3.4): :class:`TamperGuard`.

The append-only triggers (migrations 0002/0003) refuse UPDATE, DELETE and TRUNCATE on
``audit_log``, ``audit_tree_heads``, ``audit_tree_tiles`` and ``audit_signing_keys``. The
refusal aborts the statement's transaction, and with it anything the trigger could have written:
a row, a ``NOTIFY`` (delivered only on commit), a counter. So the record of an attempt has to
be made *outside* that transaction, by someone who sees it. Three watchers, each for what it can
see (docs/audit.md, "Tampering alerts"):

1. **Refusals the application sees.** :meth:`TamperGuard.install` listens for errors on the
   engine (SQLAlchemy ``handle_error``); when one is the triggers' refusal — a statement that
   reached the database through this process (an injection, a bug, a tool on the app's pool) —
   it records an ``audit.tamper_attempt`` event (outcome ``failure``, code ``append_only``,
   the operation, the table and the request id if any) in a *fresh* transaction, and logs it.
2. **The guard itself switched off.** :meth:`TamperGuard.check_triggers` (every
   ``interval_s`` in :meth:`TamperGuard.watch_forever`) reads the catalog: every append-only
   trigger present and enabled (PostgreSQL ``pg_trigger.tgenabled``, SQLite ``sqlite_master``)
   and, on PostgreSQL, ``hammerlock_refuse_change()`` still raising. Anything missing is what an
   insider does *before* a change that succeeds; it records ``audit.guard_missing`` (once per
   change of what is missing, and ``audit.guard_restored`` when it is whole again).
3. **A change that got through** (triggers off, edit, triggers back within one interval) leaves
   no trace in the catalog but breaks the hashes: ``hammerlock audit verify`` (scheduled) finds
   it and records ``audit.verify`` with outcome ``failure``.

The alert rules (:mod:`hammerlock.audit.alerts`) turn the first two into a critical
``audit_tamper`` alert and the third into ``audit_verify_failed``. What none of them sees: a
refused statement typed into ``psql`` by someone with database access (nothing changed, and
nothing the database keeps survives the abort); PostgreSQL writes the refusal to its server log
(``ERROR: hammerlock: UPDATE on audit_log is not allowed``), which is where a SIEM watches for it.

Bounds: at most ``max_pending`` attempts are being recorded at once (a flood beyond that is
counted in :attr:`TamperGuard.dropped` and logged, never queued without limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy import event as sa_event
from sqlalchemy.engine import ExceptionContext

from hammerlock.audit.model import Context, Outcome
from hammerlock.audit.service import record
from hammerlock.db.engine import Database
from hammerlock.db.uow import UnitOfWork

__all__ = ["APPEND_ONLY_TABLES", "TamperGuard", "refusal_of"]

log = structlog.get_logger("hammerlock.audit.tamper")

APPEND_ONLY_TABLES = ("audit_log", "audit_tree_heads", "audit_tree_tiles", "audit_signing_keys")
_REFUSAL = re.compile(
    r"hammerlock: (UPDATE|DELETE|TRUNCATE) on ([a-z_]+) is not allowed \(append-only\)"
)
_MAX_LISTED = 20


def refusal_of(error: BaseException) -> tuple[str, str] | None:
    """(operation, table) if ``error`` is an append-only trigger's refusal on an audit table."""
    found = _REFUSAL.search(str(error))
    if found is None or found.group(2) not in APPEND_ONLY_TABLES:
        return None
    return found.group(1), found.group(2)


class TamperGuard:
    def __init__(self, db: Database, *, node: str, max_pending: int = 100) -> None:
        self._db = db
        self._ctx = Context.system("audit.tamper_guard", node=node)
        self._max_pending = max_pending
        self._pending: set[asyncio.Task[None]] = set()
        self._installed = False
        self._missing: tuple[str, ...] | None = None  # as of the last check
        self.recorded = 0  # tamper attempts recorded
        self.dropped = 0  # tamper attempts not recorded (max_pending reached)

    # --- 1. refusals seen by this process --------------------------------------------------

    def install(self) -> None:
        """Listen for the triggers' refusals on this process's engine (idempotent)."""
        if not self._installed:
            sa_event.listen(self._db.engine.sync_engine, "handle_error", self._on_error)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            sa_event.remove(self._db.engine.sync_engine, "handle_error", self._on_error)
            self._installed = False

    def _on_error(self, context: ExceptionContext) -> None:
        refused = refusal_of(context.original_exception)
        if refused is None:
            return
        operation, table = refused
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        log.error("audit.tamper_attempt", operation=operation, table=table, request_id=request_id)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a synchronous caller: the log line above is all there is
            self.dropped += 1
            return
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            return
        task = loop.create_task(self._record_attempt(operation, table, request_id))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _record_attempt(self, operation: str, table: str, request_id: Any) -> None:
        ctx = self._ctx
        if isinstance(request_id, str):
            ctx = Context(actor=ctx.actor, origin=ctx.origin, request_id=request_id[:64])
        try:
            async with self._db.transaction() as uow:
                await record(
                    uow,
                    ctx.event(
                        "audit.tamper_attempt",
                        resource_type=table,
                        resource_id=None,
                        ts_us=uow.clock.now_us(),
                        outcome=Outcome.FAILURE,
                        outcome_code="append_only",
                        details={"operation": operation, "table": table},
                    ),
                )
            self.recorded += 1
        except Exception:  # the attempt is logged above; this failure is logged with its trace
            log.exception("audit.tamper_attempt_unrecorded", operation=operation, table=table)

    async def flush(self) -> None:
        """Wait until every attempt seen so far is recorded (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    # --- 2. the triggers themselves --------------------------------------------------------

    async def check_triggers(self) -> list[str]:
        """What is missing from the append-only guard now (empty: whole); records
        ``audit.guard_missing`` / ``audit.guard_restored`` when that changed."""
        async with self._db.transaction() as uow:
            missing = await (_missing_pg(uow) if uow.is_postgres else _missing_sqlite(uow))
            now = tuple(missing)
            if now != self._missing and (now or self._missing):
                await self._record_guard(uow, now)
        if now and now != self._missing:
            log.error("audit.guard_missing", missing=list(now[:_MAX_LISTED]))
        self._missing = now
        return missing

    async def _record_guard(self, uow: UnitOfWork, missing: tuple[str, ...]) -> None:
        await record(
            uow,
            self._ctx.event(
                "audit.guard_missing" if missing else "audit.guard_restored",
                resource_type="audit_log",
                resource_id=None,
                ts_us=uow.clock.now_us(),
                outcome=Outcome.FAILURE if missing else Outcome.SUCCESS,
                outcome_code="append_only_guard_missing" if missing else None,
                details={"missing": list(missing[:_MAX_LISTED]), "count": len(missing)},
            ),
        )

    async def watch_forever(self, stop: asyncio.Event, interval_s: float = 30.0) -> None:
        """Check the triggers every ``interval_s`` until ``stop``."""
        while not stop.is_set():
            try:
                await self.check_triggers()
            except Exception:  # the watch must outlive a transient DB error; logged with trace
                log.exception("audit.guard_check_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)


async def _missing_pg(uow: UnitOfWork) -> list[str]:
    rows = await uow.conn.execute(
        sa.text(
            "SELECT c.relname, t.tgname, t.tgenabled::text AS tgenabled FROM pg_trigger t "
            "JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE NOT t.tgisinternal AND c.relname = ANY(:tables) "
            "AND c.relnamespace = to_regnamespace(current_schema())::oid"
        ),
        {"tables": list(APPEND_ONLY_TABLES)},
    )
    enabled = {f"{r.relname}.{r.tgname}" for r in rows if str(r.tgenabled) in {"O", "A"}}
    expected = [
        f"{table}.{table}_{kind}"
        for table in APPEND_ONLY_TABLES
        for kind in ("append_only", "no_truncate")
    ]
    missing = [f"trigger {name} (missing or disabled)" for name in expected if name not in enabled]
    source = (
        await uow.conn.execute(
            sa.text(
                "SELECT prosrc FROM pg_proc WHERE proname = 'hammerlock_refuse_change' "
                "AND pronamespace = to_regnamespace(current_schema())::oid"
            )
        )
    ).scalar_one_or_none()
    if source is None or "RAISE EXCEPTION" not in str(source).upper():
        missing.append("function hammerlock_refuse_change() (missing or no longer raises)")
    return missing


async def _missing_sqlite(uow: UnitOfWork) -> list[str]:
    rows = await uow.conn.execute(
        sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
    )
    refusing = {r.name for r in rows if "RAISE(ABORT" in str(r.sql).upper().replace(" ", "")}
    return [
        f"trigger {name} (missing or no longer refuses)"
        for name in _sqlite_triggers(APPEND_ONLY_TABLES)
        if name not in refusing
    ]


def _sqlite_triggers(tables: Sequence[str]) -> list[str]:
    return [f"{table}_no_{verb}" for table in tables for verb in ("update", "delete")]

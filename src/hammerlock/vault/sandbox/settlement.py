"""The sandbox's daily settlement file, for reconciliation.

``<data_dir>/sandbox/settlements/YYYY-MM-DD.csv``: every capture, refund and payout of that UTC
day, in time order, one per line, with a header row. Columns:

=================  ===============================================================
``record_type``    ``capture`` | ``refund`` | ``payout``
``record_id``      ``ch_…`` (capture), ``re_…`` (refund), ``po_…`` (payout)
``charge_id``      the charge captured or refunded; empty for payouts
``reference_key``  our key: ``gateway_key`` (capture), ``refund_key``, ``payout_key``
``amount_minor``   integer minor units, always positive (the type says the direction)
``currency``       ISO 4217 code
``occurred_at``    RFC 3339 UTC with microseconds
``card_brand``     e.g. ``visa``; empty for payouts
``card_last4``     the last four digits only; empty for payouts
=================  ===============================================================

Rewriting a day replaces its file atomically (temporary file, fsync, rename), so a reader sees
the old file or the new one, never half of one. The sandbox charges no fees.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from hammerlock.clock import format_rfc3339, to_us
from hammerlock.vault.sandbox import store

__all__ = ["COLUMNS", "settlement_path", "write_settlement"]

COLUMNS: Final = (
    "record_type",
    "record_id",
    "charge_id",
    "reference_key",
    "amount_minor",
    "currency",
    "occurred_at",
    "card_brand",
    "card_last4",
)


def settlement_path(data_dir: Path, day: date) -> Path:
    return data_dir / "sandbox" / "settlements" / f"{day.isoformat()}.csv"


def _render(rows: list[tuple[Any, ...]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for record_type, record_id, charge_id, key, amount, currency, at_us, brand, last4 in rows:
        at = format_rfc3339(at_us)
        writer.writerow(
            [record_type, record_id, charge_id, key, amount, currency, at, brand, last4]
        )
    return buffer.getvalue().encode()


def write_settlement(data_dir: Path, day: date) -> Path:
    """Write (or rewrite) the settlement file of ``day`` (UTC) from the sandbox's records under
    ``data_dir``; returns its path. Callable from the CLI: no event loop needed."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    start_us, end_us = to_us(start), to_us(start + timedelta(days=1))
    db_path = data_dir / "sandbox" / "charges.db"
    store.initialize(db_path)
    with store.read(db_path) as conn:
        rows = store.settlement_rows(conn, start_us, end_us)
    target = settlement_path(data_dir, day)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(_render(rows))
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target

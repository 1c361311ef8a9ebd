"""The sandbox bank's own books: ``<data_dir>/sandbox/charges.db`` (SQLite, WAL, synchronous=FULL).

One row per charge (``gateway_key`` unique), plus refunds, payouts and a webhook outbox
(``events``), written in the same transaction as the change they describe. Several vault
processes may share the file: every write runs in ``BEGIN IMMEDIATE`` and the unique keys decide
races. Never a card number here: brand, last4 and a keyed fingerprint only.

Synchronous on purpose (``sqlite3``): the gateway runs these functions in a worker thread, one
short-lived connection per operation, so nothing is shared between threads or processes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from hammerlock.vault.sandbox.model import ChargeRow, PayoutRow, RefundRow

__all__ = [
    "EventRow",
    "charge_by_key",
    "charge_by_token",
    "initialize",
    "insert_charge",
    "insert_event",
    "insert_payout",
    "insert_refund",
    "list_charges",
    "mark_event_attempt",
    "payout_by_key",
    "pending_events",
    "read",
    "refund_by_key",
    "save_charge",
    "settlement_rows",
    "write",
]

BUSY_TIMEOUT_MS: Final = 10_000

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS charges (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    charge_id TEXT NOT NULL UNIQUE,
    gateway_key TEXT NOT NULL UNIQUE,
    request_hash TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    capture_requested INTEGER NOT NULL,
    status TEXT NOT NULL,
    amount_captured INTEGER NOT NULL DEFAULT 0 CHECK (amount_captured BETWEEN 0 AND amount),
    amount_refunded INTEGER NOT NULL DEFAULT 0
        CHECK (amount_refunded BETWEEN 0 AND amount_captured),
    error_code TEXT,
    decline_code TEXT,
    message TEXT,
    challenge_token TEXT UNIQUE,
    challenge_expires_us INTEGER,
    challenge_outcome TEXT,
    return_url TEXT,
    brand TEXT,
    last4 TEXT NOT NULL CHECK (length(last4) = 4),
    fingerprint TEXT NOT NULL,
    description TEXT,
    created_us INTEGER NOT NULL,
    updated_us INTEGER NOT NULL,
    captured_us INTEGER,
    voided_us INTEGER
);
CREATE INDEX IF NOT EXISTS charges_captured_us ON charges (captured_us);
CREATE TABLE IF NOT EXISTS refunds (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    refund_id TEXT NOT NULL UNIQUE,
    refund_key TEXT NOT NULL UNIQUE,
    charge_id TEXT NOT NULL REFERENCES charges (charge_id),
    gateway_key TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    status TEXT NOT NULL,
    created_us INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS refunds_created_us ON refunds (created_us);
CREATE TABLE IF NOT EXISTS payouts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    payout_id TEXT NOT NULL UNIQUE,
    payout_key TEXT NOT NULL UNIQUE,
    destination TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    status TEXT NOT NULL,
    created_us INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS payouts_created_us ON payouts (created_us);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    body BLOB NOT NULL,
    created_us INTEGER NOT NULL,
    delivered_us INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_pending ON events (delivered_us, seq);
"""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def initialize(path: Path) -> None:
    """Create the directory, the file (WAL) and the tables if missing. Idempotent."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with closing(_connect(path)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


@contextmanager
def write(path: Path) -> Iterator[sqlite3.Connection]:
    """One write transaction (``BEGIN IMMEDIATE``): commits on success, rolls back on error."""
    with closing(_connect(path)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


@contextmanager
def read(path: Path) -> Iterator[sqlite3.Connection]:
    """One consistent read snapshot."""
    with closing(_connect(path)) as conn:
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("ROLLBACK")


def _charge(row: sqlite3.Row) -> ChargeRow:
    values: dict[str, Any] = dict(zip(row.keys(), tuple(row), strict=True))
    values["capture_requested"] = bool(values["capture_requested"])
    return ChargeRow(**values)


_CHARGE_COLUMNS: Final = tuple(f for f in ChargeRow.__dataclass_fields__ if f != "seq")
_MUTABLE_COLUMNS: Final = (
    "status",
    "amount_captured",
    "amount_refunded",
    "error_code",
    "decline_code",
    "message",
    "challenge_outcome",
    "updated_us",
    "captured_us",
    "voided_us",
)


@dataclass(frozen=True, slots=True)
class EventRow:
    seq: int
    event_id: str
    type: str
    body: bytes
    attempts: int


def charge_by_key(conn: sqlite3.Connection, gateway_key: str) -> ChargeRow | None:
    row = conn.execute("SELECT * FROM charges WHERE gateway_key = ?", (gateway_key,)).fetchone()
    return None if row is None else _charge(row)


def charge_by_token(conn: sqlite3.Connection, token: str) -> ChargeRow | None:
    row = conn.execute("SELECT * FROM charges WHERE challenge_token = ?", (token,)).fetchone()
    return None if row is None else _charge(row)


def insert_charge(conn: sqlite3.Connection, charge: ChargeRow) -> None:
    """Raises ``sqlite3.IntegrityError`` when the gateway key is taken (another process won)."""
    names = ", ".join(_CHARGE_COLUMNS)
    marks = ", ".join("?" for _ in _CHARGE_COLUMNS)
    values = tuple(getattr(charge, name) for name in _CHARGE_COLUMNS)
    conn.execute(f"INSERT INTO charges ({names}) VALUES ({marks})", values)  # noqa: S608 - fixed names


def save_charge(conn: sqlite3.Connection, charge: ChargeRow) -> None:
    assignments = ", ".join(f"{name} = ?" for name in _MUTABLE_COLUMNS)
    values = (*(getattr(charge, name) for name in _MUTABLE_COLUMNS), charge.gateway_key)
    sql = f"UPDATE charges SET {assignments} WHERE gateway_key = ?"  # noqa: S608 - fixed names
    if conn.execute(sql, values).rowcount != 1:
        raise LookupError("charge vanished inside its own transaction")


def refund_by_key(conn: sqlite3.Connection, refund_key: str) -> RefundRow | None:
    row = conn.execute(
        "SELECT refund_id, refund_key, charge_id, gateway_key, amount, currency, status, "
        "created_us FROM refunds WHERE refund_key = ?",
        (refund_key,),
    ).fetchone()
    return None if row is None else RefundRow(*row)


def insert_refund(conn: sqlite3.Connection, refund: RefundRow) -> None:
    conn.execute(
        "INSERT INTO refunds (refund_id, refund_key, charge_id, gateway_key, amount, currency, "
        "status, created_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            refund.refund_id,
            refund.refund_key,
            refund.charge_id,
            refund.gateway_key,
            refund.amount,
            refund.currency,
            refund.status,
            refund.created_us,
        ),
    )


def payout_by_key(conn: sqlite3.Connection, payout_key: str) -> PayoutRow | None:
    row = conn.execute(
        "SELECT payout_id, payout_key, destination, amount, currency, status, created_us "
        "FROM payouts WHERE payout_key = ?",
        (payout_key,),
    ).fetchone()
    return None if row is None else PayoutRow(*row)


def insert_payout(conn: sqlite3.Connection, payout: PayoutRow) -> None:
    conn.execute(
        "INSERT INTO payouts (payout_id, payout_key, destination, amount, currency, status, "
        "created_us) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            payout.payout_id,
            payout.payout_key,
            payout.destination,
            payout.amount,
            payout.currency,
            payout.status,
            payout.created_us,
        ),
    )


def insert_event(
    conn: sqlite3.Connection, event_id: str, type_: str, body: bytes, created_us: int
) -> None:
    conn.execute(
        "INSERT INTO events (event_id, type, body, created_us) VALUES (?, ?, ?, ?)",
        (event_id, type_, body, created_us),
    )


def pending_events(conn: sqlite3.Connection, *, limit: int, max_attempts: int) -> list[EventRow]:
    rows = conn.execute(
        "SELECT seq, event_id, type, body, attempts FROM events "
        "WHERE delivered_us IS NULL AND attempts < ? ORDER BY seq LIMIT ?",
        (max_attempts, limit),
    ).fetchall()
    return [EventRow(*row) for row in rows]


def mark_event_attempt(conn: sqlite3.Connection, seq: int, *, delivered_us: int | None) -> None:
    conn.execute(
        "UPDATE events SET attempts = attempts + 1, delivered_us = ? WHERE seq = ?",
        (delivered_us, seq),
    )


def list_charges(
    conn: sqlite3.Connection, *, limit: int, before_seq: int | None, key_prefix: str | None
) -> list[ChargeRow]:
    """Newest first, ``limit`` rows with ``seq < before_seq``, optionally by gateway-key prefix."""
    clauses = ["1 = 1"]
    params: list[object] = []
    if before_seq is not None:
        clauses.append("seq < ?")
        params.append(before_seq)
    if key_prefix:
        clauses.append("substr(gateway_key, 1, ?) = ?")
        params.extend([len(key_prefix), key_prefix])
    sql = f"SELECT * FROM charges WHERE {' AND '.join(clauses)} ORDER BY seq DESC LIMIT ?"  # noqa: S608 - fixed clauses
    params.append(limit)
    return [_charge(row) for row in conn.execute(sql, params).fetchall()]


def settlement_rows(conn: sqlite3.Connection, start_us: int, end_us: int) -> list[tuple[Any, ...]]:
    """Captures, refunds and payouts in ``[start_us, end_us)``, in time order, as
    ``(record_type, record_id, charge_id, reference_key, amount, currency, occurred_us,
    brand, last4)``."""
    sql = """
        SELECT 'capture', charge_id, charge_id, gateway_key, amount_captured, currency,
               captured_us, brand, last4
          FROM charges WHERE captured_us >= :start AND captured_us < :end
        UNION ALL
        SELECT 'refund', r.refund_id, r.charge_id, r.refund_key, r.amount, r.currency,
               r.created_us, c.brand, c.last4
          FROM refunds r JOIN charges c ON c.charge_id = r.charge_id
         WHERE r.created_us >= :start AND r.created_us < :end
        UNION ALL
        SELECT 'payout', payout_id, '', payout_key, amount, currency, created_us, '', ''
          FROM payouts WHERE created_us >= :start AND created_us < :end
        ORDER BY 7, 2
    """
    return [tuple(row) for row in conn.execute(sql, {"start": start_us, "end": end_us})]

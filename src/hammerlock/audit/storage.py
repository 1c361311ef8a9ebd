"""The audit tables and the queries that read them.

``audit_outbox``, ``audit_log`` and ``audit_tree_heads`` are fixed names: operators and external
auditors point their own tools at them. Only the audit package imports this module.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa

from hammerlock.audit.model import EventFilter, SigningKey, TreeHead
from hammerlock.db.metadata import metadata
from hammerlock.db.uow import UnitOfWork

__all__ = [
    "LOG_COLUMNS",
    "OUTBOX_INSERT",
    "SEQUENCER_STATE",
    "TILE_LEVEL",
    "TILE_SIZE",
    "LogRow",
    "SequencerState",
    "StoredEvent",
    "append_log",
    "audit_log",
    "audit_outbox",
    "audit_signing_keys",
    "audit_state",
    "audit_tree_heads",
    "audit_tree_tiles",
    "count_stray_tiles",
    "insert_outbox",
    "leaf_hashes",
    "log_pages_sqlite",
    "log_rows",
    "log_rows_raw",
    "max_seq",
    "outbox_params",
    "select_events",
    "sequencer_state",
    "signing_keys",
    "sqlite_file",
    "take_outbox",
    "tile_roots",
    "tiles_page",
    "tree_head_at",
    "tree_heads_after",
    "tree_heads_upto",
]

# audit_tree_tiles holds the root of every complete block of 2**TILE_LEVEL leaves (a "tile"),
# written by the sequencer in the transaction that completes the block; proofs read them instead
# of the leaves (hammerlock.audit.proofs).
TILE_LEVEL = 8
TILE_SIZE = 1 << TILE_LEVEL

audit_outbox = sa.Table(
    "audit_outbox",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),
    sa.Column("ts_us", sa.BigInteger, nullable=False),
    sa.Column("action", sa.String(128), nullable=False),
    sa.Column("event", sa.Text, nullable=False),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),
    sa.Column("ts_us", sa.BigInteger, nullable=False),
    sa.Column("action", sa.String(128), nullable=False),
    sa.Column("actor_id", sa.String(128), nullable=True),
    sa.Column("resource_type", sa.String(64), nullable=True),
    sa.Column("resource_id", sa.String(256), nullable=True),
    sa.Column("canonical", sa.Text, nullable=False),
    sa.Column("leaf_hash", sa.String(64), nullable=False),
)

audit_tree_heads = sa.Table(
    "audit_tree_heads",
    metadata,
    sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("root_hash", sa.String(64), nullable=False),
    sa.Column("timestamp", sa.String(40), nullable=False),
    sa.Column("ts_us", sa.BigInteger, nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("signature", sa.String(128), nullable=False),
)

audit_tree_tiles = sa.Table(
    "audit_tree_tiles",
    metadata,
    sa.Column("level", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

audit_signing_keys = sa.Table(
    "audit_signing_keys",
    metadata,
    sa.Column("key_id", sa.String(64), primary_key=True),
    sa.Column("algorithm", sa.String(16), nullable=False),
    sa.Column("public_key", sa.String(64), nullable=False),
    sa.Column("created_us", sa.BigInteger, nullable=False),
)

audit_state = sa.Table(
    "audit_state",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=True),
    sa.Column("lease_expires_us", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("position", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("frontier", sa.Text, nullable=False, server_default="[]"),
    sa.Column("last_head_us", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("updated_us", sa.BigInteger, nullable=False, server_default="0"),
)

SEQUENCER_STATE = "sequencer"


class StoredEvent(NamedTuple):
    seq: int
    canonical: str  # RFC 8785 bytes of the event as served (with its seq), as UTF-8 text
    leaf_hash: str  # lowercase hex


class LogRow(NamedTuple):
    """One ``audit_log`` row, every column (what ``hammerlock audit verify`` checks)."""

    seq: int
    canonical: str
    leaf_hash: str
    event_id: str
    ts_us: int
    action: str
    actor_id: str | None
    resource_type: str | None
    resource_id: str | None


class SequencerState(NamedTuple):
    position: int
    frontier: str  # JSON list of hex hashes (CompactTree.to_state)


_LOG_COLUMNS = (
    audit_log.c.seq,
    audit_log.c.canonical,
    audit_log.c.leaf_hash,
    audit_log.c.event_id,
    audit_log.c.ts_us,
    audit_log.c.action,
    audit_log.c.actor_id,
    audit_log.c.resource_type,
    audit_log.c.resource_id,
)


def _head(row: Any) -> TreeHead:
    return TreeHead(
        size=int(row.size),
        root_hash=row.root_hash,
        timestamp=row.timestamp,
        key_id=row.key_id,
        signature=row.signature,
    )


_HEAD_COLUMNS = (
    audit_tree_heads.c.size,
    audit_tree_heads.c.root_hash,
    audit_tree_heads.c.timestamp,
    audit_tree_heads.c.key_id,
    audit_tree_heads.c.signature,
)


async def select_events(
    uow: UnitOfWork, *, after_seq: int | None, limit: int, where: EventFilter
) -> list[StoredEvent]:
    """Up to ``limit`` events with ``seq > after_seq`` that match ``where``, by seq."""
    c = audit_log.c
    conditions: list[sa.ColumnElement[bool]] = []
    if after_seq is not None:
        conditions.append(c.seq > after_seq)
    if where.since_us is not None:
        conditions.append(c.ts_us >= where.since_us)
    if where.until_us is not None:
        conditions.append(c.ts_us < where.until_us)
    for column, value in (
        (c.actor_id, where.actor_id),
        (c.action, where.action),
        (c.resource_type, where.resource_type),
        (c.resource_id, where.resource_id),
    ):
        if value is not None:
            conditions.append(column == value)
    query = (
        sa.select(c.seq, c.canonical, c.leaf_hash).where(*conditions).order_by(c.seq).limit(limit)
    )
    return [
        StoredEvent(int(r.seq), r.canonical, r.leaf_hash) for r in await uow.conn.execute(query)
    ]


async def tree_head_at(uow: UnitOfWork, size: int | None = None) -> TreeHead | None:
    """The signed head of ``size`` leaves, or the latest one when ``size`` is None."""
    query = sa.select(*_HEAD_COLUMNS)
    if size is None:
        query = query.order_by(audit_tree_heads.c.size.desc()).limit(1)
    else:
        query = query.where(audit_tree_heads.c.size == size)
    row = (await uow.conn.execute(query)).first()
    return None if row is None else _head(row)


async def tree_heads_after(
    uow: UnitOfWork, *, after_size: int | None, limit: int
) -> list[TreeHead]:
    query = sa.select(*_HEAD_COLUMNS).order_by(audit_tree_heads.c.size).limit(limit)
    if after_size is not None:
        query = query.where(audit_tree_heads.c.size > after_size)
    return [_head(r) for r in await uow.conn.execute(query)]


async def tree_heads_upto(
    uow: UnitOfWork, *, after_size: int, upto_size: int | None, limit: int | None = None
) -> list[TreeHead]:
    """Signed heads with ``after_size < size <= upto_size`` (no upper bound if None), by size.
    Without ``limit``, the size range itself bounds the answer."""
    size = audit_tree_heads.c.size
    query = sa.select(*_HEAD_COLUMNS).where(size > after_size).order_by(size)
    if upto_size is not None:
        query = query.where(size <= upto_size)
    if limit is not None:
        query = query.limit(limit)
    return [_head(r) for r in await uow.conn.execute(query)]


async def signing_keys(uow: UnitOfWork) -> list[SigningKey]:
    k = audit_signing_keys.c
    rows = await uow.conn.execute(
        sa.select(k.key_id, k.algorithm, k.public_key).order_by(k.created_us, k.key_id)
    )
    return [SigningKey(r.key_id, r.algorithm, r.public_key) for r in rows]


async def tile_roots(uow: UnitOfWork, lo: int, hi: int) -> dict[int, bytes]:
    """The stored roots of tiles ``lo .. hi-1`` (those that exist), by tile index."""
    t = audit_tree_tiles.c
    rows = await uow.conn.execute(
        sa.select(t.idx, t.hash).where(t.level == TILE_LEVEL, t.idx >= lo, t.idx < hi)
    )
    return {int(r.idx): bytes.fromhex(r.hash) for r in rows}


async def leaf_hashes(uow: UnitOfWork, lo: int, hi: int) -> dict[int, bytes]:
    """The stored leaf hashes of seqs ``lo .. hi-1`` (those that exist), by seq."""
    c = audit_log.c
    rows = await uow.conn.execute(sa.select(c.seq, c.leaf_hash).where(c.seq >= lo, c.seq < hi))
    return {int(r.seq): bytes.fromhex(r.leaf_hash) for r in rows}


async def log_rows(
    uow: UnitOfWork, *, after_seq: int | None, before_seq: int | None = None, limit: int
) -> Sequence[Any]:
    """A page of whole ``audit_log`` rows by seq (tuples in :class:`LogRow` order) with
    ``after_seq < seq < before_seq``; from the very first row when ``after_seq`` is None (so a
    negative seq is seen too)."""
    seq = audit_log.c.seq
    query = sa.select(*_LOG_COLUMNS).order_by(seq).limit(limit)
    if after_seq is not None:
        query = query.where(seq > after_seq)
    if before_seq is not None:
        query = query.where(seq < before_seq)
    return (await uow.conn.execute(query)).all()


_LOG_PAGE_SQL = {
    # The same query as log_rows, written for each driver's parameter style.
    "sqlite": "SELECT seq, canonical, leaf_hash, event_id, ts_us, action, actor_id, resource_type,"
    " resource_id FROM audit_log WHERE seq BETWEEN ? AND ? ORDER BY seq LIMIT ?",
    # PostgreSQL: the canonical text as its UTF-8 bytes (what is hashed), not decoded by the
    # driver to be encoded again.
    "postgresql": "SELECT seq, convert_to(canonical, 'UTF8'), leaf_hash, event_id, ts_us, action,"
    " actor_id, resource_type, resource_id FROM audit_log WHERE seq BETWEEN $1 AND $2"
    " ORDER BY seq LIMIT $3",
}
_BIGINT_MIN, _BIGINT_MAX = -(2**63), 2**63 - 1


async def log_rows_raw(
    uow: UnitOfWork, *, after_seq: int | None, before_seq: int | None, limit: int
) -> Sequence[Sequence[Any]]:
    """:func:`log_rows` through the driver itself, in the unit of work's transaction: plain
    tuples (or asyncpg records) instead of SQLAlchemy rows, which is a quarter of the cost of a
    million-row ``audit verify``. On PostgreSQL ``canonical`` comes as its UTF-8 bytes."""
    low = _BIGINT_MIN if after_seq is None else after_seq + 1
    high = _BIGINT_MAX if before_seq is None else before_seq - 1
    driver: Any = (await uow.conn.get_raw_connection()).driver_connection
    sql = _LOG_PAGE_SQL[uow.dialect]
    if uow.is_postgres:
        return list(await driver.fetch(sql, low, high, limit))
    # One hop to aiosqlite's thread for the query and its rows, which then build there while
    # this thread works on the previous page (sqlite3 releases the GIL while it steps).
    return list(await driver.execute_fetchall(sql, (low, high, limit)))


def sqlite_file(uow: UnitOfWork) -> Path | None:
    """The SQLite database file behind ``uow`` (None on PostgreSQL or an in-memory database)."""
    if uow.is_postgres:
        return None
    name = uow.conn.engine.url.database
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name)


_LOG_BLOB_SQL = (
    "SELECT seq, CAST(canonical AS BLOB), leaf_hash, event_id, ts_us, action, actor_id,"
    " resource_type, resource_id FROM audit_log WHERE seq BETWEEN ? AND ? ORDER BY seq LIMIT ?"
)


def log_pages_sqlite(path: Path, lo: int, hi: int, page_rows: int) -> Iterator[list[Any]]:
    """Pages of whole ``audit_log`` rows with ``lo <= seq < hi`` (from the very first row when
    ``lo`` is 0, so a negative seq is seen) read by plain blocking ``sqlite3`` on a read-only
    connection of its own, ``canonical`` as the bytes stored (no decode and re-encode).

    For ``audit verify`` in a worker thread: one thread that reads and checks its rows holds
    the GIL undisturbed, where a driver thread handing rows to the event loop's thread makes
    the two trade it per row. Its snapshot is its own, not the caller's: the rows below the
    caller's last seq are append-only, so both read the same ones.
    """
    low = _BIGINT_MIN if lo == 0 else lo
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        conn.execute("BEGIN")
        while rows := conn.execute(_LOG_BLOB_SQL, (low, hi - 1, page_rows)).fetchall():
            yield rows
            low = rows[-1][0] + 1
    finally:
        conn.close()


LOG_COLUMNS = (
    "seq",
    "event_id",
    "ts_us",
    "action",
    "actor_id",
    "resource_type",
    "resource_id",
    "canonical",
    "leaf_hash",
)
_LOG_INSERT_SQLITE = (
    "INSERT INTO audit_log (seq, event_id, ts_us, action, actor_id, resource_type, resource_id,"
    " canonical, leaf_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


async def append_log(uow: UnitOfWork, rows: Iterable[tuple[Any, ...]]) -> None:
    """Insert ``audit_log`` rows (tuples in :data:`LOG_COLUMNS` order) through the driver, in
    the unit of work's transaction: PostgreSQL ``COPY``, SQLite one ``executemany``. The
    sequencer's bulk path (a Core ``insert()`` of dicts costs more than the rest of a batch).

    ``rows`` may be a generator that renders them: asyncpg sends ``COPY`` data every 512 KiB as
    it encodes, so the server inserts one part while the generator renders the next (an
    exception in the generator aborts the ``COPY`` and is raised here)."""
    driver: Any = (await uow.conn.get_raw_connection()).driver_connection
    if uow.is_postgres:
        await driver.copy_records_to_table("audit_log", records=rows, columns=LOG_COLUMNS)
    else:
        await driver.executemany(_LOG_INSERT_SQLITE, rows)


# PostgreSQL: read and delete the oldest rows in one statement and one round trip (RETURNING
# order is unspecified: sorted below); = ANY(ARRAY(…)) plans as one bitmap scan of the ids, where
# IN (…) took a hash join and an index probe per row, three times slower. SQLite: in process, a
# read and a rowid-range delete are cheaper than DELETE … RETURNING.
_OUTBOX_TAKE_PG = (
    "DELETE FROM audit_outbox WHERE id = ANY(ARRAY("
    "SELECT id FROM audit_outbox ORDER BY id LIMIT $1)) RETURNING id, ts_us, event"
)
_OUTBOX_READ_SQLITE = "SELECT id, ts_us, event FROM audit_outbox ORDER BY id LIMIT ?"
_OUTBOX_DELETE_SQLITE = "DELETE FROM audit_outbox WHERE id <= ?"


async def take_outbox(uow: UnitOfWork, limit: int) -> list[Sequence[Any]]:
    """Delete the oldest ``limit`` committed outbox rows and return them as ``(id, ts_us,
    event)``, by id, through the driver (the sequencer takes thousands per batch; SQLAlchemy
    rows cost more than it). In the sequencer's transaction: they come back if it rolls back.
    No other transaction deletes outbox rows (the sequencer holds the lease).

    PostgreSQL: a row with a lower id can commit after a later one (ids are handed out before
    commit); a later batch takes it. SQLite: deleted by range (``id <= max``), which is the same
    set because the write transaction is ``BEGIN IMMEDIATE``: no other writer commits while it
    runs, so every row below the largest id read was read.
    """
    driver: Any = (await uow.conn.get_raw_connection()).driver_connection
    if uow.is_postgres:
        rows: list[Sequence[Any]] = list(await driver.fetch(_OUTBOX_TAKE_PG, limit))
        rows.sort(key=_first)
        return rows
    rows = list(await driver.execute_fetchall(_OUTBOX_READ_SQLITE, (limit,)))
    if rows:
        await driver.execute(_OUTBOX_DELETE_SQLITE, (rows[-1][0],))
    return rows


def _first(row: Sequence[Any]) -> Any:
    return row[0]


_OUTBOX_COLUMNS = ("event_id", "ts_us", "action", "event")
_OUTBOX_INSERT_SQLITE = (
    "INSERT INTO audit_outbox (event_id, ts_us, action, event) VALUES (?, ?, ?, ?)"
)


# One outbox row as a constant statement with named parameters (``audit_`` + column), for a
# caller that runs it inside a statement of its own, as a PostgreSQL CTE: being constant, its
# compiled form is cached (a VALUES with the values bound in it costs a cache key per use, and a
# multi-row one is compiled every time).
OUTBOX_INSERT = audit_outbox.insert().values(
    {name: sa.bindparam(f"audit_{name}") for name in _OUTBOX_COLUMNS}
)


def outbox_params(row: tuple[str, int, str, str]) -> dict[str, Any]:
    """The parameters of :data:`OUTBOX_INSERT` for one row ``(event_id, ts_us, action,
    event)``."""
    return {f"audit_{name}": value for name, value in zip(_OUTBOX_COLUMNS, row, strict=True)}


async def insert_outbox(uow: UnitOfWork, rows: Sequence[tuple[str, int, str, str]]) -> None:
    """Insert outbox rows ``(event_id, ts_us, action, event)`` in the unit of work's transaction.

    SQLite: through the driver, one hop to its thread where SQLAlchemy's cursor takes three
    (open, execute, close) — a tenth of a millisecond on every audited transaction; the
    transaction has begun (``BEGIN`` is sent when it is opened), and a driver error is raised as
    the SQLAlchemy error it would have been. PostgreSQL: through SQLAlchemy, which sends
    ``BEGIN`` lazily with its first statement (a driver statement before it would run outside
    the transaction).
    """
    if uow.is_postgres:
        await uow.conn.execute(
            audit_outbox.insert(), [dict(zip(_OUTBOX_COLUMNS, r, strict=True)) for r in rows]
        )
        return
    driver: Any = (await uow.conn.get_raw_connection()).driver_connection
    try:
        if len(rows) == 1:
            await driver.execute(_OUTBOX_INSERT_SQLITE, rows[0])
        else:
            await driver.executemany(_OUTBOX_INSERT_SQLITE, rows)
    except sqlite3.Error as exc:
        raise sa.exc.DBAPIError.instance(
            _OUTBOX_INSERT_SQLITE, list(rows), exc, sqlite3.Error
        ) from exc


async def max_seq(uow: UnitOfWork) -> int | None:
    found = await uow.conn.execute(sa.select(sa.func.max(audit_log.c.seq)))
    value = found.scalar_one()
    return None if value is None else int(value)


async def tiles_page(
    uow: UnitOfWork, *, after_idx: int | None, limit: int
) -> list[tuple[int, str]]:
    """A page of level-:data:`TILE_LEVEL` tiles by index: (idx, hex hash)."""
    t = audit_tree_tiles.c
    query = sa.select(t.idx, t.hash).where(t.level == TILE_LEVEL).order_by(t.idx).limit(limit)
    if after_idx is not None:
        query = query.where(t.idx > after_idx)
    return [(int(r.idx), r.hash) for r in await uow.conn.execute(query)]


async def count_stray_tiles(uow: UnitOfWork) -> int:
    """Tiles at any level other than :data:`TILE_LEVEL` (the sequencer writes none)."""
    t = audit_tree_tiles.c
    found = await uow.conn.execute(
        sa.select(sa.func.count()).select_from(audit_tree_tiles).where(t.level != TILE_LEVEL)
    )
    return int(found.scalar_one())


async def sequencer_state(uow: UnitOfWork) -> SequencerState | None:
    s = audit_state.c
    row = (
        await uow.conn.execute(sa.select(s.position, s.frontier).where(s.name == SEQUENCER_STATE))
    ).first()
    return None if row is None else SequencerState(int(row.position), row.frontier)

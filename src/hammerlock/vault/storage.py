"""The vault's tables, in the vault's own database (never the API's), on its own ``MetaData``.

``vault_cards``       one row per token: metadata in the clear, the card sealed (envelope)
``vault_keys``        vault-wide secrets (the fingerprint key), wrapped by the KEK like data keys
``vault_audit_outbox`` audit events (schema v1 of ``hammerlock.audit``), pulled by the API
``vault_schema``      the schema version (forward-only DDL in :mod:`hammerlock.vault.schema`)

Only the vault package imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa

from hammerlock.db.uow import UnitOfWork

__all__ = [
    "CardRow",
    "OutboxRow",
    "audit_after",
    "card_by_id",
    "cards_not_under",
    "count_not_under",
    "insert_card",
    "insert_events",
    "insert_key",
    "key_by_name",
    "metadata",
    "update_key_wrap",
    "update_wrap",
    "vault_audit_outbox",
    "vault_cards",
    "vault_keys",
    "vault_schema",
]

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)
_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer, "sqlite")

vault_schema = sa.Table(
    "vault_schema",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_us", sa.BigInteger, nullable=False),
)

vault_cards = sa.Table(
    "vault_cards",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("brand", sa.String(16), nullable=False),
    sa.Column("last4", sa.String(4), nullable=False),
    sa.Column("bin", sa.String(6), nullable=False),
    sa.Column("exp_month", sa.SmallInteger, nullable=False),
    sa.Column("exp_year", sa.SmallInteger, nullable=False),
    sa.Column("address_country", sa.String(2), nullable=True),
    sa.Column("fingerprint", sa.String(64), nullable=False, index=True),
    sa.Column("kek_version", sa.Integer, nullable=False, index=True),
    sa.Column("wrapped_key", sa.LargeBinary, nullable=False),
    sa.Column("ciphertext", sa.LargeBinary, nullable=False),
    sa.Column("created_us", sa.BigInteger, nullable=False),
    sa.Column("rewrapped_us", sa.BigInteger, nullable=True),
)

vault_keys = sa.Table(
    "vault_keys",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("kek_version", sa.Integer, nullable=False),
    sa.Column("wrapped_key", sa.LargeBinary, nullable=False),
    sa.Column("ciphertext", sa.LargeBinary, nullable=False),
    sa.Column("created_us", sa.BigInteger, nullable=False),
)

vault_audit_outbox = sa.Table(
    "vault_audit_outbox",
    metadata,
    sa.Column("id", _BIGINT_PK, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),
    sa.Column("ts_us", sa.BigInteger, nullable=False),
    sa.Column("action", sa.String(128), nullable=False),
    sa.Column("event", sa.Text, nullable=False),  # JSON of the AuditEvent (wire.event_json)
)


class CardRow(NamedTuple):
    id: str
    brand: str
    last4: str
    bin: str
    exp_month: int
    exp_year: int
    address_country: str | None
    fingerprint: str
    kek_version: int
    wrapped_key: bytes
    ciphertext: bytes
    created_us: int


class OutboxRow(NamedTuple):
    id: int
    event: str


_CARD_COLUMNS = [vault_cards.c[name] for name in CardRow._fields]


def _card(row: Any) -> CardRow:
    return CardRow._make(bytes(v) if isinstance(v, memoryview) else v for v in row)


async def insert_card(uow: UnitOfWork, row: CardRow) -> None:
    await uow.conn.execute(vault_cards.insert(), [row._asdict()])


async def card_by_id(uow: UnitOfWork, token_id: str) -> CardRow | None:
    result = await uow.conn.execute(sa.select(*_CARD_COLUMNS).where(vault_cards.c.id == token_id))
    row = result.first()
    return None if row is None else _card(row)


async def cards_not_under(
    uow: UnitOfWork, kek_version: int, limit: int, *, after_id: str = ""
) -> list[CardRow]:
    """Up to ``limit`` cards with ``id > after_id`` whose data key is wrapped by another KEK
    version than ``kek_version``, by id."""
    c = vault_cards.c
    result = await uow.conn.execute(
        sa.select(*_CARD_COLUMNS)
        .where(c.kek_version != kek_version, c.id > after_id)
        .order_by(c.id)
        .limit(limit)
    )
    return [_card(r) for r in result]


async def count_not_under(uow: UnitOfWork, kek_version: int) -> int:
    c = vault_cards.c
    result = await uow.conn.execute(
        sa.select(sa.func.count()).select_from(vault_cards).where(c.kek_version != kek_version)
    )
    return int(result.scalar_one())


async def update_wrap(
    uow: UnitOfWork, token_id: str, *, old_version: int, new_version: int, wrapped_key: bytes
) -> bool:
    """Swap the wrapped data key if the row is still under ``old_version`` (optimistic)."""
    result = await uow.conn.execute(
        vault_cards.update()
        .where(vault_cards.c.id == token_id, vault_cards.c.kek_version == old_version)
        .values(kek_version=new_version, wrapped_key=wrapped_key, rewrapped_us=uow.clock.now_us())
    )
    return result.rowcount == 1


async def key_by_name(uow: UnitOfWork, name: str) -> sa.Row[Any] | None:
    result = await uow.conn.execute(sa.select(vault_keys).where(vault_keys.c.name == name))
    return result.first()


async def insert_key(
    uow: UnitOfWork, name: str, *, kek_version: int, wrapped_key: bytes, ciphertext: bytes
) -> None:
    await uow.conn.execute(
        vault_keys.insert(),
        [
            {
                "name": name,
                "kek_version": kek_version,
                "wrapped_key": wrapped_key,
                "ciphertext": ciphertext,
                "created_us": uow.clock.now_us(),
            }
        ],
    )


async def update_key_wrap(
    uow: UnitOfWork, name: str, *, old_version: int, new_version: int, wrapped_key: bytes
) -> bool:
    result = await uow.conn.execute(
        vault_keys.update()
        .where(vault_keys.c.name == name, vault_keys.c.kek_version == old_version)
        .values(kek_version=new_version, wrapped_key=wrapped_key)
    )
    return result.rowcount == 1


# Outbox ids must become visible in id order, or the API's puller (which keeps "the highest id
# seen" as its cursor) could step past an id whose transaction commits later and lose that
# event. SQLite has one writer at a time, so its ids commit in order. On PostgreSQL, ids are
# taken at insert and transactions commit in any order; a transaction-scoped advisory lock taken
# right before the insert (the last statement of every recording transaction) and held until
# commit makes id order and commit order the same. Ids of rolled-back transactions stay gaps,
# which is right: those events never happened.
_OUTBOX_LOCK_ID = 0x68616D6D65726C6B  # "hammerlk"


async def insert_events(uow: UnitOfWork, rows: Sequence[dict[str, object]]) -> None:
    if rows:
        if uow.is_postgres:
            await uow.conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _OUTBOX_LOCK_ID}
            )
        await uow.conn.execute(vault_audit_outbox.insert(), list(rows))


async def audit_after(uow: UnitOfWork, after_id: int, limit: int) -> list[OutboxRow]:
    c = vault_audit_outbox.c
    result = await uow.conn.execute(
        sa.select(c.id, c.event).where(c.id > after_id).order_by(c.id).limit(limit)
    )
    return [OutboxRow(int(r.id), r.event) for r in result]

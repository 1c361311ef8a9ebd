"""The ``api_keys`` table and its queries (only ``security.service`` imports this)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping

from hammerlock.db.metadata import metadata
from hammerlock.db.uow import UnitOfWork
from hammerlock.security.keys import ApiKey
from hammerlock.security.permissions import Role

__all__ = ["api_keys", "fetch_key", "insert_key", "list_keys", "mark_revoked", "revoked_since"]

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("principal_id", sa.String(128), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("created_us", sa.BigInteger, nullable=False),
    sa.Column("expires_us", sa.BigInteger, nullable=True),
    sa.Column("revoked_us", sa.BigInteger, nullable=True),
    sa.Column("created_by", sa.String(128), nullable=False),
)
sa.Index("ix_api_keys_principal_id", api_keys.c.principal_id)
sa.Index(
    "ix_api_keys_revoked_us",
    api_keys.c.revoked_us,
    postgresql_where=api_keys.c.revoked_us.is_not(None),
    sqlite_where=api_keys.c.revoked_us.is_not(None),
)


def _key(row: RowMapping) -> ApiKey:
    return ApiKey(
        id=row["id"],
        principal_id=row["principal_id"],
        role=Role(row["role"]),
        name=row["name"],
        created_us=row["created_us"],
        expires_us=row["expires_us"],
        revoked_us=row["revoked_us"],
        created_by=row["created_by"],
    )


async def insert_key(uow: UnitOfWork, key: ApiKey, secret_hash: str) -> None:
    await uow.conn.execute(
        api_keys.insert().values(
            id=key.id,
            principal_id=key.principal_id,
            role=key.role.value,
            name=key.name,
            secret_hash=secret_hash,
            created_us=key.created_us,
            expires_us=key.expires_us,
            revoked_us=key.revoked_us,
            created_by=key.created_by,
        )
    )


# Built once: every request whose key is not in the verifier's cache runs it, and SQLAlchemy
# memoizes a statement's cache key on the statement object (a new one per call would be built
# and keyed again each time).
_FETCH_KEY = sa.select(api_keys).where(api_keys.c.id == sa.bindparam("key_id"))


async def fetch_key(uow: UnitOfWork, key_id: str) -> tuple[ApiKey, str] | None:
    row = (await uow.conn.execute(_FETCH_KEY, {"key_id": key_id})).mappings().first()
    return None if row is None else (_key(row), row["secret_hash"])


async def list_keys(uow: UnitOfWork, *, after: str | None, limit: int) -> list[ApiKey]:
    query = sa.select(api_keys).order_by(api_keys.c.id).limit(limit)
    if after is not None:
        query = query.where(api_keys.c.id > after)
    return [_key(r) for r in (await uow.conn.execute(query)).mappings()]


async def mark_revoked(uow: UnitOfWork, key_id: str, now_us: int) -> bool:
    result = await uow.conn.execute(
        api_keys.update()
        .where(api_keys.c.id == key_id, api_keys.c.revoked_us.is_(None))
        .values(revoked_us=now_us)
    )
    return bool(result.rowcount)


_REVOKED_SINCE = (
    sa.select(api_keys.c.id)
    .where(api_keys.c.revoked_us >= sa.bindparam("since_us"))
    .order_by(api_keys.c.revoked_us)
    .limit(sa.bindparam("limit"))
)


async def revoked_since(uow: UnitOfWork, since_us: int, limit: int) -> list[str]:
    """Ids of the keys revoked at or after ``since_us`` (at most ``limit``): an index range."""
    rows = await uow.conn.execute(_REVOKED_SINCE, {"since_us": since_us, "limit": limit})
    return [r[0] for r in rows]

"""Whole-row writes through statements built once per table.

``table.update().where(...).values(**row)`` builds a new statement on every call, and
SQLAlchemy then derives a cache key from every bound value — for a 30-column row that was a
quarter of a lot settlement's CPU (py-spy, issue #6). Here the statement is built once per
table and the row goes in as execution parameters, so the compiled form is found in the cache
from the parameter names alone.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from hammerlock.db.uow import UnitOfWork

__all__ = ["insert_row", "update_versioned"]

_WHERE_ID = "where_id_"
_WHERE_VERSION = "where_version_"


@functools.cache
def _insert(table: sa.Table) -> sa.Insert:
    return table.insert()


@functools.cache
def _update_versioned(table: sa.Table) -> sa.Update:
    return table.update().where(
        table.c.id == sa.bindparam(_WHERE_ID), table.c.version == sa.bindparam(_WHERE_VERSION)
    )


def _checked(table: sa.Table, row: Mapping[str, Any]) -> None:
    # `.values(**row)` refused a name that is not a column; execution parameters would drop it
    unknown = row.keys() - table.c.keys()
    if unknown:
        raise ValueError(f"{table.name}: no column {sorted(unknown)}")


async def insert_row(uow: UnitOfWork, table: sa.Table, row: Mapping[str, Any]) -> None:
    _checked(table, row)
    await uow.conn.execute(_insert(table), dict(row))


async def update_versioned(
    uow: UnitOfWork, table: sa.Table, row: Mapping[str, Any], *, expected_version: int
) -> bool:
    """Write ``row`` (its columns, ``id`` included to name it) over the row with that id if its
    version is still ``expected_version``; False when another writer changed it meanwhile."""
    _checked(table, row)
    params = {name: value for name, value in row.items() if name != "id"}
    params[_WHERE_ID] = row["id"]
    params[_WHERE_VERSION] = expected_version
    result = await uow.conn.execute(_update_versioned(table), params)
    return bool(result.rowcount == 1)

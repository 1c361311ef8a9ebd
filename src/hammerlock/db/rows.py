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

__all__ = [
    "Along",
    "carrying",
    "insert_row",
    "insert_row_with",
    "update_versioned",
    "update_versioned_with",
]

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


# -- the same, carrying other INSERTs along (PostgreSQL only; ADR 0020) ---------------------------

# Other INSERTs and their execution parameters, to ride along a row's write as data-modifying
# CTEs (each one's parameters named apart from the row's ``prefix`` and from each other).
Along = list[tuple[sa.Insert, dict[str, Any]]]


@functools.cache
def _insert_prefixed(table: sa.Table, prefix: str) -> sa.Insert:
    return table.insert().values(
        {c.name: sa.bindparam(prefix + c.name, type_=c.type) for c in table.columns}
    )


@functools.cache
def _update_prefixed(table: sa.Table, prefix: str) -> sa.Update:
    return (
        table.update()
        .where(
            table.c.id == sa.bindparam(_WHERE_ID), table.c.version == sa.bindparam(_WHERE_VERSION)
        )
        .values(
            {
                c.name: sa.bindparam(prefix + c.name, type_=c.type)
                for c in table.columns
                if c.name != "id"
            }
        )
    )


@functools.cache
def carrying(main: Any, along: tuple[Any, ...]) -> Any:
    """``main`` carrying each of ``along`` as a data-modifying CTE (PostgreSQL runs every one to
    completion, in the statement's one round trip), built once per combination (constant
    statements: their compiled form is cached)."""
    for n, statement in enumerate(along):
        main = main.add_cte(statement.cte(f"along_{n}"))
    return main


def _split(along: Along) -> tuple[tuple[sa.Insert, ...], dict[str, Any]]:
    params: dict[str, Any] = {}
    for _, p in along:
        params.update(p)
    return tuple(statement for statement, _ in along), params


async def insert_row_with(
    uow: UnitOfWork, table: sa.Table, row: Mapping[str, Any], *, prefix: str, along: Along
) -> None:
    """:func:`insert_row` and the INSERTs ``along`` in one statement (PostgreSQL only)."""
    _checked(table, row)
    statements, params = _split(along)
    params.update({prefix + name: value for name, value in row.items()})
    await uow.conn.execute(carrying(_insert_prefixed(table, prefix), statements), params)


async def update_versioned_with(
    uow: UnitOfWork,
    table: sa.Table,
    row: Mapping[str, Any],
    *,
    expected_version: int,
    prefix: str,
    along: Along,
) -> bool:
    """:func:`update_versioned` and the INSERTs ``along`` in one statement (PostgreSQL only).
    The INSERTs run whether or not the version matches: on False the caller must roll back."""
    _checked(table, row)
    statements, params = _split(along)
    params.update({prefix + name: value for name, value in row.items() if name != "id"})
    params[_WHERE_ID] = row["id"]
    params[_WHERE_VERSION] = expected_version
    result = await uow.conn.execute(carrying(_update_prefixed(table, prefix), statements), params)
    return bool(result.rowcount == 1)

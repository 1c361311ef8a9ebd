"""The escrow and payout-destination tables declared in storage match the migrations (0007,
0008), on both backends."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from hammerlock.bootstrap import Container
from hammerlock.db.metadata import metadata
from hammerlock.escrow import storage as escrow_storage
from hammerlock.parties import storage as parties_storage

MINE = {
    t.name
    for t in (
        escrow_storage.escrow_orders,
        escrow_storage.escrow_order_events,
        parties_storage.payout_destinations,
    )
}


def _diff(conn: sa.Connection) -> list[object]:
    mine = sa.MetaData(naming_convention=metadata.naming_convention)
    for name in MINE:
        metadata.tables[name].to_metadata(mine)
    context = MigrationContext.configure(
        conn,
        opts={
            "include_name": lambda name, type_, _parent: type_ != "table" or name in MINE,
            "compare_type": True,
            "compare_server_default": True,
        },
    )
    return list(compare_metadata(context, mine))


async def test_storage_tables_match_the_migrations(container: Container) -> None:
    async with container.db.engine.connect() as conn:
        diff = await conn.run_sync(_diff)
    assert diff == []

"""The auctions and parties tables declared in storage match migration 0006, on both backends."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from hammerlock.auctions import storage as auctions_storage
from hammerlock.bootstrap import Container
from hammerlock.db.metadata import metadata
from hammerlock.parties import storage as parties_storage

MINE = {
    t.name
    for t in (
        auctions_storage.lots,
        auctions_storage.lot_bids,
        auctions_storage.lot_deposits,
        parties_storage.parties,
        parties_storage.party_cards,
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
        },
    )
    return list(compare_metadata(context, mine))


async def test_storage_tables_match_the_migration(container: Container) -> None:
    async with container.db.engine.connect() as conn:
        diff = await conn.run_sync(_diff)
    assert diff == []

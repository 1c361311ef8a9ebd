"""0009 brings ``payment_intents.action_key`` to a database whose 0005 predates it, and is a
no-op where 0005 already made the column."""

from __future__ import annotations

import sqlalchemy as sa

from hammerlock.bootstrap import Container
from hammerlock.db.migrate import migrate


async def _columns(container: Container) -> set[str]:
    async with container.db.engine.connect() as conn:
        return set(
            await conn.run_sync(
                lambda c: {col["name"] for col in sa.inspect(c).get_columns("payment_intents")}
            )
        )


async def test_a_database_from_the_earlier_0005_gets_the_column(container: Container) -> None:
    assert "action_key" in await _columns(container)  # head made it (through 0005)
    async with container.db.engine.begin() as conn:  # the database an early 0005 left
        await conn.execute(sa.text("ALTER TABLE payment_intents DROP COLUMN action_key"))
        await conn.execute(sa.text("DROP TABLE deposit_renewals"))  # made by 0010, after 0008
        await conn.execute(sa.text("DROP INDEX ix_api_keys_revoked_us"))  # made by 0011
        await conn.execute(sa.text("UPDATE alembic_version SET version_num = '0008'"))
    assert "action_key" not in await _columns(container)
    await migrate(container.db)
    assert "action_key" in await _columns(container)
    await migrate(container.db)  # at head: nothing to do, nothing fails

"""Whole-row writes through cached statements: unknown names refused, versions checked."""

from __future__ import annotations

import pytest

from hammerlock.auctions.storage import lots
from hammerlock.bootstrap import Container
from hammerlock.db.rows import insert_row, update_versioned
from hammerlock.security.storage import api_keys

ROW = {
    "id": "key_rows_test_0001",
    "principal_id": "prn_rows",
    "role": "service",
    "name": "rows",
    "secret_hash": "0" * 64,
    "created_us": 1,
    "expires_us": None,
    "revoked_us": None,
    "created_by": "tests",
}


async def test_a_name_that_is_no_column_is_refused(container: Container) -> None:
    async with container.db.transaction() as uow:
        with pytest.raises(ValueError, match="no column"):
            await insert_row(uow, api_keys, {**ROW, "nmae": "typo"})


async def test_update_versioned_needs_the_version(container: Container) -> None:
    assert "version" in lots.c  # the tables it serves carry one; api_keys does not
    async with container.db.transaction() as uow:
        await insert_row(uow, api_keys, ROW)
        with pytest.raises(ValueError, match="no column"):
            await update_versioned(uow, api_keys, {**ROW, "bogus": 1}, expected_version=1)

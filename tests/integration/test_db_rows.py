"""Whole-row writes through cached statements refuse names that are not columns (as
``.values(**row)`` did; execution parameters would silently drop them)."""

from __future__ import annotations

import pytest

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


async def test_update_versioned_refuses_a_name_that_is_no_column(container: Container) -> None:
    # (the version check itself is exercised by the lot, order and intent race tests)
    async with container.db.transaction() as uow:
        await insert_row(uow, api_keys, ROW)
        with pytest.raises(ValueError, match="no column"):
            await update_versioned(uow, api_keys, {**ROW, "bogus": 1}, expected_version=1)

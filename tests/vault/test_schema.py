"""The vault's forward-only schema: idempotent, safe for processes starting together."""

from __future__ import annotations

import asyncio

import pytest

from hammerlock.clock import FixedClock
from hammerlock.settings import Settings
from hammerlock.vault.container import VaultContainer, vault_database
from hammerlock.vault.schema import SCHEMA_VERSION, migrate_vault, vault_schema_version


async def test_migrate_is_idempotent_and_concurrent_starts_agree(vault_settings: Settings) -> None:
    dbs = [vault_database(vault_settings, FixedClock()) for _ in range(3)]
    try:
        assert await vault_schema_version(dbs[0]) == 0
        results = await asyncio.gather(*(migrate_vault(db) for db in dbs))
        done = (SCHEMA_VERSION, SCHEMA_VERSION)
        assert sorted(results) == [(0, SCHEMA_VERSION), done, done]
        assert await migrate_vault(dbs[0]) == (SCHEMA_VERSION, SCHEMA_VERSION)
    finally:
        for db in dbs:
            await db.dispose()


async def test_an_unmigrated_vault_refuses_to_start(vault_settings: Settings) -> None:
    container = VaultContainer(vault_settings, clock=FixedClock(), gateways={})
    try:
        with pytest.raises(RuntimeError, match="vault serve"):
            await container.start()
    finally:
        await container.stop()


async def test_two_vaults_share_one_fingerprint_key(vault_settings: Settings) -> None:
    containers = [VaultContainer(vault_settings, clock=FixedClock(), gateways={}) for _ in range(2)]
    await migrate_vault(containers[0].db)
    try:
        await asyncio.gather(*(c.start() for c in containers))
        a, b = (c.vault.fingerprint("4242424242424242") for c in containers)
        assert a == b
    finally:
        for c in containers:
            await c.stop()

"""Fixtures for the card vault: its own database (SQLite file or a PostgreSQL database of its
own), its container and app in process, a public client (a browser) and a signed client (the
API). The API-side fixtures (``container``, ``database_url``) come from tests/conftest.py."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from hammerlock.clock import FixedClock
from hammerlock.payments.gateways.base import Gateway
from hammerlock.settings import Settings
from hammerlock.vault.app import create_vault_app
from hammerlock.vault.client import VaultClient
from hammerlock.vault.container import VaultContainer
from hammerlock.vault.schema import migrate_vault
from hammerlock.vault.signing import InternalKeyring
from tests.conftest import _admin, pg_url

VAULT_URL = "http://vault.test"
VISA = "4242424242424242"
AMEX = "378282246310005"
_counter = itertools.count()


@pytest.fixture
async def vault_database_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """The vault's own database: never the API's (another file, another PostgreSQL database)."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'vault-db' / 'vault.db'}"
        return
    name = f"hlv_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{os.getpid()}_{next(_counter)}"
    await _admin(f'CREATE DATABASE "{name}"')
    yield pg_url(name)
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def vault_settings(tmp_path: Path, vault_database_url: str) -> Settings:
    (tmp_path / "vault-db").mkdir(exist_ok=True)
    return Settings(
        data_dir=tmp_path / "data",
        vault_database_url=vault_database_url,
        vault_cors_origins="https://shop.example",
        vault_public_url=VAULT_URL,
        db_pool_size=3,
    )


@dataclass
class Vault:
    container: VaultContainer
    browser: httpx.AsyncClient  # unauthenticated, as a checkout page
    client: VaultClient  # signed, as the API
    clock: FixedClock

    async def tokenize(self, number: str = VISA, **extra: object) -> dict[str, object]:
        body = {"number": number, "exp_month": 12, "exp_year": 2034, **extra}
        response = await self.browser.post("/v1/tokens", json=body)
        assert response.status_code == 200, response.text
        result: dict[str, object] = response.json()
        return result


async def open_vault(
    settings: Settings, clock: FixedClock, gateways: dict[str, Gateway] | None = None
) -> tuple[VaultContainer, httpx.ASGITransport]:
    container = VaultContainer(settings, clock=clock, gateways=gateways)
    await migrate_vault(container.db)
    await container.start()
    app = create_vault_app(container)
    return container, httpx.ASGITransport(app=app, raise_app_exceptions=False)


@pytest.fixture
def vault_gateways() -> dict[str, Gateway] | None:
    """``None``: the default registry (the real sandbox). Override in a module for fakes."""
    return None


@pytest.fixture
async def vault(
    vault_settings: Settings, clock: FixedClock, vault_gateways: dict[str, Gateway] | None
) -> AsyncIterator[Vault]:
    container, transport = await open_vault(vault_settings, clock, vault_gateways)
    keyring = InternalKeyring(vault_settings.effective_vault_internal_key_file)
    client = VaultClient(VAULT_URL, keyring, clock=clock, transport=transport)
    async with httpx.AsyncClient(transport=transport, base_url=VAULT_URL) as browser:
        try:
            yield Vault(container=container, browser=browser, client=client, clock=clock)
        finally:
            await client.aclose()
            await container.stop()

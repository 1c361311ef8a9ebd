"""The vault's composition root: settings, clock, its own database, keys, gateways, the app.

Nothing is built at import time. The gateway registry (``dict[str, Gateway]``) and the public
routers beside the vault's own (the sandbox's 3-D Secure challenge pages) are wired here; pass
``gateways=`` / ``extra_routers=`` to replace them (tests, other deployments).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from fastapi import APIRouter, FastAPI

from hammerlock.clock import Clock, SystemClock
from hammerlock.db.engine import Database, create_database
from hammerlock.payments.gateways.base import Gateway
from hammerlock.payments.gateways.braintree import BraintreeGateway
from hammerlock.payments.gateways.resilience import ResilientGateway
from hammerlock.payments.gateways.stripe import StripeGateway
from hammerlock.settings import Settings
from hammerlock.vault.app import create_vault_app
from hammerlock.vault.cvc import CvcCache
from hammerlock.vault.hazmat.kek import (
    EnvKeyring,
    FileKeyring,
    KeyEncryptionKeyProvider,
    parse_env_keyring,
)
from hammerlock.vault.ratelimit import RateLimiter
from hammerlock.vault.sandbox import SandboxGateway, build_challenge_router
from hammerlock.vault.schema import SCHEMA_VERSION, vault_schema_version
from hammerlock.vault.service import CardVault, TokenizeLimits
from hammerlock.vault.signing import InternalKeyring, RequestVerifier

__all__ = ["VaultContainer", "build_vault_app", "default_gateways", "kek_provider"]


def kek_provider(settings: Settings) -> KeyEncryptionKeyProvider:
    if settings.vault_kek is not None:
        return EnvKeyring(parse_env_keyring(settings.vault_kek.get_secret_value()))
    return FileKeyring(settings.effective_vault_key_dir)


def vault_database(settings: Settings, clock: Clock) -> Database:
    url = settings.effective_vault_database_url
    if url.startswith("sqlite"):
        (settings.data_dir / "vault").mkdir(parents=True, exist_ok=True, mode=0o700)
    return create_database(settings.model_copy(update={"database_url": url}), clock)


def default_gateways(
    settings: Settings, clock: Clock
) -> tuple[dict[str, Gateway], list[APIRouter]]:
    """The sandbox (always) and its challenge pages. Stripe and Braintree join here when their
    adapters are configured."""
    sandbox = SandboxGateway.from_settings(
        settings, public_base_url=settings.effective_vault_public_url, clock=clock
    )
    gateways: dict[str, Gateway] = {sandbox.name: sandbox}
    # The real gateways, when configured: retried (retryable errors only, same key) behind a
    # circuit breaker per gateway.
    if settings.stripe_configured:
        gateways["stripe"] = ResilientGateway.from_settings(
            StripeGateway.from_settings(settings), settings
        )
    if settings.braintree_configured:
        gateways["braintree"] = ResilientGateway.from_settings(
            BraintreeGateway.from_settings(settings), settings
        )
    return gateways, [build_challenge_router(sandbox)]


class VaultContainer:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        kek: KeyEncryptionKeyProvider | None = None,
        gateways: dict[str, Gateway] | None = None,
        extra_routers: Sequence[APIRouter] | None = None,
    ) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.node_name = (settings.node_name or socket.gethostname()[:56]) + ":vault"
        self.db = vault_database(settings, self.clock)
        self.kek = kek or kek_provider(settings)
        self.internal_keys = InternalKeyring(settings.effective_vault_internal_key_file)
        self.verifier = RequestVerifier(self.internal_keys, self.clock)
        self.vault = CardVault(
            self.db,
            self.kek,
            cvc=CvcCache(self.clock),
            limiter=RateLimiter(self.clock),
            limits=TokenizeLimits.of(
                window_s=settings.vault_rate_window_s,
                per_ip=settings.vault_tokenize_ip_limit,
                per_card=settings.vault_tokenize_card_limit,
                failures=settings.vault_tokenize_failure_limit,
            ),
        )
        if gateways is None:
            gateways, routers = default_gateways(settings, self.clock)
            extra_routers = [*routers, *(extra_routers or [])]
        self.gateways: dict[str, Gateway] = gateways
        self.extra_routers: list[APIRouter] = list(extra_routers or [])

    async def start(self) -> None:
        version = await vault_schema_version(self.db)
        if version != SCHEMA_VERSION:
            raise RuntimeError(
                f"the vault database is at schema {version}, this release needs {SCHEMA_VERSION}: "
                "run `hammerlock vault serve` (it migrates) or `hammerlock vault migrate`"
            )
        await self.vault.load_keys()

    async def stop(self) -> None:
        for gateway in self.gateways.values():
            aclose = getattr(gateway, "aclose", None)
            if aclose is not None:
                await aclose()
        await self.db.dispose()


def build_vault_app(settings: Settings, *, clock: Clock | None = None) -> FastAPI:
    return create_vault_app(VaultContainer(settings, clock=clock))

"""The composition root: settings, clock, database, services and background tasks, wired once.

Nothing in hammerlock creates an engine, reads settings or starts a task at import time; this
module does it when asked, and ``Container.stop`` undoes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog
from fastapi import FastAPI

from hammerlock.api.app import create_app
from hammerlock.api.idempotency import IdempotencyStore
from hammerlock.auctions.service import Auctions
from hammerlock.auctions.service import mark_settled as mark_lot_settled
from hammerlock.audit.alerts import AlertEngine, AlertRules
from hammerlock.audit.model import Context
from hammerlock.audit.notifiers import ChannelNotifier, LogNotifier, Notifier, WebhookNotifier
from hammerlock.audit.relay import Relay, build_relays
from hammerlock.audit.sequencer import Sequencer
from hammerlock.audit.signing import AuditSigner
from hammerlock.audit.sinks.alerts import AlertSink
from hammerlock.audit.tamper import TamperGuard
from hammerlock.clock import Clock, SystemClock
from hammerlock.db.engine import Database, create_database
from hammerlock.escrow.service import Escrow, EscrowConfig
from hammerlock.escrow.service import chargeback as escrow_chargeback
from hammerlock.ledger import service as ledger_service
from hammerlock.ledger.writer import LedgerWriter
from hammerlock.parties import service as parties_service
from hammerlock.payments.gateways.base import Gateway, WebhookEvent
from hammerlock.payments.gateways.braintree import BraintreeGateway
from hammerlock.payments.gateways.stripe import StripeGateway
from hammerlock.payments.service import Payments, PaymentsConfig
from hammerlock.risk.rules import load_rules
from hammerlock.risk.service import RulesAssessor
from hammerlock.secret_files import create_once
from hammerlock.security.service import KeyVerifier
from hammerlock.settings import Settings
from hammerlock.tasks import cancel_and_wait, sleep_or_stop
from hammerlock.vault.client import VaultClient, VaultGateway, sandbox_webhook_verifier
from hammerlock.vault.puller import AuditPuller
from hammerlock.vault.signing import InternalKeyring
from hammerlock.webhooks.deliverer import WebhookDeliverer
from hammerlock.webhooks.model import Backoff

__all__ = ["Container", "build_app", "load_pepper"]

log = structlog.get_logger("hammerlock.bootstrap")


def _secret_file(path: Path, nbytes: int = 32) -> bytes:
    """Read a hex secret file, creating it (0600, atomically) on first use."""
    create_once(path, secrets.token_hex(nbytes).encode())
    secret = bytes.fromhex(path.read_text().strip())
    if len(secret) < 16:
        raise RuntimeError(f"{path} holds no usable secret; delete it to generate a new one")
    return secret


def load_pepper(settings: Settings) -> bytes:
    if settings.api_key_pepper is not None:
        return settings.api_key_pepper.get_secret_value().encode()
    return _secret_file(settings.data_dir / "secrets" / "api_key_pepper")


class Container:
    """Everything a running hammerlock process holds. One per process (or per test)."""

    def __init__(
        self, settings: Settings, *, clock: Clock | None = None, background: bool = True
    ) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.db: Database = create_database(settings, self.clock)
        self.pepper = load_pepper(settings)
        self.keys = KeyVerifier(self.db, pepper=self.pepper, ttl_s=settings.auth_cache_ttl_s)
        self.node_name = settings.node_name or socket.gethostname()[:64]
        self.idempotency = IdempotencyStore(
            self.db, ttl_s=settings.idempotency_ttl_s, lease_s=settings.idempotency_lease_s
        )
        self.ledger_writer = LedgerWriter(
            self.db,
            max_transfers=settings.ledger_batch_max_transfers,
            linger_ms=settings.ledger_batch_linger_ms,
        )
        self.audit_signer = AuditSigner.load_or_create(
            settings.audit_signing_key_file
            or settings.data_dir / "keys" / "audit_signing_ed25519.pem"
        )
        self.sequencer = Sequencer(
            self.db,
            self.audit_signer,
            node=self.node_name,
            archive_dir=settings.data_dir / "audit",
            head_interval_s=settings.audit_head_interval_s,
        )
        self.tamper_guard = TamperGuard(self.db, node=self.node_name)
        self.tamper_guard.install()
        self.alert_channel = ChannelNotifier()
        self.alert_sink = AlertSink(
            AlertEngine(AlertRules(heartbeat_timeout_s=settings.audit_alert_heartbeat_timeout_s)),
            self._notifiers(settings),
            clock=self.clock,
        )
        self.relays = build_relays(
            self.db,
            node=self.node_name,
            nats_url=settings.audit_nats_url,
            kafka_bootstrap=settings.audit_kafka_bootstrap,
            archive_dir=settings.audit_archive_dir or settings.data_dir / "audit" / "archive",
            lag_alert_threshold=settings.audit_relay_lag_alert,
            jetstream_stream=settings.audit_nats_stream,
            jetstream_duplicate_window_s=settings.audit_nats_duplicate_window_s,
            kafka_topic=settings.audit_kafka_topic,
            archive_segment_events=settings.audit_archive_segment_events,
            archive_segment_age_s=settings.audit_archive_segment_age_s,
            archive_s3_bucket=settings.audit_archive_s3_bucket,
            archive_s3_prefix=settings.audit_archive_s3_prefix,
            archive_s3_endpoint_url=settings.audit_archive_s3_endpoint_url,
            archive_s3_region=settings.audit_archive_s3_region,
            archive_s3_object_lock_days=settings.audit_archive_s3_object_lock_days,
            page_size=settings.audit_relay_page_size,
            on_lag=self.alert_sink.lag_hook(settings.audit_relay_lag_alert),
        )
        self.alert_relay: Relay | None = None
        if settings.audit_alert_enabled:
            self.alert_relay = Relay(
                self.db,
                self.alert_sink,
                node=self.node_name,
                lag_alert_threshold=settings.audit_relay_lag_alert,
                on_lag=self.alert_sink.lag_hook(settings.audit_relay_lag_alert),
                start="end",  # first run: alert from now on, never replay the history
            )
        self.webhook_deliverer = self._webhook_deliverer(settings)
        # Payments (issue #5). Gateways are reached through the card vault (``self.vault``).
        self.vault: VaultClient | None = self._vault_client(settings)
        self.gateways: dict[str, Gateway] = {}
        self.vault_audit: AuditPuller | None = None
        self._webhook_adapters: list[Gateway] = []
        if self.vault is not None:
            for name in self._gateway_names(settings):
                self.gateways[name] = VaultGateway(
                    self.vault, name, webhooks=self._webhook_verifier(settings, name)
                )
            self.vault_audit = AuditPuller(self.db, self.vault)
        self.payments = Payments(
            self.db,
            self.gateways,
            config=PaymentsConfig(
                default_gateway=settings.payments_gateway,
                janitor_grace_s=settings.payments_janitor_grace_s,
                three_ds_above=dict(settings.payments_three_ds_force_above),
                authorization_days=dict(settings.payments_authorization_days),
            ),
            risk=RulesAssessor(load_rules(settings.risk_rules_file)),
        )
        # Escrow (issue #6): orders after a lot closes; the buyer's card on file comes from parties.
        self.escrow = Escrow(
            self.db,
            self.payments,
            self.gateways,
            config=EscrowConfig(
                auto_delivery_s=settings.escrow_auto_delivery_s,
                ship_window_s=settings.escrow_ship_window_s,
                default_gateway=settings.payments_gateway,
                sweeper_grace_s=settings.payments_janitor_grace_s,
            ),
            card_on_file=parties_service.default_card,
            payout_destination=parties_service.payout_destination,
            on_settled=mark_lot_settled,
        )
        self.payments.on_chargeback = escrow_chargeback  # a chargeback freezes its order
        # Auctions (issue #6): lots, bids, deposits; closes open an order with escrow.
        self.auctions = Auctions(self.db, self.payments, close_batch=settings.auctions_close_batch)
        self._stop = asyncio.Event()
        self._background = background
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._stop.clear()
        if self.settings.ledger_group_commit:
            await self.ledger_writer.start()
        await self.auctions.bids.start()
        if self._background:
            self._tasks.append(asyncio.create_task(self._sweep_forever(), name="ledger-sweeper"))
            self._tasks.append(
                asyncio.create_task(
                    self.sequencer.run_forever(
                        self.settings.audit_sequencer_interval_s, self._stop
                    ),
                    name="audit-sequencer",
                )
            )
            for relay in self.relays:
                self._tasks.append(
                    asyncio.create_task(
                        relay.run_forever(self._stop), name=f"audit-relay-{relay.state}"
                    )
                )
            self._tasks.append(
                asyncio.create_task(
                    self.tamper_guard.watch_forever(
                        self._stop, self.settings.audit_guard_interval_s
                    ),
                    name="audit-tamper-guard",
                )
            )
            self._tasks.append(
                asyncio.create_task(self._payments_janitor_forever(), name="payments-janitor")
            )
            self._tasks.append(
                asyncio.create_task(self._auctions_scheduler_forever(), name="auctions-scheduler")
            )
            self._tasks.append(
                asyncio.create_task(self._escrow_sweeper_forever(), name="escrow-sweeper")
            )
            if self.vault_audit is not None:
                self._tasks.append(
                    asyncio.create_task(
                        self.vault_audit.run_forever(self._stop), name="vault-audit-puller"
                    )
                )
            if self.webhook_deliverer is not None:
                self._tasks.append(
                    asyncio.create_task(
                        self.webhook_deliverer.run_forever(self._stop), name="webhook-deliverer"
                    )
                )
            if self.alert_relay is not None:
                alert_relay = self.alert_relay
                self._tasks.append(
                    asyncio.create_task(alert_relay.run_forever(self._stop), name="audit-alerts")
                )
                self._tasks.append(
                    asyncio.create_task(
                        self.alert_sink.watch_heartbeat(
                            self._stop, active=lambda: alert_relay.is_leader
                        ),
                        name="audit-heartbeat-watch",
                    )
                )

    async def stop(self) -> None:
        self._stop.set()
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        if self._background:
            with contextlib.suppress(Exception):  # best effort: the lease lapses anyway
                await self.sequencer.release()
        for relay in [*self.relays, *([self.alert_relay] if self.alert_relay else [])]:
            with contextlib.suppress(Exception):  # best effort: the lease lapses anyway
                await relay.close()
        if self.webhook_deliverer is not None:
            await self.webhook_deliverer.close()
        await self.tamper_guard.flush()
        await self.ledger_writer.stop()
        await self.auctions.bids.stop()
        if self.vault is not None:
            await self.vault.aclose()
        for adapter in self._webhook_adapters:
            aclose = getattr(adapter, "aclose", None)
            if aclose is not None:
                await aclose()
        await self.db.dispose()

    @staticmethod
    def _gateway_names(settings: Settings) -> list[str]:
        names = list(settings.vault_gateway_names)
        if settings.stripe_configured and "stripe" not in names:
            names.append("stripe")
        if settings.braintree_configured and "braintree" not in names:
            names.append("braintree")
        return names

    def _webhook_verifier(
        self, settings: Settings, name: str
    ) -> Callable[[Mapping[str, str], bytes], WebhookEvent] | None:
        """Inbound webhooks carry no card data: the API verifies them itself, with the
        gateway's own scheme (Stripe-style signature for the sandbox and Stripe; Braintree's
        ``bt_signature``)."""
        if name == "sandbox" and settings.sandbox_webhook_secret is not None:
            secret = settings.sandbox_webhook_secret.get_secret_value().encode()
            return sandbox_webhook_verifier(secret, self.clock)
        adapter: Gateway | None = None
        if name == "stripe" and settings.stripe_configured:
            adapter = StripeGateway.from_settings(settings)
        elif name == "braintree" and settings.braintree_configured:
            adapter = BraintreeGateway.from_settings(settings)
        if adapter is None:
            return None
        self._webhook_adapters.append(adapter)
        return adapter.parse_webhook

    def _vault_client(self, settings: Settings) -> VaultClient | None:
        """The card vault, when one is configured (``serve`` sets HAMMERLOCK_VAULT_URL)."""
        if not settings.vault_url:
            return None
        return VaultClient(
            settings.vault_url,
            InternalKeyring(settings.effective_vault_internal_key_file),
            clock=self.clock,
            timeout_s=settings.vault_timeout_s,
        )

    def _webhook_deliverer(self, settings: Settings) -> WebhookDeliverer | None:
        if settings.webhook_url is None or settings.webhook_secret is None:
            return None  # events are still recorded; nothing is sent
        return WebhookDeliverer(
            self.db,
            url=settings.webhook_url,
            secret=settings.webhook_secret.get_secret_value().encode(),
            node=self.node_name,
            timeout_s=settings.webhook_timeout_s,
            batch_size=settings.webhook_batch_size,
            backoff=Backoff(max_age_s=settings.webhook_max_age_s),
        )

    def _notifiers(self, settings: Settings) -> list[Notifier]:
        notifiers: list[Notifier] = [LogNotifier(), self.alert_channel]
        if settings.audit_alert_webhook_url and settings.audit_alert_webhook_secret:
            notifiers.append(
                WebhookNotifier(
                    settings.audit_alert_webhook_url,
                    settings.audit_alert_webhook_secret.get_secret_value(),
                    clock=self.clock,
                )
            )
        return notifiers

    async def _payments_janitor_forever(self) -> None:
        """Resolve stuck gateway calls, poll 3-D Secure challenges, expire reviews and holds."""
        ctx = Context.system("payments-janitor", node=self.node_name)
        while not self._stop.is_set():
            if await sleep_or_stop(self._stop, self.settings.payments_janitor_interval_s):
                break
            try:
                counts = await self.payments.janitor_pass(ctx)
            except Exception:
                log.exception("payments.janitor_failed")
                continue
            if any(counts.values()):
                log.info("payments.janitor", **counts)

    async def _escrow_sweeper_forever(self) -> None:
        """Payment windows, auto-delivery, inspection ends, payouts, refunds, offers."""
        ctx = Context.system("escrow-sweeper", node=self.node_name)
        while not self._stop.is_set():
            if await sleep_or_stop(self._stop, self.settings.escrow_sweeper_interval_s):
                break
            try:
                counts = await self.escrow.sweep(ctx)
            except Exception:
                log.exception("escrow.sweeper_failed")
                continue
            if any(counts.values()):
                log.info("escrow.sweeper", **counts)

    async def _auctions_scheduler_forever(self) -> None:
        """Open and close lots when their time comes (exactly once across processes: lots are
        claimed under row locks), and release losers' deposits."""
        ctx = Context.system("auctions-scheduler", node=self.node_name)
        while not self._stop.is_set():
            if await sleep_or_stop(self._stop, self.settings.auctions_scheduler_interval_s):
                break
            try:
                counts = await self.auctions.scheduler_pass(ctx)
            except Exception:
                log.exception("auctions.scheduler_failed")
                continue
            if any(counts.values()):
                log.info("auctions.scheduler", **counts)

    async def _sweep_forever(self) -> None:
        """Expire due holds and purge old idempotency records, about once a second."""
        while not self._stop.is_set():
            if await sleep_or_stop(self._stop, self.settings.ledger_sweep_interval_s):
                break
            try:
                async with self.db.transaction() as uow:
                    expired = await ledger_service.sweep_expired_holds(uow)
                if expired:
                    log.info("ledger.holds_expired", count=len(expired))
                await self.idempotency.purge_expired()
            except Exception:
                log.exception("ledger.sweep_failed")


def build_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    freeze_gc: bool = False,
    gc_gen0_threshold: int | None = None,
) -> FastAPI:
    return create_app(
        Container(settings, clock=clock), freeze_gc=freeze_gc, gc_gen0_threshold=gc_gen0_threshold
    )

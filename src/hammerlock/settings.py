"""Configuration: every knob is an ``HAMMERLOCK_*`` environment variable (docs/configuration.md).

Settings are built by the composition root (``bootstrap.py``), never at import time.
Secrets are ``SecretStr``: their ``repr`` and ``str`` are masked, so they never reach a log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

__all__ = ["Settings"]

MiB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HAMMERLOCK_", extra="ignore", frozen=True)

    data_dir: Path = Field(
        default=Path("./var"),
        description="Every file hammerlock writes (databases, keys, archives, logs) lives here.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy async URL. Default: sqlite+aiosqlite:///<data_dir>/hammerlock.db. "
        "PostgreSQL: postgresql+asyncpg://user@host:5432/db.",
    )
    db_pool_size: int = Field(
        default=20,
        ge=1,
        le=200,
        description="PostgreSQL connections kept per process; as many again may open under a "
        "burst and are closed when handed back while the kept ones are idle. Keep it at or above "
        "the requests a process serves at once: below, each burst forks new server backends "
        "(docs/configuration.md).",
    )
    sqlite_busy_timeout_ms: int = Field(default=10_000, ge=0, le=600_000)
    gc_freeze: bool = Field(
        default=True,
        description="A served API process freezes what start-up built (`gc.freeze()`), so "
        "full garbage collections stop walking it — most of the bids' p99 (ADR 0015).",
    )
    gc_gen0_threshold: int = Field(
        default=20_000,
        ge=100,
        le=1_000_000,
        description="A served API process collects its youngest generation after this many "
        "new container objects (CPython's default: 700): fewer, cheaper-per-object collections "
        "on the request path (ADR 0024). The older generations keep CPython's thresholds.",
    )
    auth_cache_ttl_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="How often an API process asks which keys were revoked lately and forgets "
        "those it keeps (a kept record is read again after 60 s in any case; the HMAC check "
        "runs on every request). A revocation made in another process takes effect here within "
        "this time; 0 reads the database on every request (ADR 0014, 0023).",
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65_535)
    node_name: str = Field(default="", max_length=64, description="Defaults to the host name.")
    vault_port: int = Field(default=8001, ge=1, le=65_535)
    vault_url: str | None = Field(default=None, description="A vault running elsewhere.")
    vault_host: str = Field(default="127.0.0.1", description="Interface the vault binds.")
    vault_public_url: str | None = Field(
        default=None,
        description="The vault as browsers reach it (absolute 3-D Secure URLs). Default: "
        "http://<vault_host>:<vault_port>.",
    )
    vault_database_url: str | None = Field(
        default=None,
        description="The vault's own database. Default: sqlite+aiosqlite:///<data_dir>/vault/"
        "vault.db. PostgreSQL allowed (a database of its own).",
    )
    vault_key_dir: Path | None = Field(
        default=None,
        description="Where the vault's key-encryption keyring lives. Default: "
        "<data_dir>/vault/keys.",
    )
    vault_kek: SecretStr | None = Field(
        default=None,
        description="Key-encryption keys from the environment instead of the key dir: base64 of "
        "32 bytes, or versioned `1:<base64>,2:<base64>` (the highest version encrypts).",
    )
    vault_internal_key_file: Path | None = Field(
        default=None,
        description="HMAC keyring authenticating API<->vault calls, shared by both. Default: "
        "<data_dir>/secrets/vault_internal_keys.json (generated, 0600).",
    )
    vault_cors_origins: str = Field(
        default="", description="Comma-separated origins whose pages may POST /v1/tokens."
    )
    vault_rate_window_s: int = Field(default=600, ge=1, le=86_400)
    vault_tokenize_ip_limit: int = Field(default=100, ge=1, le=1_000_000)
    vault_tokenize_card_limit: int = Field(default=20, ge=1, le=1_000_000)
    vault_tokenize_failure_limit: int = Field(default=10, ge=1, le=1_000_000)
    vault_timeout_s: float = Field(default=30, ge=0.1, le=300)
    vault_gateways: str = Field(
        default="sandbox",
        description="Comma-separated gateway names the API reaches via the vault.",
    )
    sandbox_faults: str = Field(
        default="",
        max_length=1_000,
        description="Sandbox gateway faults, e.g. 'crash_after_charge:0.5,slow:0.3@500ms' "
        "(grammar in docs/payments.md). Empty: none.",
    )
    sandbox_webhook_url: str | None = Field(
        default=None, description="The sandbox gateway POSTs its signed webhooks here."
    )
    sandbox_webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC secret of the sandbox gateway's webhooks."
    )
    sandbox_challenge_ttl_s: int = Field(
        default=1_800, ge=60, le=86_400, description="Lifetime of a sandbox 3-D Secure challenge."
    )

    stripe_api_key: SecretStr | None = Field(
        default=None, description="Stripe secret key (sk_live_… / sk_test_…) of the stripe gateway."
    )
    stripe_webhook_secret: SecretStr | None = Field(
        default=None, description="Signing secret (whsec_…) of the Stripe webhook endpoint."
    )
    stripe_api_base: str | None = Field(
        default=None, description="Another Stripe API base URL (a proxy, a local fake)."
    )
    stripe_timeout_s: float = Field(default=30, ge=0.1, le=300)
    braintree_merchant_id: str | None = Field(default=None, max_length=64)
    braintree_public_key: str | None = Field(default=None, max_length=64)
    braintree_private_key: SecretStr | None = Field(default=None)
    braintree_environment: Literal["sandbox", "production"] = "sandbox"
    braintree_host: str | None = Field(
        default=None, description="Another Braintree gateway URL (a proxy, a local fake)."
    )
    braintree_merchant_account_id: str | None = Field(
        default=None, max_length=64, description="Merchant account (a sub-merchant) for sales."
    )
    braintree_currency: str = Field(
        default="USD", pattern=r"^[A-Z]{3}$", description="The merchant account's currency."
    )
    braintree_timeout_s: float = Field(default=30, ge=0.1, le=300)
    gateway_retries: int = Field(default=3, ge=0, le=10)
    gateway_breaker_threshold: int = Field(default=5, ge=1, le=1_000)
    gateway_breaker_reset_s: float = Field(default=30, ge=1, le=3_600)

    api_key_pepper: SecretStr | None = Field(
        default=None,
        description="Server pepper for API-key hashes. Default: generated once into "
        "<data_dir>/secrets/api_key_pepper (mode 0600).",
    )

    max_body_bytes: int = Field(default=MiB, ge=1024, le=8 * MiB)
    idempotency_ttl_s: int = Field(default=86_400, ge=60, le=30 * 86_400)
    idempotency_lease_s: int = Field(default=10, ge=1, le=600)

    ledger_group_commit: bool = Field(
        default=True,
        description="Coalesce concurrent transfer requests into one transaction. Off: one "
        "transaction per request (the naive baseline the benchmark compares against).",
    )
    ledger_batch_max_transfers: int = Field(default=8_190, ge=1, le=8_190)
    ledger_batch_linger_ms: int = Field(
        default=0, ge=0, le=50, description="Extra wait to grow a group-commit batch."
    )
    ledger_sweep_interval_s: float = Field(default=1.0, ge=0.05, le=3_600)

    audit_signing_key_file: Path | None = Field(
        default=None,
        description="Ed25519 private key (PEM) that signs audit tree heads. Default: generated "
        "once into <data_dir>/keys/audit_signing_ed25519.pem (mode 0600).",
    )
    audit_sequencer_interval_s: float = Field(default=0.2, ge=0.01, le=10)
    audit_head_interval_s: float = Field(default=1.0, ge=0.05, le=60)
    audit_guard_interval_s: float = Field(
        default=30,
        ge=1,
        le=3_600,
        description="How often the append-only triggers of the audit tables are checked.",
    )

    audit_nats_url: str | None = Field(
        default=None, description="Relay the audit log to NATS JetStream here (off when unset)."
    )
    audit_nats_stream: str = Field(default="HAMMERLOCK_AUDIT", max_length=64)
    audit_nats_duplicate_window_s: float = Field(default=7_200, ge=60, le=7 * 86_400)
    audit_kafka_bootstrap: str | None = Field(
        default=None, description="Relay the audit log to Kafka here (off when unset)."
    )
    audit_kafka_topic: str = Field(default="hammerlock.audit", max_length=200)
    audit_archive_dir: Path | None = Field(
        default=None, description="Sealed audit segments. Default: <data_dir>/audit/archive."
    )
    audit_archive_segment_events: int = Field(default=10_000, ge=10, le=1_000_000)
    audit_archive_segment_age_s: float = Field(default=60, ge=1, le=86_400)
    audit_archive_s3_bucket: str | None = Field(
        default=None,
        max_length=63,
        description="Archive sealed segments to this S3 bucket instead of audit_archive_dir "
        "(credentials: the standard AWS variables or profile; never logged).",
    )
    audit_archive_s3_prefix: str = Field(default="", max_length=512)
    audit_archive_s3_endpoint_url: str | None = Field(
        default=None, description="An S3-compatible endpoint (MinIO, Ceph…); unset: AWS."
    )
    audit_archive_s3_region: str | None = Field(default=None, max_length=64)
    audit_archive_s3_object_lock_days: int | None = Field(
        default=None,
        ge=1,
        le=36_500,
        description="Put each object under S3 Object Lock (compliance mode) for this many days; "
        "the bucket must have Object Lock enabled.",
    )
    audit_relay_lag_alert: int = Field(default=10_000, ge=1)
    audit_relay_page_size: int = Field(default=1_000, ge=1, le=10_000)

    audit_outbox_high_water: int = Field(
        default=100_000,
        ge=1,
        le=100_000_000,
        description="/readyz reports degraded when more events than this await sequencing.",
    )
    audit_alert_enabled: bool = Field(
        default=True, description="Run the alert rules over the audit log."
    )
    audit_alert_webhook_url: str | None = Field(
        default=None, description="POST alerts here, signed (docs/audit.md); off when unset."
    )
    audit_alert_webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC secret for alert webhooks (at least 16 characters)."
    )
    audit_alert_heartbeat_timeout_s: float = Field(default=180, ge=10, le=86_400)

    @field_validator("audit_alert_webhook_secret")
    @classmethod
    def _webhook_secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("HAMMERLOCK_AUDIT_ALERT_WEBHOOK_SECRET needs at least 16 characters")
        return value

    webhook_url: str | None = Field(
        default=None,
        description="POST payment events here, signed (docs/payments.md); off when unset "
        "(events are still recorded and listed at /v1/webhook_events).",
    )
    webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC secret for outbound webhooks (at least 16 characters)."
    )
    webhook_max_age_s: int = Field(
        default=3 * 86_400, ge=60, le=30 * 86_400, description="Retry an event for this long."
    )
    webhook_timeout_s: float = Field(default=10, ge=0.1, le=60)
    webhook_batch_size: int = Field(default=20, ge=1, le=100)

    @field_validator("webhook_secret")
    @classmethod
    def _outbound_secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("HAMMERLOCK_WEBHOOK_SECRET needs at least 16 characters")
        return value

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> Settings:
        if self.webhook_url is not None and self.webhook_secret is None:
            raise ValueError("HAMMERLOCK_WEBHOOK_URL needs HAMMERLOCK_WEBHOOK_SECRET")
        return self

    risk_rules_file: Path | None = Field(
        default=None,
        description="Risk rules (TOML, docs/payments.md). Default: the built-in rules.",
    )

    payments_gateway: Literal["sandbox", "stripe", "braintree"] = Field(
        default="sandbox", description="The gateway new payment intents use."
    )
    payments_janitor_interval_s: float = Field(
        default=1.0,
        ge=0.05,
        le=60,
        description="How often the payments janitor runs (it also polls 3-D Secure challenges).",
    )
    payments_janitor_grace_s: float = Field(
        default=10.0,
        ge=0,
        le=30,
        description="A gateway call left `processing` this long is resolved by the janitor.",
    )
    payments_authorization_days: dict[str, int] = Field(
        default_factory=dict,
        description="Override how long card authorizations live, by brand, JSON (e.g. "
        '{"visa": 4}); defaults: Visa 5 days, other brands 7.',
    )
    payments_three_ds_force_above: dict[str, int] = Field(
        default_factory=dict,
        description="Force a 3-D Secure challenge at or above these amounts, JSON by currency "
        'in minor units (e.g. {"USD": 500000}). Off (empty) by default.',
    )

    escrow_sweeper_interval_s: float = Field(
        default=1.0,
        ge=0.05,
        le=60,
        description="How often the escrow sweeper runs (payment windows, auto-delivery, "
        "inspection ends, payouts and refunds to resume, second-chance offers).",
    )
    escrow_auto_delivery_s: int = Field(
        default=14 * 86_400,
        ge=1,
        le=366 * 86_400,
        description="A shipped order with no word from the buyer this long counts as delivered.",
    )
    escrow_ship_window_s: int = Field(
        default=7 * 86_400,
        ge=1,
        le=366 * 86_400,
        description="A paid order not shipped this long is canceled and refunded in full.",
    )

    auctions_scheduler_interval_s: float = Field(
        default=0.5,
        ge=0.05,
        le=60,
        description="How often the auction scheduler opens and closes due lots.",
    )
    auctions_close_batch: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Lots the scheduler opens or closes per pass (each in its own transaction).",
    )

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'hammerlock.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @property
    def missing_sqlite_file(self) -> Path | None:
        """The SQLite database file these settings name, when it does not exist (yet): a
        command that needs the schema, run elsewhere, would otherwise make an empty one. None
        on PostgreSQL, in memory, or when the file is there."""
        if not self.is_sqlite:
            return None
        name = make_url(self.effective_database_url).database
        if not name or name == ":memory:" or Path(name).exists():
            return None
        return Path(name)

    @property
    def effective_vault_database_url(self) -> str:
        if self.vault_database_url:
            return self.vault_database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'vault' / 'vault.db'}"

    @property
    def stripe_configured(self) -> bool:
        """What :meth:`StripeGateway.from_settings` needs is set: the vault serves ``stripe``
        and the API routes to it (one test for both, so they agree)."""
        return self.stripe_api_key is not None and self.stripe_webhook_secret is not None

    @property
    def braintree_configured(self) -> bool:
        """What :meth:`BraintreeGateway.from_settings` needs is set (as for Stripe, above)."""
        return bool(self.braintree_merchant_id and self.braintree_public_key) and (
            self.braintree_private_key is not None
        )

    @property
    def effective_vault_public_url(self) -> str:
        return (self.vault_public_url or f"http://{self.vault_host}:{self.vault_port}").rstrip("/")

    @property
    def effective_vault_key_dir(self) -> Path:
        return self.vault_key_dir or self.data_dir / "vault" / "keys"

    @property
    def effective_vault_internal_key_file(self) -> Path:
        return (
            self.vault_internal_key_file or self.data_dir / "secrets" / "vault_internal_keys.json"
        )

    @property
    def vault_cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.vault_cors_origins.split(",") if o.strip()]

    @property
    def vault_gateway_names(self) -> list[str]:
        return [g.strip() for g in self.vault_gateways.split(",") if g.strip()]

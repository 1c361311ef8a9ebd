"""Configuration: every knob is an ``HAMMERLOCK_*`` environment variable (docs/configuration.md).

Settings are built by the composition root (``bootstrap.py``), never at import time.
Secrets are ``SecretStr``: their ``repr`` and ``str`` are masked, so they never reach a log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    db_pool_size: int = Field(default=10, ge=1, le=200)
    sqlite_busy_timeout_ms: int = Field(default=10_000, ge=0, le=600_000)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65_535)
    node_name: str = Field(default="", max_length=64, description="Defaults to the host name.")
    vault_port: int = Field(default=8001, ge=1, le=65_535)
    vault_url: str | None = Field(default=None, description="A vault running elsewhere.")

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

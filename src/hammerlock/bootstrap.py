"""The composition root: settings, clock, database, services and background tasks, wired once.

Nothing in hammerlock creates an engine, reads settings or starts a task at import time; this
module does it when asked, and ``Container.stop`` undoes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from pathlib import Path

import structlog
from fastapi import FastAPI

from hammerlock.api.app import create_app
from hammerlock.api.idempotency import IdempotencyStore
from hammerlock.audit.sequencer import Sequencer
from hammerlock.audit.signing import AuditSigner
from hammerlock.clock import Clock, SystemClock
from hammerlock.db.engine import Database, create_database
from hammerlock.ledger import service as ledger_service
from hammerlock.ledger.writer import LedgerWriter
from hammerlock.settings import Settings

__all__ = ["Container", "build_app", "load_pepper"]

log = structlog.get_logger("hammerlock.bootstrap")


def _secret_file(path: Path, nbytes: int = 32) -> bytes:
    """Read a secret file, creating it (mode 0600) on first use.

    Creation is atomic: the secret is written to a private temporary file and hard-linked into
    place, so a process starting at the same moment sees either no file or the whole secret.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(nbytes))
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
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
        self._background = background
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self.settings.ledger_group_commit:
            await self.ledger_writer.start()
        if self._background:
            self._tasks.append(asyncio.create_task(self._sweep_forever(), name="ledger-sweeper"))
            self._tasks.append(
                asyncio.create_task(
                    self.sequencer.run_forever(self.settings.audit_sequencer_interval_s),
                    name="audit-sequencer",
                )
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._background:
            with contextlib.suppress(Exception):  # best effort: the lease lapses anyway
                await self.sequencer.release()
        await self.ledger_writer.stop()
        await self.db.dispose()

    async def _sweep_forever(self) -> None:
        """Expire due holds and purge old idempotency records, about once a second."""
        while True:
            await asyncio.sleep(self.settings.ledger_sweep_interval_s)
            try:
                async with self.db.transaction() as uow:
                    expired = await ledger_service.sweep_expired_holds(uow)
                if expired:
                    log.info("ledger.holds_expired", count=len(expired))
                await self.idempotency.purge_expired()
            except Exception:
                log.exception("ledger.sweep_failed")


def build_app(settings: Settings, *, clock: Clock | None = None) -> FastAPI:
    return create_app(Container(settings, clock=clock))

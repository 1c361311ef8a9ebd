"""The vault's business events: tokenize, read metadata, detokenize, rotate keys.

Each event that touches card data commits with its audit event (``vault.tokenize``,
``vault.detokenize``, ``vault.keys.rotate``; failures too) in the vault's own outbox, which the
API pulls into the main audit trail. Audit details name a card by brand, last4 and fingerprint
only. The number is in memory only between a request and its encryption (tokenize), or between
decryption and the gateway call (detokenize); the CVC only in
:class:`~hammerlock.vault.cvc.CvcCache`.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from sqlalchemy.exc import IntegrityError

from hammerlock.audit.model import AuditEvent, Context, Outcome
from hammerlock.db.engine import Database
from hammerlock.db.uow import UnitOfWork
from hammerlock.payments.gateways.base import CardData
from hammerlock.vault import storage, wire
from hammerlock.vault.cvc import CvcCache
from hammerlock.vault.errors import CardRejected, RateLimited, TokenNotFound
from hammerlock.vault.hazmat.envelope import (
    DecryptionFailed,
    Sealed,
    fingerprint,
    open_sealed,
    rewrap,
    seal,
)
from hammerlock.vault.hazmat.kek import KeyEncryptionKeyProvider
from hammerlock.vault.model import CardInput, TokenInfo, ValidCard, new_token_id, validate
from hammerlock.vault.ratelimit import Limit, RateLimiter

__all__ = ["CardVault", "RotationReport", "TokenizeLimits"]

log = structlog.get_logger("hammerlock.vault")

TOKENIZE = "vault.tokenize"
DETOKENIZE = "vault.detokenize"
ROTATE = "vault.keys.rotate"
_FINGERPRINT_KEY = "fingerprint"
MAX_ROTATION_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class TokenizeLimits:
    per_ip: Limit
    per_card: Limit
    failures_per_ip: Limit

    @classmethod
    def of(cls, *, window_s: int, per_ip: int, per_card: int, failures: int) -> TokenizeLimits:
        return cls(
            per_ip=Limit("ip", per_ip, window_s),
            per_card=Limit("card", per_card, window_s),
            failures_per_ip=Limit("failures", failures, window_s),
        )


@dataclass(frozen=True, slots=True)
class RotationReport:
    active_version: int
    rewrapped: int
    failed: list[str]  # token ids whose data key did not unwrap (tampered rows)


def _event_row(event: AuditEvent) -> dict[str, object]:
    return {
        "event_id": event.event_id,
        "ts_us": event.ts_us,
        "action": event.action,
        "event": orjson.dumps(wire.event_to_json(event)).decode(),
    }


async def record(uow: UnitOfWork, *events: AuditEvent) -> None:
    await storage.insert_events(uow, [_event_row(e) for e in events])


def _card_details(info: TokenInfo | ValidCard, fp: str | None) -> dict[str, Any]:
    return {"brand": info.brand, "last4": info.last4, "fingerprint": fp}


class CardVault:
    def __init__(
        self,
        db: Database,
        kek: KeyEncryptionKeyProvider,
        *,
        cvc: CvcCache,
        limiter: RateLimiter,
        limits: TokenizeLimits,
    ) -> None:
        self.db = db
        self.kek = kek
        self.cvc = cvc
        self.limiter = limiter
        self.limits = limits
        self._fingerprint_key: bytes | None = None

    def __repr__(self) -> str:
        return f"CardVault(kek={self.kek.name})"

    # -- keys ----------------------------------------------------------------------------------

    async def load_keys(self) -> None:
        """Load (or create, once) the fingerprint key, stored wrapped like any data key."""
        aad_id = f"vault_keys:{_FINGERPRINT_KEY}"
        async with self.db.transaction(write=False) as uow:
            row = await storage.key_by_name(uow, _FINGERPRINT_KEY)
        if row is None:
            sealed = await seal(self.kek, aad_id, secrets.token_bytes(32))
            # Another vault process may create it first: then read theirs.
            with contextlib.suppress(IntegrityError):
                async with self.db.transaction() as uow:
                    await storage.insert_key(
                        uow,
                        _FINGERPRINT_KEY,
                        kek_version=sealed.kek_version,
                        wrapped_key=sealed.wrapped_key,
                        ciphertext=sealed.ciphertext,
                    )
            async with self.db.transaction(write=False) as uow:
                row = await storage.key_by_name(uow, _FINGERPRINT_KEY)
        if row is None:
            raise RuntimeError("the fingerprint key vanished")
        self._fingerprint_key = await open_sealed(
            self.kek,
            aad_id,
            Sealed(row.kek_version, bytes(row.wrapped_key), bytes(row.ciphertext)),
        )

    def fingerprint(self, number: str) -> str:
        if self._fingerprint_key is None:
            raise RuntimeError("CardVault.load_keys() has not run")
        return fingerprint(self._fingerprint_key, number)

    # -- tokenize ------------------------------------------------------------------------------

    def _check_limit(self, limit: Limit, subject: str) -> None:
        retry_after_s = self.limiter.retry_after_s(limit, subject)
        if retry_after_s is not None:
            # Logged, not audited: a flood must not turn into as many database writes.
            log.warning("vault.rate_limited", limit=limit.name, retry_after_s=retry_after_s)
            raise RateLimited(
                "too many card tokenization attempts; try again later",
                retry_after_s=retry_after_s,
            )

    async def tokenize(self, card: CardInput, ctx: Context, *, client: str) -> TokenInfo:
        """Validate, encrypt and store a card; its CVC goes to memory only."""
        self._check_limit(self.limits.failures_per_ip, client)
        self._check_limit(self.limits.per_ip, client)
        self.limiter.hit(self.limits.per_ip, client)
        try:
            valid = validate(card, now_us=self.db.clock.now_us())
        except CardRejected as exc:
            self.limiter.hit(self.limits.failures_per_ip, client)
            await self._record_failure(ctx, exc.code, {})
            raise
        fp = self.fingerprint(valid.number)
        try:
            self._check_limit(self.limits.per_card, fp)
        except RateLimited:
            self.limiter.hit(self.limits.failures_per_ip, client)
            await self._record_failure(ctx, RateLimited.code, _card_details(valid, fp))
            raise
        self.limiter.hit(self.limits.per_card, fp)
        info = await self._store(valid, fp, ctx)
        if valid.cvc is not None:
            self.cvc.put(info.id, valid.cvc)
        return info

    async def _store(self, valid: ValidCard, fp: str, ctx: Context) -> TokenInfo:
        token_id = new_token_id()
        plaintext = json.dumps({"number": valid.number, "name": valid.name}).encode()
        sealed = await seal(self.kek, token_id, plaintext)
        async with self.db.transaction() as uow:
            info = TokenInfo(
                id=token_id,
                brand=valid.brand,
                last4=valid.last4,
                bin=valid.bin,
                exp_month=valid.exp_month,
                exp_year=valid.exp_year,
                fingerprint=fp,
                created_us=uow.clock.now_us(),
                address_country=valid.address_country,
            )
            await storage.insert_card(
                uow,
                storage.CardRow(
                    id=info.id,
                    brand=info.brand,
                    last4=info.last4,
                    bin=info.bin,
                    exp_month=info.exp_month,
                    exp_year=info.exp_year,
                    address_country=info.address_country,
                    fingerprint=fp,
                    kek_version=sealed.kek_version,
                    wrapped_key=sealed.wrapped_key,
                    ciphertext=sealed.ciphertext,
                    created_us=info.created_us,
                ),
            )
            await record(
                uow,
                ctx.event(
                    TOKENIZE,
                    resource_type="card_token",
                    resource_id=token_id,
                    ts_us=info.created_us,
                    details={**_card_details(valid, fp), "cvc_held": valid.cvc is not None},
                ),
            )
        return info

    async def _record_failure(
        self, ctx: Context, code: str, details: dict[str, Any], action: str = TOKENIZE
    ) -> None:
        async with self.db.transaction() as uow:
            await record(
                uow,
                ctx.event(
                    action,
                    resource_type="card_token",
                    resource_id=details.pop("token_id", None),
                    ts_us=uow.clock.now_us(),
                    outcome=Outcome.FAILURE,
                    outcome_code=code,
                    details=details,
                ),
            )

    # -- read ----------------------------------------------------------------------------------

    async def token(self, token_id: str) -> TokenInfo:
        async with self.db.transaction(write=False) as uow:
            row = await storage.card_by_id(uow, token_id)
        if row is None:
            raise TokenNotFound(f"no token {token_id}")
        return _info(row)

    async def detokenize(self, token_id: str, ctx: Context, *, purpose: dict[str, Any]) -> CardData:
        """The card behind ``token_id`` (with its CVC, once), audited before it is returned.

        Called only inside the vault, right before a gateway call; the result never leaves the
        vault process except towards the gateway.
        """
        async with self.db.transaction(write=False) as uow:
            row = await storage.card_by_id(uow, token_id)
        if row is None:
            await self._record_failure(
                ctx, TokenNotFound.code, {"token_id": token_id, **purpose}, DETOKENIZE
            )
            raise TokenNotFound(f"no token {token_id}")
        try:
            plain = await open_sealed(
                self.kek, token_id, Sealed(row.kek_version, row.wrapped_key, row.ciphertext)
            )
        except DecryptionFailed:
            await self._record_failure(
                ctx, "decryption_failed", {"token_id": token_id, **purpose}, DETOKENIZE
            )
            raise
        body = json.loads(plain)
        cvc = self.cvc.take(token_id)
        async with self.db.transaction() as uow:
            await record(
                uow,
                ctx.event(
                    DETOKENIZE,
                    resource_type="card_token",
                    resource_id=token_id,
                    ts_us=uow.clock.now_us(),
                    details={
                        "brand": row.brand,
                        "last4": row.last4,
                        "fingerprint": row.fingerprint,
                        "cvc_used": cvc is not None,
                        **purpose,
                    },
                ),
            )
        return CardData(
            number=body["number"],
            exp_month=row.exp_month,
            exp_year=row.exp_year,
            cvc=cvc,
            name=body.get("name"),
        )

    # -- rotation ------------------------------------------------------------------------------

    async def rotate(
        self,
        ctx: Context,
        *,
        add_version: bool,
        batch_size: int = 500,
        progress: Callable[[int, int], None] | None = None,
    ) -> RotationReport:
        """Re-wrap every data key under the active KEK (after adding a version if asked).

        In batches, each its own short transaction, with an optimistic check per row, so the
        vault keeps serving (and tokenizing under the new version) throughout.
        """
        if not 1 <= batch_size <= MAX_ROTATION_BATCH:
            raise ValueError(f"batch_size must be 1 to {MAX_ROTATION_BATCH}")
        if add_version:
            await self.kek.add_version()
        active = await self.kek.active_version()
        await self._rewrap_fingerprint_key(active)
        async with self.db.transaction(write=False) as uow:
            total = await storage.count_not_under(uow, active)
        done, failed, after = 0, [], ""
        while True:
            async with self.db.transaction(write=False) as uow:
                rows = await storage.cards_not_under(uow, active, batch_size, after_id=after)
            if not rows:
                break
            updates = []
            for row in rows:
                try:
                    sealed = await rewrap(
                        self.kek, row.id, Sealed(row.kek_version, row.wrapped_key, row.ciphertext)
                    )
                except DecryptionFailed:
                    failed.append(row.id)
                    continue
                updates.append((row, sealed))
            async with self.db.transaction() as uow:
                for row, sealed in updates:
                    if await storage.update_wrap(
                        uow,
                        row.id,
                        old_version=row.kek_version,
                        new_version=sealed.kek_version,
                        wrapped_key=sealed.wrapped_key,
                    ):
                        done += 1
            after = rows[-1].id
            if progress is not None:
                progress(done + len(failed), total)
        async with self.db.transaction() as uow:
            await record(
                uow,
                ctx.event(
                    ROTATE,
                    resource_type="vault_kek",
                    resource_id=str(active),
                    ts_us=uow.clock.now_us(),
                    outcome=Outcome.FAILURE if failed else Outcome.SUCCESS,
                    outcome_code="rewrap_failed" if failed else None,
                    details={
                        "active_version": active,
                        "new_version": add_version,
                        "rewrapped": done,
                        "failed": len(failed),
                    },
                ),
            )
        return RotationReport(active_version=active, rewrapped=done, failed=failed)

    async def _rewrap_fingerprint_key(self, active: int) -> None:
        aad_id = f"vault_keys:{_FINGERPRINT_KEY}"
        async with self.db.transaction(write=False) as uow:
            row = await storage.key_by_name(uow, _FINGERPRINT_KEY)
        if row is None or row.kek_version == active:
            return
        sealed = await rewrap(
            self.kek, aad_id, Sealed(row.kek_version, bytes(row.wrapped_key), bytes(row.ciphertext))
        )
        async with self.db.transaction() as uow:
            await storage.update_key_wrap(
                uow,
                _FINGERPRINT_KEY,
                old_version=row.kek_version,
                new_version=sealed.kek_version,
                wrapped_key=sealed.wrapped_key,
            )

    # -- audit outbox ---------------------------------------------------------------------------

    async def audit_events(self, *, after: int, limit: int) -> list[storage.OutboxRow]:
        async with self.db.transaction(write=False) as uow:
            return await storage.audit_after(uow, after, limit)


def _info(row: storage.CardRow) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        brand=row.brand,
        last4=row.last4,
        bin=row.bin,
        exp_month=row.exp_month,
        exp_year=row.exp_year,
        fingerprint=row.fingerprint,
        created_us=row.created_us,
        address_country=row.address_country,
    )

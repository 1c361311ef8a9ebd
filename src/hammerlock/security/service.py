"""API keys: create, list, revoke (each takes a unit of work); :class:`KeyVerifier` checks a
presented key on every request."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from hammerlock.audit import service as audit
from hammerlock.audit.model import Context, Outcome
from hammerlock.db.engine import Database
from hammerlock.db.uow import UnitOfWork
from hammerlock.security import storage
from hammerlock.security.errors import KeyNotFound, Unauthenticated
from hammerlock.security.keys import (
    ApiKey,
    format_key,
    hash_secret,
    new_key_id,
    new_principal_id,
    new_secret,
    parse_key,
    secret_matches,
)
from hammerlock.security.permissions import Role

__all__ = [
    "CreatedKey",
    "KeyVerifier",
    "create_key",
    "list_keys",
    "record_auth_failure",
    "revoke_key",
]


@dataclass(frozen=True, slots=True)
class CreatedKey:
    key: ApiKey
    plaintext: str  # shown once, never stored

    def __repr__(self) -> str:
        return f"CreatedKey(key={self.key!r}, plaintext='**********')"


async def create_key(
    uow: UnitOfWork,
    ctx: Context,
    *,
    pepper: bytes,
    role: Role,
    name: str,
    principal_id: str | None = None,
    expires_us: int | None = None,
) -> CreatedKey:
    now_us = uow.clock.now_us()
    secret = new_secret()
    key = ApiKey(
        id=new_key_id(),
        principal_id=principal_id or new_principal_id(),
        role=role,
        name=name,
        created_us=now_us,
        expires_us=expires_us,
        revoked_us=None,
        created_by=ctx.actor.principal_id or "unknown",
    )
    await storage.insert_key(uow, key, hash_secret(pepper, secret))
    await audit.record(
        uow,
        ctx.event(
            "keys.create",
            resource_type="api_key",
            resource_id=key.id,
            ts_us=now_us,
            details={"role": role.value, "principal_id": key.principal_id, "name": name},
        ),
    )
    return CreatedKey(key=key, plaintext=format_key(key.id, secret))


async def list_keys(uow: UnitOfWork, *, after: str | None, limit: int) -> list[ApiKey]:
    return await storage.list_keys(uow, after=after, limit=limit)


async def revoke_key(uow: UnitOfWork, ctx: Context, key_id: str) -> ApiKey:
    now_us = uow.clock.now_us()
    found = await storage.fetch_key(uow, key_id)
    if found is None:
        raise KeyNotFound(f"no API key {key_id!r}")
    changed = await storage.mark_revoked(uow, key_id, now_us)
    await audit.record(
        uow,
        ctx.event(
            "keys.revoke",
            resource_type="api_key",
            resource_id=key_id,
            ts_us=now_us,
            details={"already_revoked": not changed},
        ),
    )
    refreshed = await storage.fetch_key(uow, key_id)
    if refreshed is None:  # pragma: no cover - same transaction
        raise KeyNotFound(f"no API key {key_id!r}")
    return refreshed[0]


async def record_auth_failure(
    uow: UnitOfWork, ctx: Context, *, action: str, code: str, route: str
) -> None:
    """Every authentication failure and permission denial is audited (PCI DSS 10.2.1.4-5)."""
    await audit.record(
        uow,
        ctx.event(
            action,
            resource_type="route",
            resource_id=route,
            ts_us=uow.clock.now_us(),
            outcome=Outcome.FAILURE,
            outcome_code=code,
        ),
    )


_REVOKED_MAX = 10_000  # more revoked in the window than this: forget every kept key


class KeyVerifier:
    """Authenticates presented API keys, keeping each key's stored record (ADR 0014, 0023).

    Every request checks its key; without this the check is a database round trip, about a
    tenth of a bid's CPU. What is kept is the *stored* record (id, role, principal, expiry,
    revocation, the secret's HMAC), never the presented secret: every request still computes
    the HMAC and compares it in constant time, and checks expiry against the clock.

    A kept record is used only while this process has asked, within the last ``ttl_s``, which
    keys were revoked in the last ``revocation_window_s`` (one indexed query for the whole
    process, not one read per key): those are forgotten, so a revocation made elsewhere (the
    CLI, another API node) reaches this process within ``ttl_s``. A revocation made through this
    process forgets the key at once (:meth:`forget`). A record is read again after
    ``max_age_s`` whatever the check says — the backstop for a revocation stamped by a clock
    more than the window behind, or a row changed by hand. ``ttl_s = 0`` turns the cache off.
    Unknown keys are never kept, so a flood of bad keys cannot fill it.
    """

    def __init__(
        self,
        db: Database,
        *,
        pepper: bytes,
        ttl_s: float,
        max_age_s: float = 60.0,
        revocation_window_s: float = 600.0,
        max_entries: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s < 0 or max_entries < 1 or max_age_s < ttl_s or revocation_window_s < max_age_s:
            raise ValueError(
                "KeyVerifier: ttl_s >= 0, max_entries >= 1, "
                "ttl_s <= max_age_s <= revocation_window_s"
            )
        self._db = db
        self._pepper = pepper
        self._ttl_s = ttl_s
        self._max_age_s = max_age_s
        self._window_us = int(revocation_window_s * 1_000_000)
        self._max = max_entries
        self._monotonic = monotonic
        self._kept: dict[str, tuple[float, ApiKey, str]] = {}
        self._forgets = 0  # a lookup under way when a key is forgotten must not put it back
        self._checked_at = -math.inf  # when the revocations were last asked for (monotonic)
        self._checking: asyncio.Lock | None = None
        self._failed: tuple[float, Exception] | None = None  # the last check's failure, if any

    async def authenticate(self, presented: str) -> ApiKey:
        """The key behind ``presented``, or :class:`Unauthenticated` (one message for every
        cause: missing, unknown, revoked, expired or a wrong secret). An unknown id spends the
        same HMAC work as a real check; a known id used in the last ``max_age_s`` skips the
        database read, so timing can tell that an id exists and was used lately — ids are not
        secret (the 256-bit secret is what is checked)."""
        parsed = parse_key(presented)
        found = None if parsed is None else await self._stored(parsed.key_id)
        if parsed is None or found is None:
            secret_matches(self._pepper, presented, "0" * 64)  # same work: timing tells nothing
            raise Unauthenticated("missing, unknown, revoked or expired API key")
        key, stored_hash = found
        ok = secret_matches(self._pepper, parsed.secret, stored_hash)
        if not ok or not key.usable_at(self._db.clock.now_us()):
            raise Unauthenticated("missing, unknown, revoked or expired API key")
        return key

    def forget(self, key_id: str) -> None:
        """Drop a key now (its revocation committed in this process). A lookup that read the
        record before and finishes after does not keep what it read."""
        self._forgets += 1
        self._kept.pop(key_id, None)

    async def _stored(self, key_id: str) -> tuple[ApiKey, str] | None:
        if self._ttl_s > 0 and self._monotonic() - self._checked_at >= self._ttl_s:
            await self._check_revocations()
        now = self._monotonic()
        kept = self._kept.get(key_id)
        if kept is not None and now - kept[0] < self._max_age_s:
            return kept[1], kept[2]
        forgets = self._forgets
        async with self._db.single_statement(write=False) as uow:
            found = await storage.fetch_key(uow, key_id)
        if found is None or self._ttl_s == 0 or self._forgets != forgets:
            self._kept.pop(key_id, None)
            return found
        if key_id not in self._kept and len(self._kept) >= self._max:
            del self._kept[next(iter(self._kept))]  # the oldest entry
        self._kept[key_id] = (now, *found)
        return found

    async def _check_revocations(self) -> None:
        """Forget every kept key revoked in the window (all of them, if there are more than
        :data:`_REVOKED_MAX`). One caller asks; the others wait for its answer and take it —
        or its failure — when that check began after they arrived less the TTL (so a slow or
        failing database is asked once, not once per waiting request in turn)."""
        arrived = self._monotonic()
        if self._checking is None:
            self._checking = asyncio.Lock()
        async with self._checking:
            if arrived - self._checked_at < self._ttl_s:
                return  # a check fresh enough for this request ran while it waited
            failed = self._failed
            if failed is not None and failed[0] >= arrived:
                raise failed[1]  # one that began after this request arrived failed: so does it
            started = self._monotonic()
            try:
                await self._forget_revoked(started)
            except Exception as exc:
                self._failed = (started, exc)
                raise
            self._failed = None

    async def _forget_revoked(self, started: float) -> None:
        since = self._db.clock.now_us() - self._window_us
        async with self._db.single_statement(write=False) as uow:
            revoked = await storage.revoked_since(uow, since, _REVOKED_MAX + 1)
        if revoked:
            self._forgets += 1  # a lookup that read before a revocation keeps nothing
            if len(revoked) > _REVOKED_MAX:
                self._kept.clear()
            for key_id in revoked:
                self._kept.pop(key_id, None)
        self._checked_at = started

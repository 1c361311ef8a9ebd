"""Idempotency keys (IETF httpapi Idempotency-Key draft, with Stripe's behaviour).

The first request with a key takes a *lease* on it (a row in ``idempotency_keys``) and keeps
renewing it while its handler runs. When the handler has produced a response, the response is
stored with a fingerprint of method, path, API key and body, for ``idempotency_ttl_s``; retries
replay it byte for byte with ``Idempotent-Replayed: true``. The same key with another body is
422 ``idempotency_key_reuse``; a retry while the lease is held is 409
``idempotency_key_in_flight``. If the process dies mid-request the lease lapses and a retry runs
afresh — safe because every money-moving operation is idempotent underneath.

Works across processes: the lease is a database row, taken and completed with conditional writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
import rfc8785
import sqlalchemy as sa
import structlog
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from starlette.responses import Response

from hammerlock.api.problems import ApiError
from hammerlock.db.engine import Database
from hammerlock.db.receipts import Receipt, Stored, idempotency_keys

__all__ = [
    "PENDING_HEADER",
    "REPLAYED_HEADERS",
    "IdempotencyStore",
    "fingerprint",
    "idempotency_keys",
    "replay",
    "stored_headers",
    "validate_key",
]

log = structlog.get_logger("hammerlock.idempotency")

REPLAYED_HEADERS = ("content-type", "location")
# A handler whose outcome is not final yet answers with this header set to "pending"; such an
# answer is never stored for replay (a retry resumes the work instead).
PENDING_HEADER = "hammerlock-outcome"
_MAX_KEY_LENGTH = 255


def validate_key(raw: str) -> str:
    # Printable ASCII is 0x20-0x7E, space included (the draft's key is a Structured Field
    # string, which may hold spaces); HTTP parsers have already trimmed the outer whitespace.
    if not 1 <= len(raw) <= _MAX_KEY_LENGTH or not all(0x20 <= ord(c) < 0x7F for c in raw):
        raise ApiError(
            "idempotency_key_invalid", "Idempotency-Key must be 1-255 printable ASCII characters"
        )
    return raw


def fingerprint(method: str, path: str, scope: str, body: bytes) -> str:
    """Stable across JSON formatting: a JSON body is hashed in its RFC 8785 canonical form."""
    try:
        canonical = rfc8785.dumps(orjson.loads(body)) if body else b""
    except (orjson.JSONDecodeError, rfc8785.CanonicalizationError, ValueError, TypeError):
        canonical = body
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), scope.encode(), canonical):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class _Stored:
    status_code: int
    headers: dict[str, str]
    body: bytes

    def response(self) -> Response:
        headers = dict(self.headers)
        headers["Idempotent-Replayed"] = "true"
        return Response(content=self.body, status_code=self.status_code, headers=headers)


def replay(stored: Stored) -> Response:
    """A stored answer, as the response a retry gets."""
    headers = dict(stored.headers)
    headers["Idempotent-Replayed"] = "true"
    return Response(content=stored.body, status_code=stored.status_code, headers=headers)


def stored_headers(response: Response) -> dict[str, str]:
    return {name: response.headers[name] for name in REPLAYED_HEADERS if name in response.headers}


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class IdempotencyStore:
    def __init__(self, db: Database, *, ttl_s: int, lease_s: int) -> None:
        self._db = db
        self._ttl_us = ttl_s * 1_000_000
        self._lease_us = lease_s * 1_000_000
        self._renew_every_s = max(lease_s / 3, 0.2)

    def receipt(self, *, scope: str, key: str, fingerprint: str) -> Receipt:
        """For a route that stores its answer in its own transaction (docs/adr/0013)."""
        return Receipt(scope=scope, key=key, fingerprint=fingerprint, ttl_us=self._ttl_us)

    async def run(
        self,
        *,
        scope: str,
        key: str,
        fingerprint: str,
        handler: Callable[[], Awaitable[Response]],
    ) -> Response:
        outcome = await self._begin(scope, key, fingerprint)
        if isinstance(outcome, _Stored):
            return outcome.response()
        token = outcome
        renewer = asyncio.create_task(self._keep_alive(scope, key, token))
        try:
            response = await handler()
        except BaseException:
            await _stop(renewer)
            await asyncio.shield(self._release(scope, key, token))
            raise
        await _stop(renewer)
        if response.status_code >= 500:
            # The handler did not decide anything; let a retry run afresh.
            await self._release(scope, key, token)
            return response
        if response.headers.get(PENDING_HEADER) == "pending":
            # The outcome is not known yet (a gateway timed out): nothing is stored for replay,
            # and the lease ends now so a retry runs the handler again, which resumes the
            # pending work. The key stays bound to this request's fingerprint (422 on reuse).
            await self._expire_lease(scope, key, token)
            return response
        await self._complete(scope, key, token, response)
        return response

    def _lease(self, fp: str, now: int) -> dict[str, object]:
        return {
            "fingerprint": fp,
            "state": "in_flight",
            "lease_token": secrets.token_hex(16),
            "lease_expires_us": now + self._lease_us,
            "status_code": None,
            "headers": None,
            "body": None,
            "created_us": now,
            "expires_us": now + self._ttl_us,
        }

    async def _try_insert(self, scope: str, key: str, fp: str) -> str | None:
        """The common case in one statement: a new key. ``None`` when the key exists."""
        t = idempotency_keys
        async with self._db.single_statement() as uow:
            lease = self._lease(fp, uow.clock.now_us())
            insert = pg_insert(t) if uow.is_postgres else sqlite_insert(t)
            inserted = await uow.conn.execute(
                insert.values(scope=scope, key=key, **lease)
                .on_conflict_do_nothing(index_elements=[t.c.scope, t.c.key])
                .returning(t.c.key)
            )
            return str(lease["lease_token"]) if inserted.first() is not None else None

    async def _begin(self, scope: str, key: str, fp: str) -> _Stored | str:
        token = await self._try_insert(scope, key, fp)
        if token is not None:
            return token
        for _ in range(5):
            try:
                async with self._db.transaction() as uow:
                    now = uow.clock.now_us()
                    t = idempotency_keys
                    row = (
                        (
                            await uow.conn.execute(
                                sa.select(t).where(t.c.scope == scope, t.c.key == key)
                            )
                        )
                        .mappings()
                        .first()
                    )
                    lease = self._lease(fp, now)
                    token = str(lease["lease_token"])
                    if row is None:
                        await uow.conn.execute(t.insert().values(scope=scope, key=key, **lease))
                        return token
                    complete = row["state"] == "complete"
                    if complete and row["expires_us"] <= now:
                        pass  # the stored answer has expired: the key is new again
                    elif row["fingerprint"] != fp:
                        raise ApiError(
                            "idempotency_key_reuse",
                            "this Idempotency-Key was used with a different request; "
                            "use a new key for a new request",
                        )
                    elif complete:
                        return _Stored(
                            status_code=row["status_code"],
                            headers=orjson.loads(row["headers"]),
                            body=row["body"],
                        )
                    elif row["lease_expires_us"] > now:
                        raise ApiError(
                            "idempotency_key_in_flight",
                            "a request with this Idempotency-Key is still being processed; "
                            "retry shortly",
                        )
                    taken = await uow.conn.execute(
                        t.update()
                        .where(
                            t.c.scope == scope,
                            t.c.key == key,
                            t.c.lease_token.is_not_distinct_from(row["lease_token"]),
                            t.c.state == row["state"],
                        )
                        .values(**lease)
                    )
                    if taken.rowcount == 1:
                        return token
            except IntegrityError:
                pass  # another process inserted the key first: look again
        raise ApiError(
            "idempotency_key_in_flight", "could not take the Idempotency-Key; retry shortly"
        )

    async def _keep_alive(self, scope: str, key: str, token: str) -> None:
        t = idempotency_keys
        while True:
            await asyncio.sleep(self._renew_every_s)
            with contextlib.suppress(Exception):  # a missed renewal only shortens the lease
                async with self._db.single_statement() as uow:
                    await uow.conn.execute(
                        t.update()
                        .where(t.c.scope == scope, t.c.key == key, t.c.lease_token == token)
                        .values(lease_expires_us=uow.clock.now_us() + self._lease_us)
                    )

    async def _complete(self, scope: str, key: str, token: str, response: Response) -> None:
        t = idempotency_keys
        headers = stored_headers(response)
        async with self._db.single_statement() as uow:
            done = await uow.conn.execute(
                t.update()
                .where(t.c.scope == scope, t.c.key == key, t.c.lease_token == token)
                .values(
                    state="complete",
                    lease_token=None,
                    lease_expires_us=None,
                    status_code=response.status_code,
                    headers=orjson.dumps(headers).decode(),
                    body=bytes(response.body),
                    expires_us=uow.clock.now_us() + self._ttl_us,
                )
            )
        if done.rowcount != 1:
            log.warning("idempotency.lease_lost", scope=scope, key_length=len(key))

    async def _expire_lease(self, scope: str, key: str, token: str) -> None:
        t = idempotency_keys
        async with self._db.single_statement() as uow:
            await uow.conn.execute(
                t.update()
                .where(
                    t.c.scope == scope,
                    t.c.key == key,
                    t.c.lease_token == token,
                    t.c.state == "in_flight",
                )
                .values(lease_expires_us=uow.clock.now_us())
            )

    async def _release(self, scope: str, key: str, token: str) -> None:
        t = idempotency_keys
        async with self._db.single_statement() as uow:
            await uow.conn.execute(
                t.delete().where(
                    t.c.scope == scope,
                    t.c.key == key,
                    t.c.lease_token == token,
                    t.c.state == "in_flight",
                )
            )

    async def purge_expired(self) -> int:
        t = idempotency_keys
        async with self._db.transaction() as uow:
            result = await uow.conn.execute(
                t.delete().where(
                    t.c.expires_us <= uow.clock.now_us(),
                    sa.or_(
                        t.c.state == "complete",
                        t.c.lease_expires_us <= uow.clock.now_us(),  # abandoned, or pending
                    ),
                )
            )
        return int(result.rowcount)

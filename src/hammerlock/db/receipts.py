"""Idempotency records written in the business transaction (docs/adr/0013-bids-group-commit.md).

The HTTP layer's :class:`hammerlock.api.idempotency.IdempotencyStore` brackets a handler with a
lease (one commit before) and the stored answer (one commit after). A route whose domain batches
its writes (bids: group commit per lot) instead hands the request's :class:`Receipt` down, and
the domain stores the answer *in the transaction that makes the change*: no lease, no window in
which the change is committed but its answer is not, and two commits fewer per request.

Same table, same semantics as the store: a stored answer replays byte for byte, the same key with
another request is ``idempotency_key_reuse``, a key leased by the store's path is
``idempotency_key_in_flight``. Two requests with one key racing in different processes meet on
the table's primary key: the loser's transaction fails and is retried, then replays the winner.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import orjson
import sqlalchemy as sa

from hammerlock.db.metadata import metadata
from hammerlock.db.uow import UnitOfWork

__all__ = [
    "Receipt",
    "ReceiptConflict",
    "Stored",
    "check_receipts",
    "idempotency_keys",
    "store_receipts",
]

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("scope", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("state", sa.String(12), nullable=False),
    sa.Column("lease_token", sa.String(32), nullable=True),
    sa.Column("lease_expires_us", sa.BigInteger, nullable=True),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("headers", sa.Text, nullable=True),
    sa.Column("body", sa.LargeBinary, nullable=True),
    sa.Column("created_us", sa.BigInteger, nullable=False),
    sa.Column("expires_us", sa.BigInteger, nullable=False),
)

_MAX_LOOKUP = 1_000


@dataclass(frozen=True, slots=True)
class Receipt:
    """Who asked, with which key, for what: (API key id or "public", Idempotency-Key, request
    fingerprint), plus how long the answer is kept."""

    scope: str
    key: str
    fingerprint: str
    ttl_us: int


@dataclass(frozen=True, slots=True)
class Stored:
    """An answer stored earlier for a receipt's key: replay it."""

    status_code: int
    headers: dict[str, str]
    body: bytes


class ReceiptConflict(Exception):
    """The key cannot be used for this request: ``code`` is the problem code to answer."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


# Built once (SQLAlchemy memoizes a statement's cache key on the statement object).
_RECEIPTS_BY_KEY = sa.select(idempotency_keys).where(
    sa.tuple_(idempotency_keys.c.scope, idempotency_keys.c.key).in_(
        sa.bindparam("pairs", expanding=True)
    )
)


async def check_receipts(
    uow: UnitOfWork, receipts: Sequence[Receipt]
) -> tuple[list[Stored | ReceiptConflict | None], set[tuple[str, str]]]:
    """For each receipt: its stored answer, why its key cannot be used, or None (a new request);
    and the (scope, key) pairs whose old row is expired or abandoned (replaced on store).
    One round trip for the whole batch."""
    found: dict[tuple[str, str], sa.RowMapping] = {}
    pairs = sorted({(r.scope, r.key) for r in receipts})
    for i in range(0, len(pairs), _MAX_LOOKUP):
        chunk = pairs[i : i + _MAX_LOOKUP]
        rows = (await uow.conn.execute(_RECEIPTS_BY_KEY, {"pairs": chunk})).mappings().all()
        found.update({(row["scope"], row["key"]): row for row in rows})
    now = uow.clock.now_us()
    decisions = [_decide(found.get((r.scope, r.key)), r, now) for r in receipts]
    stale = {
        (r.scope, r.key)
        for r, d in zip(receipts, decisions, strict=True)
        if d is None and (r.scope, r.key) in found
    }
    return decisions, stale


def _decide(
    row: sa.RowMapping | None, receipt: Receipt, now: int
) -> Stored | ReceiptConflict | None:
    if row is None:
        return None
    complete = row["state"] == "complete"
    if complete and row["expires_us"] <= now:
        return None  # expired: the key is new again (the old row is replaced on store)
    if row["fingerprint"] != receipt.fingerprint:
        return ReceiptConflict(
            "idempotency_key_reuse",
            "this Idempotency-Key was used with a different request; use a new key for a new "
            "request",
        )
    if complete:
        return Stored(
            status_code=int(row["status_code"]),
            headers=orjson.loads(row["headers"]),
            body=bytes(row["body"]),
        )
    if row["lease_expires_us"] is not None and row["lease_expires_us"] > now:
        return ReceiptConflict(
            "idempotency_key_in_flight",
            "a request with this Idempotency-Key is still being processed; retry shortly",
        )
    return None  # an abandoned lease: the key is free again (replaced on store)


async def store_receipts(
    uow: UnitOfWork,
    answers: Sequence[tuple[Receipt, int, dict[str, str], bytes]],
    *,
    stale: Collection[tuple[str, str]] = (),
) -> None:
    """Store each (receipt, status, headers, body) as a completed key, in the caller's
    transaction. An expired or abandoned row of the same key is replaced; a live one makes the
    insert fail (the caller's transaction is retried and replays it)."""
    if not answers:
        return
    t = idempotency_keys
    now = uow.clock.now_us()
    if stale:
        await _delete_stale(uow, sorted(stale), now)
    await uow.conn.execute(
        t.insert(),
        [
            {
                "scope": r.scope,
                "key": r.key,
                "fingerprint": r.fingerprint,
                "state": "complete",
                "lease_token": None,
                "lease_expires_us": None,
                "status_code": status,
                "headers": orjson.dumps(headers).decode(),
                "body": body,
                "created_us": now,
                "expires_us": now + r.ttl_us,
            }
            for r, status, headers, body in answers
        ],
    )


async def _delete_stale(uow: UnitOfWork, pairs: list[tuple[str, str]], now: int) -> None:
    t = idempotency_keys
    await uow.conn.execute(
        t.delete().where(
            sa.tuple_(t.c.scope, t.c.key).in_(pairs),
            sa.or_(
                sa.and_(t.c.state == "complete", t.c.expires_us <= now),
                sa.and_(t.c.state != "complete", t.c.lease_expires_us <= now),
            ),
        )
    )

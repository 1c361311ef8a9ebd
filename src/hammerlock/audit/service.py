"""Recording audit events inside the caller's unit of work, and reading the log back.

Writers call :func:`record` / :func:`record_many` in the transaction of the change they record.

Readers (``GET /v1/audit/*``) call the read functions below, each in a *writing* unit of work:
every read of the audit trail is itself an audit event (PCI DSS 10.2.1.3), ``audit.events.read``
for events and ``audit.proofs.read`` for tree heads, proofs and public keys, recorded in the same
transaction as the read. A refused read (no such tree head, a reversed range) is recorded too,
with outcome ``failure`` and the error's code; that is why these functions *return* their
:class:`~hammerlock.audit.errors.AuditError` instead of raising it: raising would roll the record
back with the transaction. The caller raises it after the commit.

Proofs answer only for tree sizes that have a signed tree head: a proof is checked against a
signed root, and the head of that size is the one the client must check it against.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import sqlalchemy as sa

from hammerlock.audit import proofs, storage
from hammerlock.audit.errors import AuditError, InvalidRange, ProofUnavailable, TreeHeadNotFound
from hammerlock.audit.jcs import canonical_json
from hammerlock.audit.model import (
    MAX_DETAILS_BYTES,
    AuditEvent,
    ConsistencyProof,
    Context,
    EventFilter,
    InclusionProof,
    Outcome,
    SigningKey,
    TreeHead,
)
from hammerlock.audit.storage import StoredEvent, audit_outbox
from hammerlock.clock import format_rfc3339
from hammerlock.db.engine import Database
from hammerlock.db.uow import UnitOfWork

__all__ = [
    "EVENTS_READ",
    "PROOFS_READ",
    "Page",
    "canonical_bytes",
    "consistency_proof",
    "inclusion_proof",
    "latest_tree_head",
    "list_events",
    "list_tree_heads",
    "outbox_insert",
    "public_keys",
    "record",
    "record_many",
]

EVENTS_READ = "audit.events.read"
PROOFS_READ = "audit.proofs.read"

T = TypeVar("T")


def canonical_bytes(event: AuditEvent) -> bytes:
    """RFC 8785 (JCS) bytes of the event object."""
    return canonical_json(event.to_json_object())


def _row(event: AuditEvent) -> tuple[str, int, str, str]:
    body = canonical_bytes(event)
    if len(body) > MAX_DETAILS_BYTES * 2:
        raise ValueError(f"audit event {event.action} is too large ({len(body)} bytes)")
    return (event.event_id, event.ts_us, event.action, body.decode())


async def record(uow: UnitOfWork, event: AuditEvent) -> None:
    """Write ``event`` to the outbox; it commits or rolls back with the caller's change."""
    await storage.insert_outbox(uow, [_row(event)])


async def record_many(uow: UnitOfWork, events: Sequence[AuditEvent]) -> None:
    if events:
        await storage.insert_outbox(uow, [_row(e) for e in events])


def outbox_insert(event: AuditEvent) -> tuple[sa.Insert, dict[str, Any]]:
    """:func:`record` as a statement and its parameters, for a caller that runs it inside one of
    its own (the ledger's transfer INSERT, as a PostgreSQL CTE: no round trip of its own). The
    statement is the same object every time and its parameters are named ``audit_…``. The
    caller must run it, or call :func:`record`, in the same transaction."""
    return storage.OUTBOX_INSERT, storage.outbox_params(_row(event))


# --------------------------------------------------------------------------------------------
# Reading the log (every read audited)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing; ``more`` when rows follow the last one."""

    items: list[T]
    more: bool


class _Read(enum.Enum):
    """What was read: (action, resource type)."""

    EVENTS = (EVENTS_READ, "audit_log")
    TREE_HEAD = (PROOFS_READ, "audit_tree_head")
    TREE_HEADS = (PROOFS_READ, "audit_tree_heads")
    INCLUSION = (PROOFS_READ, "audit_inclusion_proof")
    CONSISTENCY = (PROOFS_READ, "audit_consistency_proof")
    PUBLIC_KEYS = (PROOFS_READ, "audit_signing_keys")


async def _record_read(
    uow: UnitOfWork,
    ctx: Context,
    what: _Read,
    details: dict[str, Any],
    *,
    resource_id: str | None = None,
    refused: AuditError | None = None,
) -> None:
    action, resource_type = what.value
    await record(
        uow,
        ctx.event(
            action,
            resource_type=resource_type,
            resource_id=resource_id,
            ts_us=uow.clock.now_us(),
            outcome=Outcome.SUCCESS if refused is None else Outcome.FAILURE,
            outcome_code=None if refused is None else refused.code,
            details={k: v for k, v in details.items() if v is not None},
        ),
    )


async def list_events(
    uow: UnitOfWork, ctx: Context, *, after_seq: int | None, limit: int, where: EventFilter
) -> Page[StoredEvent] | AuditError:
    """Events with ``seq > after_seq`` matching ``where``, ascending by seq, at most ``limit``."""
    details: dict[str, Any] = {
        "after_seq": after_seq,
        "limit": limit,
        "since": None if where.since_us is None else format_rfc3339(where.since_us),
        "until": None if where.until_us is None else format_rfc3339(where.until_us),
        "actor_id": where.actor_id,
        "action": where.action,
        "resource_type": where.resource_type,
        "resource_id": where.resource_id,
    }
    if (
        where.since_us is not None
        and where.until_us is not None
        and where.since_us > where.until_us
    ):
        refused = InvalidRange("since is later than until")
        await _record_read(uow, ctx, _Read.EVENTS, details, refused=refused)
        return refused
    rows = await storage.select_events(uow, after_seq=after_seq, limit=limit + 1, where=where)
    page = Page(rows[:limit], more=len(rows) > limit)
    await _record_read(uow, ctx, _Read.EVENTS, {**details, "count": len(page.items)})
    return page


async def latest_tree_head(uow: UnitOfWork, ctx: Context) -> TreeHead | AuditError:
    head = await storage.tree_head_at(uow)
    if head is None:
        refused = TreeHeadNotFound("no tree head is signed yet: the log is empty")
        await _record_read(uow, ctx, _Read.TREE_HEAD, {}, refused=refused)
        return refused
    await _record_read(uow, ctx, _Read.TREE_HEAD, {"size": head.size}, resource_id=str(head.size))
    return head


async def list_tree_heads(
    uow: UnitOfWork, ctx: Context, *, after_size: int | None, limit: int
) -> Page[TreeHead]:
    """Signed tree heads with ``size > after_size``, ascending by size, at most ``limit``."""
    heads = await storage.tree_heads_after(uow, after_size=after_size, limit=limit + 1)
    page = Page(heads[:limit], more=len(heads) > limit)
    details = {"after_size": after_size, "limit": limit, "count": len(page.items)}
    await _record_read(uow, ctx, _Read.TREE_HEADS, details)
    return page


async def _signed_head(uow: UnitOfWork, size: int | None) -> TreeHead:
    head = await storage.tree_head_at(uow, size)
    if head is None and size is None:
        raise ProofUnavailable("no tree head is signed yet: the log is empty")
    if head is None:
        raise ProofUnavailable(
            f"no signed tree head has size {size}; proofs are served for the sizes that "
            "GET /v1/audit/tree_heads lists"
        )
    return head


async def inclusion_proof(
    uow: UnitOfWork, ctx: Context, *, seq: int, tree_size: int | None
) -> InclusionProof | AuditError:
    """The audit path of ``seq`` in the signed tree of ``tree_size`` (default: the latest)."""
    details: dict[str, Any] = {"seq": seq, "tree_size": tree_size}
    try:
        if tree_size is not None and seq >= tree_size:
            raise InvalidRange(f"seq {seq} is not below tree_size {tree_size}")
        head = await _signed_head(uow, tree_size)
        if seq >= head.size:
            raise InvalidRange(f"seq {seq} is not below the latest signed tree size {head.size}")
    except AuditError as refused:
        await _record_read(uow, ctx, _Read.INCLUSION, details, refused=refused)
        return refused
    path = await proofs.inclusion_path(uow, seq, head.size)
    details["tree_size"] = head.size
    await _record_read(uow, ctx, _Read.INCLUSION, details, resource_id=str(seq))
    return InclusionProof(leaf_index=seq, tree_size=head.size, path=tuple(path))


async def consistency_proof(
    uow: UnitOfWork, ctx: Context, *, first: int, second: int
) -> ConsistencyProof | AuditError:
    """The proof that the signed tree of ``first`` leaves is a prefix of the one of ``second``."""
    details: dict[str, Any] = {"first": first, "second": second}
    try:
        if first > second:
            raise InvalidRange(f"first {first} is greater than second {second}")
        await _signed_head(uow, first)
        await _signed_head(uow, second)
    except AuditError as refused:
        await _record_read(uow, ctx, _Read.CONSISTENCY, details, refused=refused)
        return refused
    path = await proofs.consistency_path(uow, first, second)
    await _record_read(uow, ctx, _Read.CONSISTENCY, details, resource_id=f"{first}-{second}")
    return ConsistencyProof(first=first, second=second, path=tuple(path))


async def public_keys(uow: UnitOfWork, ctx: Context) -> list[SigningKey]:
    """Every key that has signed a tree head (the database's copy: auditors should also hold
    the current one out of band)."""
    keys = await storage.signing_keys(uow)
    await _record_read(uow, ctx, _Read.PUBLIC_KEYS, {"count": len(keys)})
    return keys


async def outbox_over(db: Database, high_water: int) -> bool:
    """Whether more than ``high_water`` events await the sequencer (bounded work: it reads at
    most one row past the mark, never counts the whole backlog)."""
    async with db.transaction(write=False) as uow:
        beyond = await uow.conn.execute(
            sa.select(audit_outbox.c.id).order_by(audit_outbox.c.id).offset(high_water).limit(1)
        )
        return beyond.first() is not None

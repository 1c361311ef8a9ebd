"""Audit events, schema v1 (PCI DSS 10.2.2: who, what, when, where, outcome). No I/O.

An event is written to ``audit_outbox`` in the same transaction as the change it records; the
sequencer (issue #4) later gives it its gap-free ``seq`` in the Merkle log. Integers stay within
±(2^53-1) so every JCS implementation hashes them alike; ``details`` is small and never holds a
card number, CVC or secret.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, field
from typing import Any

from hammerlock.clock import format_rfc3339

__all__ = [
    "SCHEMA_VERSION",
    "Actor",
    "AuditEvent",
    "ConsistencyProof",
    "Context",
    "EventFilter",
    "InclusionProof",
    "Origin",
    "Outcome",
    "SigningKey",
    "TreeHead",
    "new_event_id",
]

SCHEMA_VERSION = 1
MAX_DETAILS_BYTES = 4096
_MAX_SAFE_INT = 2**53 - 1


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


@dataclass(frozen=True, slots=True)
class Actor:
    principal_id: str | None = None
    role: str | None = None
    key_id: str | None = None

    @classmethod
    def system(cls, name: str = "system") -> Actor:
        return cls(principal_id=name, role="system", key_id=None)


@dataclass(frozen=True, slots=True)
class Origin:
    ip: str | None = None
    user_agent: str | None = None
    node: str | None = None


def new_event_id() -> str:
    return "evt_" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    action: str
    resource_type: str
    resource_id: str | None
    actor: Actor
    origin: Origin
    ts_us: int
    outcome: Outcome = Outcome.SUCCESS
    outcome_code: str | None = None
    request_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    event_id: str = field(default_factory=new_event_id)

    def __post_init__(self) -> None:
        _check_safe_ints(self.details)

    def to_json_object(self) -> dict[str, Any]:
        """The event as ``GET /v1/audit/events`` shows it, minus ``seq`` and ``leaf_hash``.

        Schema v1 has exactly these fields; the version is carried by the tree-head format.
        """
        return {
            "event_id": self.event_id,
            "ts": format_rfc3339(self.ts_us),
            "actor": {
                "principal_id": self.actor.principal_id,
                "role": self.actor.role,
                "key_id": self.actor.key_id,
            },
            "action": self.action,
            "resource": {"type": self.resource_type, "id": self.resource_id},
            "outcome": {"status": self.outcome.value, "code": self.outcome_code},
            "origin": {
                "ip": self.origin.ip,
                "user_agent": self.origin.user_agent,
                "node": self.origin.node,
            },
            "request_id": self.request_id,
            "details": self.details,
        }


def _check_safe_ints(value: Any) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int) and abs(value) > _MAX_SAFE_INT:
        raise ValueError("audit details: integer outside ±(2^53-1)")
    if isinstance(value, float):
        raise ValueError("audit details: floats are not allowed")
    if isinstance(value, dict):
        for v in value.values():
            _check_safe_ints(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _check_safe_ints(v)


@dataclass(frozen=True, slots=True)
class Context:
    """Who is acting, from where, in which request: passed to every service function."""

    actor: Actor
    origin: Origin = Origin()
    request_id: str | None = None

    @classmethod
    def system(cls, name: str = "system", node: str | None = None) -> Context:
        return cls(actor=Actor.system(name), origin=Origin(node=node))

    def event(
        self,
        action: str,
        *,
        resource_type: str,
        resource_id: str | None,
        ts_us: int,
        outcome: Outcome = Outcome.SUCCESS,
        outcome_code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> AuditEvent:
        return AuditEvent(
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            actor=self.actor,
            origin=self.origin,
            ts_us=ts_us,
            outcome=outcome,
            outcome_code=outcome_code,
            request_id=self.request_id,
            details=details or {},
        )


# --------------------------------------------------------------------------------------------
# The log as readers see it (GET /v1/audit/*, hammerlock audit verify)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TreeHead:
    """A signed tree head: Ed25519 over ``hammerlock.tree_head.v1\\n<size>\\n<root>\\n<ts>\\n``."""

    size: int
    root_hash: str  # 64 lowercase hex characters
    timestamp: str  # RFC 3339 UTC, exactly as signed
    key_id: str
    signature: str  # base64 (RFC 4648 §4) of the raw 64-byte signature

    def as_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "root_hash": self.root_hash,
            "timestamp": self.timestamp,
            "key_id": self.key_id,
            "signature": self.signature,
        }


@dataclass(frozen=True, slots=True)
class SigningKey:
    key_id: str
    algorithm: str  # "ed25519"
    public_key: str  # base64 (RFC 4648 §4) of the raw 32-byte public key


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Filters of the event listing; ``None`` means "any". ``since`` inclusive, ``until``
    exclusive, both microseconds since the epoch (the event's ``ts``)."""

    since_us: int | None = None
    until_us: int | None = None
    actor_id: str | None = None
    action: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None


@dataclass(frozen=True, slots=True)
class InclusionProof:
    leaf_index: int
    tree_size: int
    path: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    first: int
    second: int
    path: tuple[bytes, ...]

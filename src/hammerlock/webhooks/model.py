"""Outbound webhook events, their signature and their retry schedule. No I/O, no clock.

An event is the JSON object ``{"id", "type", "created", "data"}`` (``created`` RFC 3339 UTC),
serialised once when it is recorded; every delivery attempt sends those exact bytes, so a
receiver can verify and deduplicate (by ``id``) whatever attempt reaches it.

Signature (:mod:`hammerlock.payments.gateways.signature` signs; its ``verify_header`` is the
reference for receivers)::

    Hammerlock-Signature: t=<unix seconds>,v1=<hex HMAC-SHA-256(secret, "<t>.<raw body>")>
    Hammerlock-Event-Id: we_…

Each attempt is signed afresh with the time it is sent. Receivers refuse a ``t`` more than
300 s away from their clock (replay protection) and deduplicate by event id. Several ``v1=``
values are accepted (a secret being rotated).

Errors::

    ValueError   an event type or payload that breaks the rules below (a programming error)
"""

from __future__ import annotations

import enum
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from hammerlock.clock import format_rfc3339

__all__ = [
    "EVENT_ID_HEADER",
    "MAX_DATA_BYTES",
    "MAX_EVENT_TYPE_LENGTH",
    "MIN_SECRET_BYTES",
    "SIGNATURE_HEADER",
    "AttemptOutcome",
    "Backoff",
    "EventStatus",
    "WebhookEvent",
    "check_event_type",
    "classify_status",
    "new_event_id",
]

SIGNATURE_HEADER = "Hammerlock-Signature"
EVENT_ID_HEADER = "Hammerlock-Event-Id"
MAX_EVENT_TYPE_LENGTH = 64
MAX_DATA_BYTES = 64 * 1024  # a webhook announces a change; it does not carry documents
MIN_SECRET_BYTES = 16
_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


class EventStatus(enum.StrEnum):
    PENDING = "pending"  # recorded; not yet acknowledged (a delivery may be in flight)
    DELIVERED = "delivered"  # an attempt got a 2xx
    FAILED = "failed"  # gave up: older than the maximum age, or refused for good


class AttemptOutcome(enum.StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"


def new_event_id() -> str:
    return "we_" + secrets.token_hex(12)


def check_event_type(event_type: str) -> str:
    """``event_type`` if it is dotted lowercase (``payment_intent.succeeded``), ≤ 64 chars."""
    if len(event_type) > MAX_EVENT_TYPE_LENGTH or not _EVENT_TYPE.fullmatch(event_type):
        raise ValueError(
            f"webhook event type {event_type[:80]!r} must be dotted lowercase "
            f"(e.g. payment_intent.succeeded), at most {MAX_EVENT_TYPE_LENGTH} characters"
        )
    return event_type


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    id: str
    type: str
    created_us: int
    data: Mapping[str, Any]

    def __post_init__(self) -> None:
        check_event_type(self.type)
        if not self.id.startswith("we_") or len(self.id) > 64:
            raise ValueError("webhook event ids are we_… and at most 64 characters")

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "created": format_rfc3339(self.created_us),
            "data": dict(self.data),
        }

    def body(self) -> bytes:
        """The bytes every attempt sends (sorted keys: stable, and easy to eyeball)."""
        body = orjson.dumps(self.as_json(), option=orjson.OPT_SORT_KEYS)
        if len(body) > MAX_DATA_BYTES:
            raise ValueError(
                f"webhook event {self.type} is {len(body)} bytes (max {MAX_DATA_BYTES})"
            )
        return body


# --------------------------------------------------------------------------------------------
# Retry schedule
# --------------------------------------------------------------------------------------------


def classify_status(status_code: int) -> AttemptOutcome:
    """2xx is delivered; everything else (3xx included: redirects are not followed) retries."""
    return AttemptOutcome.DELIVERED if 200 <= status_code < 300 else AttemptOutcome.RETRY


@dataclass(frozen=True, slots=True)
class Backoff:
    """Jittered exponential backoff: after failed attempt ``n`` (1-based) wait between half
    and all of ``min(max_s, initial_s * 2**(n-1))``; give up ``max_age_s`` after creation.

    The defaults (30 s doubling to 6 h) make about 18 attempts over 3 days.
    """

    initial_s: float = 30.0
    max_s: float = 6 * 3600.0
    max_age_s: float = 3 * 86_400.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s or self.max_age_s <= 0:
            raise ValueError("need 0 < initial_s <= max_s and max_age_s > 0")

    def delay_us(self, attempt: int, jitter: float) -> int:
        """The wait after failed attempt ``attempt``; ``jitter`` in [0, 1] picks within it."""
        if attempt < 1 or not 0.0 <= jitter <= 1.0:
            raise ValueError("attempt >= 1 and 0 <= jitter <= 1")
        base_s = min(self.max_s, self.initial_s * 2.0 ** min(attempt - 1, 62))
        return int((base_s / 2 + jitter * base_s / 2) * 1_000_000)

    def next_attempt_us(
        self, created_us: int, now_us: int, attempt: int, jitter: float
    ) -> int | None:
        """When to try again after failed attempt ``attempt`` at ``now_us``; None: give up."""
        due_us = now_us + self.delay_us(attempt, jitter)
        if due_us > created_us + self.max_age_us:
            return None
        return due_us

    @property
    def max_age_us(self) -> int:
        return int(self.max_age_s * 1_000_000)

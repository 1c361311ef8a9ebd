"""Webhook signatures: ``Hammerlock-Signature: t=<unix>,v1=<hex>`` (Stripe's scheme).

The signature is ``hex(HMAC-SHA-256(secret, f"{t}.".encode() + body))`` over the raw body, byte
for byte. A receiver refuses a timestamp more than ``tolerance_s`` (default 300 s) away from its
own clock, either way, which makes a captured delivery useless for replay after that; within the
window it deduplicates by event id. Several ``v1=`` entries are accepted (a secret being rotated);
other schemes are ignored, as Stripe does. Comparisons are constant-time.

Pure functions, no I/O: the sandbox gateway, the stripe adapter and hammerlock's own outbound
webhooks share them.

Errors::

    GatewayRejected
     └── InvalidSignature   invalid_signature   malformed, stale or forged (``reason`` says which)
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from hammerlock.payments.gateways.base import GatewayRejected

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "SIGNATURE_HEADER",
    "InvalidSignature",
    "compute_signature",
    "sign_header",
    "verify_header",
]

SIGNATURE_HEADER: Final = "Hammerlock-Signature"
DEFAULT_TOLERANCE_S: Final = 300
_SCHEME: Final = "v1"
_HEADER_LEN_MAX: Final = 1_024  # a few rotated signatures fit; anything longer is refused
_ENTRIES_MAX: Final = 8
_TIMESTAMP_DIGITS_MAX: Final = 12


class InvalidSignature(GatewayRejected):
    """The webhook is malformed, stale or forged. ``reason``: ``malformed`` | ``stale`` |
    ``mismatch``. Never retry: answer the sender 400."""

    code = "invalid_signature"

    def __init__(self, reason: str) -> None:
        super().__init__(f"webhook signature rejected: {reason}")
        self.reason = reason


def _key(secret: bytes | str) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def compute_signature(secret: bytes | str, timestamp_s: int, body: bytes) -> str:
    """``hex(HMAC-SHA-256(secret, "<timestamp_s>." + body))``."""
    message = str(timestamp_s).encode() + b"." + body
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def sign_header(secret: bytes | str, timestamp_s: int, body: bytes) -> str:
    """The ``Hammerlock-Signature`` header value for ``body`` signed at ``timestamp_s``."""
    return f"t={timestamp_s},{_SCHEME}={compute_signature(secret, timestamp_s, body)}"


def _parse(header: str) -> tuple[int, list[str]]:
    if len(header) > _HEADER_LEN_MAX:
        raise InvalidSignature("malformed")
    timestamp: str | None = None
    signatures: list[str] = []
    for part in header.split(",")[:_ENTRIES_MAX]:
        name, _, value = part.strip().partition("=")
        if name == "t":
            timestamp = value
        elif name == _SCHEME:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise InvalidSignature("malformed")
    digits_ok = timestamp.isascii() and timestamp.isdigit()
    if not digits_ok or len(timestamp) > _TIMESTAMP_DIGITS_MAX:
        raise InvalidSignature("malformed")
    return int(timestamp), signatures


def verify_header(
    secret: bytes | str,
    header: str,
    body: bytes,
    *,
    now_s: int,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> int:
    """Check ``header`` (as received) against the raw ``body``; return its timestamp.

    Raises :class:`InvalidSignature` when the header is malformed, its timestamp is more than
    ``tolerance_s`` away from ``now_s``, or no ``v1`` entry matches.
    """
    timestamp_s, signatures = _parse(header)
    if abs(now_s - timestamp_s) > tolerance_s:
        raise InvalidSignature("stale")
    expected = compute_signature(secret, timestamp_s, body).encode()
    matched = False
    for candidate in signatures:
        # Every candidate is compared (no early exit), each in constant time.
        same = hmac.compare_digest(candidate.encode("utf-8", "replace"), expected)
        matched = matched or same
    if not matched:
        raise InvalidSignature("mismatch")
    return timestamp_s

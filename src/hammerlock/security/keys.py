"""API keys as values: generation, parsing and keyed hashing. No I/O.

A key reads ``hl_<key id>_<secret>``. Only HMAC-SHA-256(pepper, secret) is stored; a presented
key is found by its id and its secret compared in constant time. The pepper lives outside the
database, so a stolen database alone does not allow offline guessing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass

from hammerlock.ids import random_text
from hammerlock.security.permissions import Role

__all__ = [
    "KEY_PREFIX",
    "ApiKey",
    "ParsedKey",
    "format_key",
    "hash_secret",
    "new_key_id",
    "new_principal_id",
    "new_secret",
    "parse_key",
    "secret_matches",
]

KEY_PREFIX = "hl_"
_ID_ALPHABET = string.ascii_lowercase + string.digits
_ID_LENGTH = 16
_MAX_PRESENTED_LENGTH = 200


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    principal_id: str
    role: Role
    name: str
    created_us: int
    expires_us: int | None
    revoked_us: int | None
    created_by: str

    def usable_at(self, now_us: int) -> bool:
        # Revoked is revoked, whatever the stamp: only a revocation sets it, at the revoking
        # process's own "now" — which may run ahead of ours (ADR 0023).
        if self.revoked_us is not None:
            return False
        return self.expires_us is None or now_us < self.expires_us


@dataclass(frozen=True, slots=True)
class ParsedKey:
    key_id: str
    secret: str

    def __repr__(self) -> str:  # never show the secret
        return f"ParsedKey(key_id={self.key_id!r}, secret='**********')"

    __str__ = __repr__


def _random_id(length: int = _ID_LENGTH) -> str:
    return random_text(length, _ID_ALPHABET)


def new_key_id() -> str:
    return "key_" + _random_id()


def new_principal_id() -> str:
    return "prn_" + _random_id()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def format_key(key_id: str, secret: str) -> str:
    return f"{KEY_PREFIX}{key_id.removeprefix('key_')}_{secret}"


def parse_key(presented: str) -> ParsedKey | None:
    """Split a presented key; ``None`` when it cannot be one of ours."""
    if len(presented) > _MAX_PRESENTED_LENGTH or not presented.startswith(KEY_PREFIX):
        return None
    short_id, sep, secret = presented[len(KEY_PREFIX) :].partition("_")
    if not sep or len(short_id) != _ID_LENGTH or not secret:
        return None
    if any(c not in _ID_ALPHABET for c in short_id):
        return None
    return ParsedKey(key_id="key_" + short_id, secret=secret)


def hash_secret(pepper: bytes, secret: str) -> str:
    return hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


def secret_matches(pepper: bytes, secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(pepper, secret), stored_hash)

"""Mutual authentication of API↔vault calls: HMAC-SHA-256 over each request and its response.

Keys live in one JSON keyring file both processes read (``vault_internal_keys.json``, 0600,
generated on first use). The newest unretired key signs; every unretired key verifies, so a
rotation (:meth:`InternalKeyring.add_key`) is picked up by both sides without a restart (the
file's mtime is checked) and calls signed a moment earlier still pass.

A request carries::

    Hammerlock-Key-Id: ik_…            Hammerlock-Timestamp: <unix seconds>
    Hammerlock-Nonce: <32 hex>          Hammerlock-Signature: v1=<hex HMAC>

over ``hammerlock.vault.request.v1\\n<METHOD>\\n<path?query>\\n<ts>\\n<nonce>\\n<sha256(body)>``.
The vault refuses a timestamp more than :data:`TOLERANCE_S` away from its clock and a nonce it has
seen (a bounded replay cache). Its response carries ``Hammerlock-Signature`` over
``hammerlock.vault.response.v1\\n<nonce>\\n<status>\\n<sha256(body)>`` under the same key: bound
to the request's nonce, so neither an old response nor a request signature can stand in for it.
Every comparison is :func:`hmac.compare_digest`; an unknown key id costs the same HMAC work.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hammerlock.clock import Clock
from hammerlock.secret_files import create_once
from hammerlock.vault.errors import InternalAuthFailed

__all__ = [
    "KEY_ID_HEADER",
    "NONCE_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "TOLERANCE_S",
    "InternalKey",
    "InternalKeyring",
    "NonceCache",
    "RequestSigner",
    "RequestVerifier",
]

KEY_ID_HEADER = "hammerlock-key-id"
TIMESTAMP_HEADER = "hammerlock-timestamp"
NONCE_HEADER = "hammerlock-nonce"
SIGNATURE_HEADER = "hammerlock-signature"
TOLERANCE_S = 60
NONCE_CACHE_MAX = 200_000
_FORMAT = "hammerlock.vault.internal_keys.v1"
_MAX_KEYS = 100
_DUMMY_KEY = secrets.token_bytes(32)


@dataclass(frozen=True, slots=True)
class InternalKey:
    key_id: str
    secret: bytes
    retired: bool = False

    def __repr__(self) -> str:
        return f"InternalKey({self.key_id}, retired={self.retired})"


def _new_key() -> dict[str, object]:
    return {
        "key_id": "ik_" + secrets.token_hex(8),
        "secret": secrets.token_hex(32),
        "retired": False,
    }


class InternalKeyring:
    def __init__(self, path: Path) -> None:
        self.path = path
        create_once(path, json.dumps({"format": _FORMAT, "keys": [_new_key()]}, indent=1).encode())
        self._mtime_ns = -1
        self._keys: list[InternalKey] = []
        self._reload()

    @classmethod
    def of(cls, keys: list[InternalKey], path: Path) -> InternalKeyring:  # tests
        path.write_text(
            json.dumps(
                {
                    "format": _FORMAT,
                    "keys": [
                        {"key_id": k.key_id, "secret": k.secret.hex(), "retired": k.retired}
                        for k in keys
                    ],
                }
            )
        )
        return cls(path)

    def __repr__(self) -> str:
        return f"InternalKeyring({self.path}, {len(self._keys)} keys)"

    def _reload(self) -> None:
        mtime = self.path.stat().st_mtime_ns
        if mtime == self._mtime_ns:
            return
        try:
            body = json.loads(self.path.read_text())
            keys = [
                InternalKey(str(k["key_id"]), bytes.fromhex(str(k["secret"])), bool(k["retired"]))
                for k in body["keys"]
            ]
        except (ValueError, KeyError, TypeError):
            raise RuntimeError(f"{self.path}: unreadable internal keyring") from None
        if body.get("format") != _FORMAT or not any(not k.retired for k in keys):
            raise RuntimeError(f"{self.path}: no usable internal key")
        if any(len(k.secret) < 16 for k in keys):
            raise RuntimeError(f"{self.path}: a key shorter than 16 bytes")
        self._keys = keys
        self._mtime_ns = mtime

    def signing_key(self) -> InternalKey:
        self._reload()
        return [k for k in self._keys if not k.retired][-1]

    def verifying_key(self, key_id: str) -> InternalKey | None:
        self._reload()
        return next((k for k in self._keys if k.key_id == key_id and not k.retired), None)

    def keys(self) -> list[InternalKey]:
        self._reload()
        return list(self._keys)

    def add_key(self, *, retire_others: bool = False) -> str:
        """Append a new signing key; ``retire_others`` stops every older key verifying."""
        body = json.loads(self.path.read_text())
        if len(body["keys"]) >= _MAX_KEYS:
            body["keys"] = [k for k in body["keys"] if not k["retired"]]
        for key in body["keys"] if retire_others else []:
            key["retired"] = True
        new = _new_key()
        body["keys"].append(new)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(body, indent=1))
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.path)
        self._mtime_ns = -1
        return str(new["key_id"])


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def request_mac(
    secret: bytes, *, method: str, target: str, timestamp: str, nonce: str, body: bytes
) -> str:
    message = "\n".join(
        ("hammerlock.vault.request.v1", method.upper(), target, timestamp, nonce, _digest(body))
    )
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


def response_mac(secret: bytes, nonce: str, status: int, body: bytes) -> str:
    message = "\n".join(("hammerlock.vault.response.v1", nonce, str(status), _digest(body)))
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


def _parse_signature(value: str) -> str:
    scheme, _, mac = value.partition("=")
    return mac if scheme == "v1" else ""


class NonceCache:
    """Nonces seen within the tolerance window. Bounded: full of live nonces, it refuses."""

    def __init__(
        self, clock: Clock, *, ttl_s: int = 2 * TOLERANCE_S, max_entries: int = NONCE_CACHE_MAX
    ) -> None:
        self._clock = clock
        self._ttl_us = ttl_s * 1_000_000
        self._max = max_entries
        self._seen: OrderedDict[str, int] = OrderedDict()

    def add(self, nonce: str) -> bool:
        """Record ``nonce``; ``False`` when it was seen already (or the cache is full)."""
        now = self._clock.now_us()
        while self._seen and next(iter(self._seen.values())) <= now:
            self._seen.popitem(last=False)
        if nonce in self._seen or len(self._seen) >= self._max:
            return False
        self._seen[nonce] = now + self._ttl_us
        return True


class RequestSigner:
    """The API side: signs requests, checks that responses come from the vault."""

    def __init__(self, keyring: InternalKeyring, clock: Clock) -> None:
        self._keyring = keyring
        self._clock = clock

    def sign(self, method: str, target: str, body: bytes) -> dict[str, str]:
        key = self._keyring.signing_key()
        timestamp = str(self._clock.now_us() // 1_000_000)
        nonce = secrets.token_hex(16)
        return {
            KEY_ID_HEADER: key.key_id,
            TIMESTAMP_HEADER: timestamp,
            NONCE_HEADER: nonce,
            SIGNATURE_HEADER: "v1="
            + request_mac(
                key.secret,
                method=method,
                target=target,
                timestamp=timestamp,
                nonce=nonce,
                body=body,
            ),
        }

    def verify_response(
        self, nonce: str, status: int, headers: Mapping[str, str], body: bytes
    ) -> None:
        key = self._keyring.verifying_key(headers.get(KEY_ID_HEADER, ""))
        expected = response_mac(key.secret if key else _DUMMY_KEY, nonce, status, body)
        given = _parse_signature(headers.get(SIGNATURE_HEADER, ""))
        if not (hmac.compare_digest(expected.encode(), given.encode()) and key is not None):
            raise InternalAuthFailed("the vault's response is not signed by a current internal key")


class RequestVerifier:
    """The vault side: checks requests, signs responses."""

    def __init__(
        self, keyring: InternalKeyring, clock: Clock, nonces: NonceCache | None = None
    ) -> None:
        self._keyring = keyring
        self._clock = clock
        self._nonces = nonces or NonceCache(clock)

    def verify(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> InternalKey:
        key_id = headers.get(KEY_ID_HEADER, "")
        timestamp = headers.get(TIMESTAMP_HEADER, "")
        nonce = headers.get(NONCE_HEADER, "")
        key = self._keyring.verifying_key(key_id)
        expected = request_mac(
            key.secret if key else _DUMMY_KEY,
            method=method,
            target=target,
            timestamp=timestamp,
            nonce=nonce,
            body=body,
        )
        given = _parse_signature(headers.get(SIGNATURE_HEADER, ""))
        if not (hmac.compare_digest(expected.encode(), given.encode()) and key is not None):
            raise InternalAuthFailed("not signed by a current internal key")
        now_s = self._clock.now_us() // 1_000_000
        if not timestamp.isdigit() or abs(now_s - int(timestamp)) > TOLERANCE_S:
            raise InternalAuthFailed(f"timestamp more than {TOLERANCE_S} s from the vault's clock")
        if not 16 <= len(nonce) <= 64 or not self._nonces.add(nonce):
            raise InternalAuthFailed("nonce replayed")
        return key

    def sign_response(
        self, key: InternalKey, nonce: str, status: int, body: bytes
    ) -> dict[str, str]:
        return {
            KEY_ID_HEADER: key.key_id,
            SIGNATURE_HEADER: "v1=" + response_mac(key.secret, nonce, status, body),
        }

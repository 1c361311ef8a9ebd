"""The audit log's Ed25519 signing key: created once (0600), its public half published.

The private key lives in a file under the data dir (or ``HAMMERLOCK_AUDIT_SIGNING_KEY_FILE``), never
in the database, so an insider with database access alone cannot re-sign a forged tree. Auditors
should hold the public key out of band (``hammerlock audit verify --public-key FILE``).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hammerlock.secret_files import create_once

__all__ = ["AuditSigner", "key_id_for", "load_public_key"]


def key_id_for(public_raw: bytes) -> str:
    """A stable id: the first 16 hex digits of SHA-256 of the raw public key."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def _public_raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class AuditSigner:
    private_key: Ed25519PrivateKey
    key_id: str
    public_raw: bytes

    def __repr__(self) -> str:
        return f"AuditSigner(key_id={self.key_id!r})"

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public_raw).decode()

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def load_or_create(cls, path: Path) -> AuditSigner:
        if not path.exists():
            create_once(
                path,
                Ed25519PrivateKey.generate().private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        raw = _public_raw(key.public_key())
        return cls(private_key=key, key_id=key_id_for(raw), public_raw=raw)


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """A public key from PEM (SubjectPublicKeyInfo) or base64 of the raw 32 bytes."""
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(text)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return key
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))

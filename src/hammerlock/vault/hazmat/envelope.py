"""Envelope encryption of card data, and the card fingerprint.

Each card record gets its own random 256-bit data key. The record's plaintext is sealed with
AES-256-GCM under that key; the data key itself is wrapped by the active key-encryption key (KEK)
of a :class:`~hammerlock.vault.hazmat.kek.KeyEncryptionKeyProvider`. Both layers take associated
data that names the token id, so a ciphertext or a wrapped key copied onto another token's row
fails authentication instead of decrypting.

Rotation re-wraps the data key only (:func:`rewrap`): the card ciphertext never changes, and the
data key is in memory only for the moment it takes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hammerlock.vault.hazmat.kek import KeyEncryptionKeyProvider, KeyringError

__all__ = [
    "DATA_KEY_BYTES",
    "DecryptionFailed",
    "Sealed",
    "fingerprint",
    "open_sealed",
    "rewrap",
    "seal",
]

DATA_KEY_BYTES = 32
NONCE_BYTES = 12
_CARD_AAD = b"hammerlock.vault.card.v1\x00"
_KEY_AAD = b"hammerlock.vault.dek.v1\x00"
_FINGERPRINT_CONTEXT = b"hammerlock.vault.fingerprint.v1\x00"


class DecryptionFailed(Exception):
    """A ciphertext or wrapped key failed authentication (tampered, moved, or wrong key)."""


@dataclass(frozen=True, slots=True)
class Sealed:
    kek_version: int
    wrapped_key: bytes  # the data key, wrapped by KEK ``kek_version`` (provider's format)
    ciphertext: bytes  # nonce (12 bytes) || AES-256-GCM ciphertext and tag

    def __repr__(self) -> str:
        return f"Sealed(kek_version={self.kek_version}, {len(self.ciphertext)} bytes)"


def _card_aad(token_id: str) -> bytes:
    return _CARD_AAD + token_id.encode()


def _key_aad(token_id: str) -> bytes:
    return _KEY_AAD + token_id.encode()


async def seal(kek: KeyEncryptionKeyProvider, token_id: str, plaintext: bytes) -> Sealed:
    data_key = AESGCM.generate_key(bit_length=DATA_KEY_BYTES * 8)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = nonce + AESGCM(data_key).encrypt(nonce, plaintext, _card_aad(token_id))
    version, wrapped = await kek.wrap(data_key, _key_aad(token_id))
    return Sealed(kek_version=version, wrapped_key=wrapped, ciphertext=ciphertext)


async def _data_key(kek: KeyEncryptionKeyProvider, token_id: str, sealed: Sealed) -> bytes:
    try:
        return await kek.unwrap(sealed.kek_version, sealed.wrapped_key, _key_aad(token_id))
    except (InvalidTag, KeyringError) as exc:
        raise DecryptionFailed(f"data key of {token_id} does not unwrap: {exc}") from None


async def open_sealed(kek: KeyEncryptionKeyProvider, token_id: str, sealed: Sealed) -> bytes:
    data_key = await _data_key(kek, token_id, sealed)
    nonce, body = sealed.ciphertext[:NONCE_BYTES], sealed.ciphertext[NONCE_BYTES:]
    try:
        return AESGCM(data_key).decrypt(nonce, body, _card_aad(token_id))
    except InvalidTag:
        raise DecryptionFailed(f"ciphertext of {token_id} fails authentication") from None


async def rewrap(kek: KeyEncryptionKeyProvider, token_id: str, sealed: Sealed) -> Sealed:
    """The same ciphertext, its data key wrapped by the active KEK version."""
    data_key = await _data_key(kek, token_id, sealed)
    version, wrapped = await kek.wrap(data_key, _key_aad(token_id))
    return Sealed(kek_version=version, wrapped_key=wrapped, ciphertext=sealed.ciphertext)


def fingerprint(key: bytes, number: str) -> str:
    """HMAC-SHA-256 of the card number under the vault's fingerprint key (PCI DSS 3.5.1.1):
    equal cards get equal fingerprints, and nobody without the key can test a guess."""
    if len(key) < DATA_KEY_BYTES:
        raise ValueError("fingerprint key too short")
    return hmac.new(key, _FINGERPRINT_CONTEXT + number.encode(), hashlib.sha256).hexdigest()

"""Envelope encryption and the KEK keyrings: round trip, tamper, rotation, retirement."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hammerlock.vault.hazmat.envelope import (
    DecryptionFailed,
    Sealed,
    fingerprint,
    open_sealed,
    rewrap,
    seal,
)
from hammerlock.vault.hazmat.kek import (
    EnvKeyring,
    FileKeyring,
    KeyringError,
    KeyringReadOnly,
    TransitKeyring,
    parse_env_keyring,
)

PLAIN = b'{"number": "4242424242424242"}'


async def test_round_trip_and_the_file_keyring_is_private(tmp_path: Path) -> None:
    kek = FileKeyring(tmp_path / "keys")
    sealed = await seal(kek, "tok_a", PLAIN)
    assert sealed.kek_version == 1
    assert PLAIN not in sealed.ciphertext
    assert await open_sealed(kek, "tok_a", sealed) == PLAIN
    assert stat.S_IMODE(kek.path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert FileKeyring(tmp_path / "keys").path.read_bytes() == kek.path.read_bytes()  # kept


@pytest.mark.parametrize("part", ["ciphertext", "wrapped_key"])
async def test_any_flipped_bit_fails_authentication(tmp_path: Path, part: str) -> None:
    kek = FileKeyring(tmp_path)
    sealed = await seal(kek, "tok_a", PLAIN)
    raw = bytearray(getattr(sealed, part))
    raw[-1] ^= 0x01
    tampered = Sealed(
        sealed.kek_version,
        bytes(raw) if part == "wrapped_key" else sealed.wrapped_key,
        bytes(raw) if part == "ciphertext" else sealed.ciphertext,
    )
    with pytest.raises(DecryptionFailed):
        await open_sealed(kek, "tok_a", tampered)


async def test_a_record_copied_to_another_token_does_not_decrypt(tmp_path: Path) -> None:
    """Associated data binds the ciphertext and the wrapped key to the token id."""
    kek = FileKeyring(tmp_path)
    sealed = await seal(kek, "tok_a", PLAIN)
    with pytest.raises(DecryptionFailed):
        await open_sealed(kek, "tok_b", sealed)
    with pytest.raises(DecryptionFailed):  # nor under a version it was not wrapped by
        await open_sealed(kek, "tok_a", Sealed(2, sealed.wrapped_key, sealed.ciphertext))


async def test_rotation_old_records_decrypt_new_wraps_use_the_new_version(tmp_path: Path) -> None:
    kek = FileKeyring(tmp_path)
    old = await seal(kek, "tok_old", PLAIN)
    assert await kek.add_version() == 2
    assert await kek.versions() == [1, 2]
    assert await open_sealed(kek, "tok_old", old) == PLAIN  # retired v1 still unwraps
    for _ in range(20):  # ... but never wraps again
        assert (await seal(kek, "tok_new", PLAIN)).kek_version == 2
    moved = await rewrap(kek, "tok_old", old)
    assert moved.kek_version == 2
    assert moved.ciphertext == old.ciphertext  # only the data key is re-wrapped
    assert await open_sealed(kek, "tok_old", moved) == PLAIN


async def test_another_process_sees_a_rotation_without_restart(tmp_path: Path) -> None:
    serving, rotating = FileKeyring(tmp_path), FileKeyring(tmp_path)
    await rotating.add_version()
    sealed = await seal(rotating, "tok_a", PLAIN)
    assert sealed.kek_version == 2
    assert await open_sealed(serving, "tok_a", sealed) == PLAIN  # unknown version: reloads
    assert (await seal(serving, "tok_b", PLAIN)).kek_version == 2  # wraps check the file


async def test_env_keyring_versions_and_read_only(tmp_path: Path) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    single = EnvKeyring(parse_env_keyring(base64.b64encode(k1).decode()))
    sealed = await seal(single, "tok_a", PLAIN)
    both = EnvKeyring(
        parse_env_keyring(f"1:{base64.b64encode(k1).decode()},2:{base64.b64encode(k2).decode()}")
    )
    assert await open_sealed(both, "tok_a", sealed) == PLAIN
    assert (await seal(both, "tok_b", PLAIN)).kek_version == 2
    with pytest.raises(KeyringReadOnly):
        await both.add_version()
    assert base64.b64encode(k1).decode() not in repr(both)


@pytest.mark.parametrize(
    "value", ["not base64!", base64.b64encode(b"short").decode(), "x:AAAA", "0:" + "A" * 44]
)
def test_env_keyring_refuses_bad_values_without_echoing_them(value: str) -> None:
    with pytest.raises(KeyringError) as info:
        parse_env_keyring(value)
    assert value not in str(info.value)


def test_fingerprint_is_keyed_and_stable() -> None:
    key, other = b"k" * 32, b"o" * 32
    assert fingerprint(key, "4242424242424242") == fingerprint(key, "4242424242424242")
    assert fingerprint(key, "4242424242424242") != fingerprint(other, "4242424242424242")
    assert fingerprint(key, "4242424242424242") != fingerprint(key, "4000056655665556")
    assert len(fingerprint(key, "4242424242424242")) == 64
    with pytest.raises(ValueError, match="short"):
        fingerprint(b"k" * 8, "4242424242424242")


class FakeTransit:
    """HashiCorp Vault's transit engine as its HTTP API describes it (encrypt, decrypt, rotate,
    read key), with AES-GCM and associated data: enough to run the provider for real."""

    def __init__(self) -> None:
        self._aead = AESGCM
        self.keys = {1: AESGCM.generate_key(bit_length=256)}

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["x-vault-token"] == "s.test"
        path = request.url.path
        body = json.loads(request.content or b"{}")
        if path == "/v1/transit/keys/kek" and request.method == "GET":
            data = {
                "latest_version": max(self.keys),
                "min_decryption_version": 1,
                "keys": {str(v): 0 for v in self.keys},
            }
        elif path == "/v1/transit/keys/kek/rotate":
            self.keys[max(self.keys) + 1] = self._aead.generate_key(bit_length=256)
            data = {}
        elif path == "/v1/transit/encrypt/kek":
            version = max(self.keys)
            nonce = os.urandom(12)
            ct = self._aead(self.keys[version]).encrypt(
                nonce,
                base64.b64decode(body["plaintext"]),
                base64.b64decode(body["associated_data"]),
            )
            data = {"ciphertext": f"vault:v{version}:" + base64.b64encode(nonce + ct).decode()}
        elif path == "/v1/transit/decrypt/kek":
            _, version, blob = body["ciphertext"].split(":", 2)
            raw = base64.b64decode(blob)
            try:
                plain = self._aead(self.keys[int(version[1:])]).decrypt(
                    raw[:12], raw[12:], base64.b64decode(body["associated_data"])
                )
            except Exception:  # noqa: BLE001 - Vault answers 400 for a bad ciphertext
                return httpx.Response(
                    400, json={"errors": ["cipher: message authentication failed"]}
                )
            data = {"plaintext": base64.b64encode(plain).decode()}
        else:
            return httpx.Response(404, json={"errors": []})
        return httpx.Response(200, json={"data": data})


async def test_transit_keyring_against_a_fake_vault() -> None:
    fake = FakeTransit()
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(fake.handle),
        base_url="http://vault:8200",
        headers={"x-vault-token": "s.test"},
    ) as http:
        kek = TransitKeyring(http, "kek")
        old = await seal(kek, "tok_a", PLAIN)
        assert old.kek_version == 1
        assert await kek.add_version() == 2
        assert await kek.versions() == [1, 2]
        assert await open_sealed(kek, "tok_a", old) == PLAIN
        moved = await rewrap(kek, "tok_a", old)
        assert moved.kek_version == 2
        assert await open_sealed(kek, "tok_a", moved) == PLAIN
        with pytest.raises(DecryptionFailed):
            await open_sealed(kek, "tok_b", moved)

"""Key-encryption keys (KEKs): a versioned keyring behind one small protocol.

The highest version is *active*: it alone wraps new data keys. Every older version is *retired*:
it only unwraps the data keys still wrapped under it, until ``hammerlock vault rotate-keys`` has
re-wrapped them all. A retired version never encrypts anything.

Providers:

* :class:`FileKeyring` (embedded default): ``<key_dir>/kek.json``, generated on first run with
  mode 0600; :meth:`~FileKeyring.add_version` appends a version atomically, and every process
  using the file picks the new version up on its next wrap (the file's mtime is checked), so a
  rotation needs no restart.
* :class:`EnvKeyring`: ``HAMMERLOCK_VAULT_KEK`` (base64 of 32 bytes, or ``1:<b64>,2:<b64>``);
  read-only: a new version is added by changing the variable.
* :class:`TransitKeyring`: HashiCorp Vault's transit engine over its HTTP API (the KEK never
  leaves Vault; ``wrap``/``unwrap`` are ``encrypt``/``decrypt`` calls with associated data).

Error tree::

    KeyringError
     ├── UnknownKeyVersion    no such KEK version here
     └── KeyringReadOnly      this provider cannot add a version itself
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import httpx
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hammerlock.secret_files import create_once

__all__ = [
    "EnvKeyring",
    "FileKeyring",
    "KeyEncryptionKeyProvider",
    "KeyringError",
    "KeyringReadOnly",
    "TransitKeyring",
    "UnknownKeyVersion",
    "parse_env_keyring",
]

KEK_BYTES = 32
_NONCE_BYTES = 12
_FORMAT = "hammerlock.vault.kek.v1"
_MAX_VERSIONS = 10_000


class KeyringError(Exception):
    pass


class UnknownKeyVersion(KeyringError):
    pass


class KeyringReadOnly(KeyringError):
    pass


@runtime_checkable
class KeyEncryptionKeyProvider(Protocol):
    """Wraps and unwraps data keys under versioned KEKs. ``aad`` binds a wrap to its record."""

    name: str

    async def active_version(self) -> int: ...

    async def versions(self) -> list[int]:
        """Every version that can still unwrap, ascending; the last one is active."""
        ...

    async def wrap(self, data_key: bytes, aad: bytes) -> tuple[int, bytes]:
        """Wrap under the active version; returns ``(version, wrapped)``."""
        ...

    async def unwrap(self, version: int, wrapped: bytes, aad: bytes) -> bytes: ...

    async def add_version(self) -> int:
        """Make a new version active (older ones retire); returns its number."""
        ...


def _wrap_local(keys: dict[int, bytes], data_key: bytes, aad: bytes) -> tuple[int, bytes]:
    version = max(keys)  # the active version; retired versions never reach this line
    nonce = os.urandom(_NONCE_BYTES)
    return version, nonce + AESGCM(keys[version]).encrypt(nonce, data_key, _aad(version, aad))


def _unwrap_local(keys: dict[int, bytes], version: int, wrapped: bytes, aad: bytes) -> bytes:
    key = keys.get(version)
    if key is None:
        raise UnknownKeyVersion(f"no key-encryption key version {version} in this keyring")
    nonce, body = wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:]
    return AESGCM(key).decrypt(nonce, body, _aad(version, aad))


def _aad(version: int, aad: bytes) -> bytes:
    return b"hammerlock.vault.kek.v1\x00" + str(version).encode() + b"\x00" + aad


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(f"{where}: not base64") from None
    if len(key) != KEK_BYTES:
        raise KeyringError(f"{where}: a key-encryption key is {KEK_BYTES} bytes, not {len(key)}")
    return key


def parse_env_keyring(value: str) -> dict[int, bytes]:
    """``<b64>`` (version 1) or ``1:<b64>,2:<b64>``; never echoes key material in errors."""
    if ":" not in value:
        return {1: _decode_key(value, "HAMMERLOCK_VAULT_KEK")}
    keys: dict[int, bytes] = {}
    for part in value.split(","):
        version_text, _, key_text = part.strip().partition(":")
        if not version_text.isdigit() or int(version_text) < 1:
            raise KeyringError("HAMMERLOCK_VAULT_KEK: versions are positive integers")
        keys[int(version_text)] = _decode_key(key_text, f"HAMMERLOCK_VAULT_KEK v{version_text}")
    return keys


class EnvKeyring:
    name = "env"

    def __init__(self, keys: dict[int, bytes]) -> None:
        if not keys:
            raise KeyringError("an empty keyring")
        self._keys = dict(keys)

    def __repr__(self) -> str:
        return f"EnvKeyring(versions={sorted(self._keys)})"

    async def active_version(self) -> int:
        return max(self._keys)

    async def versions(self) -> list[int]:
        return sorted(self._keys)

    async def wrap(self, data_key: bytes, aad: bytes) -> tuple[int, bytes]:
        return _wrap_local(self._keys, data_key, aad)

    async def unwrap(self, version: int, wrapped: bytes, aad: bytes) -> bytes:
        return _unwrap_local(self._keys, version, wrapped, aad)

    async def add_version(self) -> int:
        raise KeyringReadOnly(
            "HAMMERLOCK_VAULT_KEK is read-only here: add `<n+1>:<base64 of 32 random bytes>` to "
            "it, restart the vault, then run `hammerlock vault rotate-keys` to re-wrap"
        )


class FileKeyring:
    """``<key_dir>/kek.json``: ``{"format", "versions": [{"version", "key", "created_s"}]}``."""

    name = "file"

    def __init__(self, key_dir: Path) -> None:
        self.path = key_dir / "kek.json"
        key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        create_once(self.path, _keyring_json({1: AESGCM.generate_key(bit_length=256)}))
        self._mtime_ns = -1
        self._keys: dict[int, bytes] = {}
        self._reload()

    def __repr__(self) -> str:
        return f"FileKeyring({self.path}, versions={sorted(self._keys)})"

    def _reload(self) -> None:
        stat = self.path.stat()
        if stat.st_mtime_ns == self._mtime_ns and self._keys:
            return
        self._keys = _read_keyring(self.path)
        self._mtime_ns = stat.st_mtime_ns

    async def active_version(self) -> int:
        self._reload()
        return max(self._keys)

    async def versions(self) -> list[int]:
        self._reload()
        return sorted(self._keys)

    async def wrap(self, data_key: bytes, aad: bytes) -> tuple[int, bytes]:
        self._reload()  # a version added by `rotate-keys` in another process is used at once
        return _wrap_local(self._keys, data_key, aad)

    async def unwrap(self, version: int, wrapped: bytes, aad: bytes) -> bytes:
        if version not in self._keys:
            self._reload()
        return _unwrap_local(self._keys, version, wrapped, aad)

    async def add_version(self) -> int:
        with _locked(self.path.with_name(".kek.lock")):
            keys = _read_keyring(self.path)
            if len(keys) >= _MAX_VERSIONS:
                raise KeyringError(f"{self.path} already holds {_MAX_VERSIONS} versions")
            version = max(keys) + 1
            keys[version] = AESGCM.generate_key(bit_length=256)
            _replace(self.path, _keyring_json(keys))
        self._mtime_ns = -1
        self._reload()
        return version


def _keyring_json(keys: dict[int, bytes]) -> bytes:
    now_s = int(time.time())
    body = {
        "format": _FORMAT,
        "versions": [
            {"version": v, "key": base64.b64encode(k).decode(), "created_s": now_s}
            for v, k in sorted(keys.items())
        ],
    }
    return json.dumps(body, indent=1).encode()


def _read_keyring(path: Path) -> dict[int, bytes]:
    try:
        body = json.loads(path.read_text())
        entries = body["versions"]
        if body.get("format") != _FORMAT or not entries:
            raise KeyringError(f"{path}: not a {_FORMAT} keyring")
        return {
            int(e["version"]): _decode_key(e["key"], f"{path} v{e['version']}") for e in entries
        }
    except (ValueError, KeyError, TypeError):
        raise KeyringError(f"{path}: unreadable keyring") from None


def _replace(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` atomically, mode 0600 (rename over the old file)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class TransitKeyring:
    """HashiCorp Vault transit (``/v1/<mount>/encrypt|decrypt/<key>``), over ``client``.

    ``client`` carries the base URL and the ``X-Vault-Token`` header; the transit key must be an
    AEAD type (``aes256-gcm96``, the default) so ``associated_data`` is authenticated. The wrapped
    form is transit's own ``vault:v<N>:<b64>`` string; Vault keeps the versions (``rotate``), and
    ``min_encryption_version`` on its side retires old ones.
    """

    name = "transit"

    def __init__(self, client: httpx.AsyncClient, key_name: str, *, mount: str = "transit") -> None:
        self._client = client
        self._base = f"/v1/{mount}"
        self._key = key_name

    async def _call(
        self, method: str, path: str, body: dict[str, str] | None = None
    ) -> dict[str, object]:
        response = await self._client.request(method, f"{self._base}{path}", json=body)
        if response.status_code >= 400:
            raise KeyringError(f"transit {path}: HTTP {response.status_code}")
        data = response.json().get("data") if response.content else None
        return data if isinstance(data, dict) else {}

    async def _key_info(self) -> dict[str, object]:
        return await self._call("GET", f"/keys/{self._key}")

    async def active_version(self) -> int:
        return int(str((await self._key_info())["latest_version"]))

    async def versions(self) -> list[int]:
        info = await self._key_info()
        keys = info.get("keys")
        low = int(str(info.get("min_decryption_version", 1)))
        return sorted(int(v) for v in (keys if isinstance(keys, dict) else {}) if int(v) >= low)

    async def wrap(self, data_key: bytes, aad: bytes) -> tuple[int, bytes]:
        data = await self._call(
            "POST",
            f"/encrypt/{self._key}",
            {"plaintext": _b64(data_key), "associated_data": _b64(aad)},
        )
        ciphertext = str(data["ciphertext"])
        return _transit_version(ciphertext), ciphertext.encode()

    async def unwrap(self, version: int, wrapped: bytes, aad: bytes) -> bytes:
        ciphertext = wrapped.decode()
        if _transit_version(ciphertext) != version:
            raise KeyringError("wrapped key names another version than its row")
        data = await self._call(
            "POST",
            f"/decrypt/{self._key}",
            {"ciphertext": ciphertext, "associated_data": _b64(aad)},
        )
        return base64.b64decode(str(data["plaintext"]))

    async def add_version(self) -> int:
        await self._call("POST", f"/keys/{self._key}/rotate")
        return await self.active_version()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _transit_version(ciphertext: str) -> int:
    prefix, version, _ = ([*ciphertext.split(":", 2), "", ""])[:3]
    if prefix != "vault" or not version.startswith("v") or not version[1:].isdigit():
        raise KeyringError("not a transit ciphertext")
    return int(version[1:])

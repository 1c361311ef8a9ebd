"""API↔vault authentication: unsigned, stale, replayed, wrong-key and forged calls all fail."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest

from hammerlock.clock import FixedClock
from hammerlock.payments.gateways.base import GatewayTimeout
from hammerlock.vault.client import VaultClient, VaultGateway
from hammerlock.vault.errors import InternalAuthFailed
from hammerlock.vault.signing import (
    SIGNATURE_HEADER,
    InternalKey,
    InternalKeyring,
    NonceCache,
    RequestSigner,
)
from tests.vault.conftest import VAULT_URL, Vault


@pytest.fixture
def backend() -> str:
    """Authentication does not depend on the database: SQLite only."""
    return "sqlite"


PATH = "/internal/v1/audit/events?after=0&limit=5"


def _signed(vault: Vault, keyring: InternalKeyring | None = None) -> dict[str, str]:
    keyring = keyring or vault.container.internal_keys
    return RequestSigner(keyring, vault.clock).sign("GET", PATH, b"")


async def test_public_routes_need_no_signature_internal_ones_do(vault: Vault) -> None:
    assert (await vault.browser.get("/healthz")).status_code == 200
    for method, path in [
        ("GET", PATH),
        ("GET", "/internal/v1/tokens/tok_x"),
        ("POST", "/internal/v1/gateways/sandbox/authorize"),
        ("GET", "/internal/v1/sandbox/charges"),
        ("GET", "/internal/v1/nothing/here"),
    ]:
        response = await vault.browser.request(method, path)
        assert response.status_code == 401, (path, response.text)
        assert response.json()["code"] == "unauthenticated"
    assert (await vault.browser.get("/openapi.json")).status_code == 404
    assert (await vault.browser.get("/docs")).status_code == 404


async def test_a_signed_call_passes_and_its_response_is_signed(vault: Vault) -> None:
    headers = _signed(vault)
    response = await vault.browser.get(PATH, headers=headers)
    assert response.status_code == 200, response.text
    RequestSigner(vault.container.internal_keys, vault.clock).verify_response(
        headers["hammerlock-nonce"], 200, response.headers, response.content
    )


async def test_replayed_request_is_refused(vault: Vault) -> None:
    headers = _signed(vault)
    assert (await vault.browser.get(PATH, headers=headers)).status_code == 200
    assert (await vault.browser.get(PATH, headers=headers)).status_code == 401


@pytest.mark.parametrize("skew_s", [-61, 61])
async def test_stale_or_future_timestamp_is_refused(vault: Vault, skew_s: int) -> None:
    headers = _signed(vault)
    vault.clock.advance(-skew_s)  # the vault's clock is skew_s away from the signer's
    assert (await vault.browser.get(PATH, headers=headers)).status_code == 401


async def test_within_tolerance_passes(vault: Vault) -> None:
    headers = _signed(vault)
    vault.clock.advance(59)
    assert (await vault.browser.get(PATH, headers=headers)).status_code == 200


async def test_wrong_key_tampered_path_or_body_is_refused(vault: Vault, tmp_path: Path) -> None:
    stranger = InternalKeyring.of(
        [InternalKey("ik_" + "0" * 16, secrets.token_bytes(32))], tmp_path / "other.json"
    )
    assert (await vault.browser.get(PATH, headers=_signed(vault, stranger))).status_code == 401
    same_id = InternalKeyring.of(  # the vault's key id with another secret
        [InternalKey(vault.container.internal_keys.signing_key().key_id, secrets.token_bytes(32))],
        tmp_path / "same-id.json",
    )
    assert (await vault.browser.get(PATH, headers=_signed(vault, same_id))).status_code == 401
    headers = _signed(vault)
    tampered = await vault.browser.get(PATH.replace("limit=5", "limit=6"), headers=headers)
    assert tampered.status_code == 401
    signer = RequestSigner(vault.container.internal_keys, vault.clock)
    post_headers = signer.sign("POST", "/internal/v1/gateways/sandbox/charges/k/void", b"")
    with_body = await vault.browser.post(
        "/internal/v1/gateways/sandbox/charges/k/void", headers=post_headers, content=b"{}"
    )
    assert with_body.status_code == 401
    bad_header = {**_signed(vault), SIGNATURE_HEADER: "v0=abc"}
    assert (await vault.browser.get(PATH, headers=bad_header)).status_code == 401


async def test_rotation_new_key_signs_old_key_verifies_until_retired(vault: Vault) -> None:
    keyring = vault.container.internal_keys
    old = keyring.signing_key()
    old_headers = _signed(vault)
    new_id = keyring.add_key()
    assert keyring.signing_key().key_id == new_id != old.key_id
    assert (await vault.browser.get(PATH, headers=old_headers)).status_code == 200
    assert (await vault.browser.get(PATH, headers=_signed(vault))).status_code == 200
    stale = InternalKeyring.of([old], keyring.path.with_name("old-only.json"))
    keyring.add_key(retire_others=True)
    assert (await vault.browser.get(PATH, headers=_signed(vault, stale))).status_code == 401


def _forging(inner: httpx.AsyncBaseTransport, forge: str) -> httpx.AsyncBaseTransport:
    class Forging(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await inner.handle_async_request(request)
            body = await response.aread()
            headers = dict(response.headers)
            if forge == "body":
                body += b" "
            elif forge == "status":
                return httpx.Response(201, headers=headers, content=body)
            elif forge == "unsigned":
                headers.pop(SIGNATURE_HEADER)
            return httpx.Response(response.status_code, headers=headers, content=body)

    return Forging()


@pytest.mark.parametrize("forge", ["body", "status", "unsigned"])
async def test_the_client_refuses_a_forged_response(vault: Vault, forge: str) -> None:
    transport = _forging(vault.browser._transport, forge)
    client = VaultClient(
        VAULT_URL, vault.container.internal_keys, clock=vault.clock, transport=transport
    )
    try:
        with pytest.raises(InternalAuthFailed):
            await client.audit_events(after=0, limit=5)
        with pytest.raises(GatewayTimeout):  # through the gateway: the outcome is unknown
            await VaultGateway(client, "sandbox").void("pi_x_1")
    finally:
        await client.aclose()


async def test_a_response_replayed_for_another_request_is_refused(vault: Vault) -> None:
    """Responses are bound to their request's nonce."""
    signer = RequestSigner(vault.container.internal_keys, vault.clock)
    first = signer.sign("GET", PATH, b"")
    response = await vault.browser.get(PATH, headers=first)
    second = signer.sign("GET", PATH, b"")
    with pytest.raises(InternalAuthFailed):
        signer.verify_response(second["hammerlock-nonce"], 200, response.headers, response.content)


def test_nonce_cache_is_bounded_and_forgets_after_its_window() -> None:
    clock = FixedClock()
    cache = NonceCache(clock, ttl_s=120, max_entries=2)
    assert cache.add("a" * 32)
    assert not cache.add("a" * 32)
    assert cache.add("b" * 32)
    assert not cache.add("c" * 32)  # full of live nonces: refuse rather than forget one
    clock.advance(121)
    assert cache.add("c" * 32)
    assert cache.add("a" * 32)  # outside the window a timestamp check refuses it anyway


async def test_a_crash_inside_an_internal_route_is_answered_signed(
    vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starlette's error page sits outside the signing middleware: a crash answered there would
    reach the API unsigned, as if forged. It is answered inside, signed, as a 500 problem."""

    async def crash(**_: object) -> object:
        raise RuntimeError("a bug in the vault")

    monkeypatch.setattr(vault.container.vault, "audit_events", crash)
    headers = _signed(vault)
    response = await vault.browser.get(PATH, headers=headers)
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error"
    assert "a bug" not in response.text
    RequestSigner(vault.container.internal_keys, vault.clock).verify_response(
        headers["hammerlock-nonce"], 500, response.headers, response.content
    )

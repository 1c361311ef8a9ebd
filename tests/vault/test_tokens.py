"""``POST /v1/tokens``: the pinned shape, validation codes, CORS, and card-testing limits."""

from __future__ import annotations

import httpx
import pytest

from hammerlock.clock import FixedClock
from hammerlock.settings import Settings
from tests.vault.conftest import AMEX, VISA, Vault, open_vault


async def test_tokenize_answers_the_pinned_shape(vault: Vault) -> None:
    body = await vault.tokenize(
        "4242 4242 4242 4242", cvc="123", name="A Bidder", address_country="de"
    )
    assert set(body) == {"id", "brand", "last4", "bin", "exp_month", "exp_year", "fingerprint"}
    assert str(body["id"]).startswith("tok_")
    assert (body["brand"], body["last4"], body["bin"]) == ("visa", "4242", "424242")
    assert (body["exp_month"], body["exp_year"]) == (12, 2034)
    again = await vault.tokenize(VISA)
    assert again["id"] != body["id"]
    assert again["fingerprint"] == body["fingerprint"]  # same card, same fingerprint
    other = await vault.tokenize("5555-5555-5555-4444")
    assert other["brand"] == "mastercard"
    assert other["fingerprint"] != body["fingerprint"]
    meta = await vault.client.tokens(str(body["id"]))
    assert (meta.brand, meta.last4, meta.address_country) == ("visa", "4242", "DE")


@pytest.mark.parametrize(
    ("number", "exp_month", "exp_year", "cvc", "code"),
    [
        ("4242424242424241", 12, 2034, None, "invalid_number"),  # Luhn
        ("42424242", 12, 2034, None, "invalid_number"),  # too short
        ("4242x42424242424", 12, 2034, None, "invalid_number"),
        ("424242424242424242424242", 12, 2034, None, "invalid_number"),  # too long
        ("424242424242428", 12, 2034, None, "invalid_number"),  # visa prefix, 15 digits
        ("1234567812345670", 12, 2034, None, "unsupported_brand"),  # Luhn-valid, no brand
        (VISA, 13, 2034, None, "invalid_expiry"),
        (VISA, 0, 2034, None, "invalid_expiry"),
        (VISA, 12, 2025, None, "invalid_expiry"),  # the clock says 2026-01
        (VISA, 12, 34, None, "invalid_expiry"),  # two-digit years are refused
        (VISA, 12, 2099, None, "invalid_expiry"),
        (VISA, 12, 2034, "12", "invalid_cvc"),
        (VISA, 12, 2034, "1234", "invalid_cvc"),
        (AMEX, 12, 2034, "123", "invalid_cvc"),  # amex has four
    ],
)
async def test_invalid_cards_are_problems_with_stable_codes(
    vault: Vault, *, number: str, exp_month: int, exp_year: int, cvc: str | None, code: str
) -> None:
    body: dict[str, object] = {"number": number, "exp_month": exp_month, "exp_year": exp_year}
    if cvc is not None:
        body["cvc"] = cvc
    response = await vault.browser.post("/v1/tokens", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == code
    assert problem["type"].endswith("/" + code)
    assert number not in response.text


async def test_this_month_is_still_valid(vault: Vault) -> None:
    response = await vault.browser.post(
        "/v1/tokens", json={"number": VISA, "exp_month": 1, "exp_year": 2026}
    )
    assert response.status_code == 200, response.text


async def test_schema_errors_never_echo_the_card(vault: Vault) -> None:
    response = await vault.browser.post(
        "/v1/tokens", json={"number": VISA, "exp_month": "soon", "exp_year": 2034, "pin": "1"}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
    assert VISA not in response.text
    assert {e["field"] for e in response.json()["errors"]} == {"exp_month", "pin"}


async def test_cors_for_configured_origins_only(vault: Vault) -> None:
    preflight = await vault.browser.options(
        "/v1/tokens",
        headers={
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://shop.example"
    assert "access-control-allow-credentials" not in preflight.headers
    evil = await vault.browser.options(
        "/v1/tokens",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert evil.status_code == 400
    assert "access-control-allow-origin" not in evil.headers
    assert evil.headers["content-type"] == "application/problem+json"
    assert evil.json()["code"] == "cors_rejected"
    assert "origin" in evil.json()["detail"].lower()
    # the internal routes take no browser: no CORS answer there, the signature check decides
    internal = await vault.browser.options(
        "/internal/v1/audit/events",
        headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "GET"},
    )
    assert internal.status_code == 401
    assert "access-control-allow-origin" not in internal.headers
    simple = await vault.browser.post(
        "/v1/tokens",
        json={"number": VISA, "exp_month": 12, "exp_year": 2034},
        headers={"Origin": "https://shop.example"},
    )
    assert simple.headers["access-control-allow-origin"] == "https://shop.example"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_rate_limit_per_client_address(vault_settings: Settings, clock: FixedClock) -> None:
    container, transport = await open_vault(
        vault_settings.model_copy(update={"vault_tokenize_ip_limit": 3}), clock, {}
    )
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://v") as browser:
            body = {"number": VISA, "exp_month": 12, "exp_year": 2034}
            for _ in range(3):
                assert (await browser.post("/v1/tokens", json=body)).status_code == 200
            refused = await browser.post("/v1/tokens", json=body)
            assert refused.status_code == 429
            assert refused.json()["code"] == "rate_limited"
            assert 1 <= int(refused.headers["retry-after"]) <= 600
            clock.advance(600)  # the next window
            assert (await browser.post("/v1/tokens", json=body)).status_code == 200
    finally:
        await container.stop()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_rate_limit_per_card_and_failed_attempts(
    vault_settings: Settings, clock: FixedClock
) -> None:
    container, transport = await open_vault(
        vault_settings.model_copy(
            update={"vault_tokenize_card_limit": 2, "vault_tokenize_failure_limit": 3}
        ),
        clock,
        {},
    )
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://v") as browser:
            card = {"number": VISA, "exp_month": 12, "exp_year": 2034}
            assert (await browser.post("/v1/tokens", json=card)).status_code == 200
            assert (await browser.post("/v1/tokens", json=card)).status_code == 200
            same_card = await browser.post("/v1/tokens", json=card)
            assert same_card.status_code == 429  # per fingerprint ...
            other = {**card, "number": "5555555555554444"}
            assert (await browser.post("/v1/tokens", json=other)).status_code == 200  # ... only
            bad = {**card, "number": "4242424242424241"}
            for _ in range(2):  # one failure so far: the refused same-card attempt
                assert (await browser.post("/v1/tokens", json=bad)).status_code == 422
            blocked = await browser.post("/v1/tokens", json=other)
            assert blocked.status_code == 429  # velocity of failures blocks even good cards
            assert "retry-after" in blocked.headers
    finally:
        await container.stop()


async def test_public_bodies_are_small(vault: Vault) -> None:
    response = await vault.browser.post(
        "/v1/tokens",
        content=b'{"number": "' + b"4" * 20_000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"

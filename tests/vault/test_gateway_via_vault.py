# ruff: noqa: ARG002 - the recording gateway implements the protocol's signatures
"""The API's :class:`VaultGateway`: the gateway contract through the vault, the CVC used once,
detokenization audited, and every failure mapped to the gateway error it stands for."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

import httpx
import orjson
import pytest

from hammerlock.clock import FixedClock
from hammerlock.payments.gateways.base import (
    AuthorizeRequest,
    CardData,
    Charge,
    ChargeStatus,
    Gateway,
    GatewayRejected,
    GatewayTimeout,
    GatewayToken,
    GatewayUnavailable,
    Payout,
    PayoutRequest,
    Refund,
    VaultToken,
    WebhookEvent,
)
from hammerlock.settings import Settings
from hammerlock.vault.client import VaultCallFailed, VaultClient, VaultGateway
from hammerlock.vault.signing import InternalKeyring
from tests.vault.conftest import VAULT_URL, VISA, Vault, open_vault


@pytest.fixture
def backend() -> str:
    return "sqlite"


class Recording:
    """A gateway that records what it was given (to see the card the vault forwards)."""

    name = "recording"

    def __init__(self) -> None:
        self.sources: list[object] = []
        self.fail_with: Exception | None = None

    async def authorize(self, request: AuthorizeRequest) -> Charge:
        if self.fail_with is not None:
            raise self.fail_with
        self.sources.append(request.source)
        return Charge(
            gateway=self.name,
            gateway_key=request.gateway_key,
            charge_id="ch_1",
            status=ChargeStatus.AUTHORIZED,
            amount=request.amount,
            currency=request.currency,
        )

    async def capture(self, gateway_key: str, amount: int) -> Charge:
        raise GatewayRejected("no", code="charge_not_capturable")

    async def void(self, gateway_key: str) -> Charge:
        raise GatewayUnavailable("down")

    async def refund(self, gateway_key: str, refund_key: str, amount: int) -> Refund:
        raise GatewayTimeout("slow")

    async def payout(self, request: PayoutRequest) -> Payout:
        return Payout(
            self.name, request.payout_key, "po_1", request.amount, request.currency, "paid"
        )

    async def retrieve_by_idempotency_key(self, gateway_key: str) -> Charge | None:
        return None

    async def release_from_escrow(self, gateway_key: str) -> Charge:
        raise GatewayRejected("no escrow here", code="escrow_not_supported")

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        raise GatewayRejected("no webhooks")


@pytest.fixture
def recording() -> Recording:
    return Recording()


@pytest.fixture
def vault_gateways(recording: Recording) -> dict[str, Gateway]:
    return {"recording": recording}


def _request(source: object, key: str = "pi_1_a1") -> AuthorizeRequest:
    return AuthorizeRequest(gateway_key=key, amount=5_000, currency="USD", source=source)  # type: ignore[arg-type]


async def _outbox(vault: Vault) -> list[dict[str, object]]:
    events, _ = await vault.client.audit_events(after=0, limit=1_000)
    return [e.to_json_object() for e in events]


async def test_the_gateway_gets_the_card_and_the_cvc_once(
    vault: Vault, recording: Recording
) -> None:
    token = str((await vault.tokenize(VISA, cvc="123", name="A Bidder"))["id"])
    gateway = VaultGateway(vault.client, "recording")
    await gateway.authorize(_request(VaultToken(token), "pi_1_a1"))
    await gateway.authorize(_request(VaultToken(token), "pi_1_a2"))  # tokens are reusable
    first, second = recording.sources
    assert isinstance(first, CardData)
    assert isinstance(second, CardData)
    assert (first.number, first.cvc, first.name, first.exp_year) == (VISA, "123", "A Bidder", 2034)
    assert second.cvc is None  # consumed by its first use
    assert VISA not in repr(first)
    events = await _outbox(vault)
    detokenized = [e for e in events if e["action"] == "vault.detokenize"]
    assert len(detokenized) == 2
    details = detokenized[0]["details"]
    assert isinstance(details, dict)
    assert details["last4"] == "4242"
    assert details["gateway_key"] == "pi_1_a1"
    assert details["cvc_used"] is True
    assert detokenized[0]["actor"] == {
        "principal_id": "hammerlock-api",
        "role": "service",
        "key_id": vault.container.internal_keys.signing_key().key_id,
    }
    dump = orjson.dumps(events).decode()
    assert VISA not in dump
    assert '"123"' not in dump


async def test_the_cvc_expires_after_ten_minutes(vault: Vault, recording: Recording) -> None:
    token = str((await vault.tokenize(VISA, cvc="123"))["id"])
    vault.clock.advance(601)
    await VaultGateway(vault.client, "recording").authorize(_request(VaultToken(token)))
    card = recording.sources[0]
    assert isinstance(card, CardData)
    assert card.cvc is None


async def test_gateway_tokens_pass_through_and_cards_never_leave_the_api(
    vault: Vault, recording: Recording
) -> None:
    gateway = VaultGateway(vault.client, "recording")
    await gateway.authorize(_request(GatewayToken("pm_card_visa")))
    assert recording.sources == [GatewayToken("pm_card_visa")]
    with pytest.raises(GatewayRejected):
        await gateway.authorize(_request(CardData(VISA, 12, 2034)))


async def test_unknown_token_and_gateway_are_rejected_and_audited(vault: Vault) -> None:
    with pytest.raises(GatewayRejected) as info:
        await VaultGateway(vault.client, "recording").authorize(_request(VaultToken("tok_nope")))
    assert info.value.code == "token_not_found"
    with pytest.raises(GatewayRejected) as info:
        await VaultGateway(vault.client, "nope").void("pi_1_a1")
    assert info.value.code == "gateway_not_found"
    failures = [
        e
        for e in await _outbox(vault)
        if e["outcome"] == {"status": "failure", "code": "token_not_found"}
    ]
    assert [e["action"] for e in failures] == ["vault.detokenize"]


async def test_gateway_errors_cross_the_vault_as_themselves(
    vault: Vault, recording: Recording
) -> None:
    gateway = VaultGateway(vault.client, "recording")
    with pytest.raises(GatewayRejected) as rejected:
        await gateway.capture("pi_1_a1", 100)
    assert rejected.value.code == "charge_not_capturable"
    with pytest.raises(GatewayUnavailable):
        await gateway.void("pi_1_a1")
    with pytest.raises(GatewayTimeout):
        await gateway.refund("pi_1_a1", "re_1", 100)
    with pytest.raises(GatewayRejected) as escrow:
        await gateway.release_from_escrow("pi_1_a1")
    assert escrow.value.code == "escrow_not_supported"
    assert await gateway.retrieve_by_idempotency_key("pi_1_a1") is None
    payout = await gateway.payout(PayoutRequest("po_key", 1_000, "USD", "acct_1"))
    assert (payout.payout_id, payout.status) == ("po_1", "paid")
    for error in (GatewayTimeout, GatewayUnavailable):
        recording.fail_with = error("x")
        with pytest.raises(error):
            await gateway.authorize(_request(GatewayToken("pm_x")))


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (httpx.ReadTimeout("read"), GatewayTimeout),
        (httpx.RemoteProtocolError("dropped"), GatewayTimeout),
        (httpx.ConnectError("refused"), GatewayUnavailable),
        (httpx.ConnectTimeout("connect"), GatewayUnavailable),
    ],
)
async def test_transport_errors_map_by_what_the_caller_must_do(
    vault_settings: Settings, raised: Exception, expected: type[Exception]
) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise raised

    keyring = InternalKeyring(vault_settings.effective_vault_internal_key_file)
    client = VaultClient(
        VAULT_URL, keyring, clock=FixedClock(), transport=httpx.MockTransport(fail)
    )
    try:
        with pytest.raises(expected):
            await VaultGateway(client, "sandbox").authorize(_request(VaultToken("tok_x")))
    finally:
        await client.aclose()


async def test_a_real_timeout_on_a_slow_vault(vault_settings: Settings) -> None:
    keyring = InternalKeyring(vault_settings.effective_vault_internal_key_file)
    async with _slow_server() as url:
        client = VaultClient(url, keyring, clock=FixedClock(), timeout_s=0.2)
        try:
            with pytest.raises(GatewayTimeout):
                await VaultGateway(client, "sandbox").void("pi_1_a1")
        finally:
            await client.aclose()


@contextlib.asynccontextmanager
async def _slow_server() -> AsyncIterator[str]:
    """A TCP server that accepts and never answers: a read timeout, not a connect error."""

    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_sandbox_listing_needs_a_sandbox(vault: Vault) -> None:
    with pytest.raises(VaultCallFailed) as info:
        await vault.client.sandbox_charges()
    assert info.value.code == "gateway_not_found"


async def test_open_vault_with_default_gateways_lists_sandbox_charges(
    vault_settings: Settings, clock: FixedClock
) -> None:
    container, transport = await open_vault(vault_settings, clock)
    keyring = InternalKeyring(vault_settings.effective_vault_internal_key_file)
    client = VaultClient(VAULT_URL, keyring, clock=clock, transport=transport)
    try:
        async with httpx.AsyncClient(transport=transport, base_url=VAULT_URL) as browser:
            response = await browser.post(
                "/v1/tokens", json={"number": VISA, "exp_month": 12, "exp_year": 2034}
            )
        token = response.json()["id"]
        gateway = VaultGateway(client, "sandbox")
        charge = await gateway.authorize(
            AuthorizeRequest("pi_9_a1", 5_000, "USD", VaultToken(token), capture=True)
        )
        assert charge.status is ChargeStatus.CAPTURED
        page = await client.sandbox_charges(limit=10)
        assert [c["gateway_key"] for c in page["data"]] == ["pi_9_a1"]
        assert VISA not in orjson.dumps(page).decode()
    finally:
        await client.aclose()
        await container.stop()

"""The gateway contract, run against the Stripe adapter and the local Stripe fake (real SDK)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest
import stripe

from hammerlock.payments.gateways.base import (
    AuthorizeRequest,
    CardData,
    Charge,
    ChargeStatus,
    GatewayError,
    GatewayRejected,
    GatewayTimeout,
    GatewayToken,
    GatewayUnavailable,
    PaymentSource,
    PayoutRequest,
    VaultToken,
)
from hammerlock.payments.gateways.resilience import ResilientGateway
from hammerlock.payments.gateways.signature import InvalidSignature, sign_header
from hammerlock.payments.gateways.stripe import (
    METADATA_KEY,
    StripeGateway,
    decline_codes,
    map_error,
)
from hammerlock.settings import Settings
from tests.contract.gateway_contract import GatewayContract, GatewayHarness, Scenario
from tests.fakes.stripe_fake import API_KEY, StripeFake
from tests.servers import free_port

WEBHOOK_SECRET = "whsec_contract_test_secret"
CARDS = {
    Scenario.SUCCESS: "4242424242424242",
    Scenario.DECLINE: "4000000000000002",
    Scenario.INSUFFICIENT_FUNDS: "4000000000009995",
    Scenario.THREE_D_SECURE: "4000002760003184",
    Scenario.PROCESSING_ERROR: "4000000000000119",
}
PAYMENT_METHODS = {
    Scenario.SUCCESS: "pm_card_visa",
    Scenario.DECLINE: "pm_card_chargeDeclined",
    Scenario.INSUFFICIENT_FUNDS: "pm_card_chargeDeclinedInsufficientFunds",
    Scenario.THREE_D_SECURE: "pm_card_authenticationRequired",
    Scenario.PROCESSING_ERROR: "pm_card_chargeDeclinedProcessingError",
}
UNANSWERED_DELAY_S = 3.0
CLIENT_TIMEOUT_S = 1.0  # long enough for any other call on a loaded machine
RECORDED_TIMEOUT_S = 5.0


class StripeHarness:
    payout_destination = "acct_seller_1"

    def __init__(self, fake: StripeFake, gateway: StripeGateway, *, tokens: bool) -> None:
        self.fake = fake
        self.gateway = gateway
        self._tokens = tokens

    def source(self, scenario: Scenario) -> PaymentSource:
        if self._tokens:
            return GatewayToken(PAYMENT_METHODS[scenario])
        return CardData(number=CARDS[scenario], exp_month=12, exp_year=2034, cvc="123")

    async def complete_challenge(self, charge: Charge, *, passed: bool) -> None:
        assert charge.next_action_url is not None
        async with httpx.AsyncClient(timeout=5) as browser:
            response = await browser.post(
                charge.next_action_url, data={"result": "pass" if passed else "fail"}
            )
        assert response.status_code == 200, response.text

    async def authorize_unanswered(self, request: AuthorizeRequest) -> None:
        self.fake.delay_next(UNANSWERED_DELAY_S, "/v1/payment_intents")
        short = StripeGateway(
            API_KEY,
            webhook_secret=WEBHOOK_SECRET,
            api_base=self.fake.base_url,
            timeout_s=CLIENT_TIMEOUT_S,
        )
        try:
            with pytest.raises(GatewayTimeout):
                await short.authorize(request)
        finally:
            await short.aclose()
        deadline = time.monotonic() + RECORDED_TIMEOUT_S
        while await self.charges_under(request.gateway_key) == 0:
            assert time.monotonic() < deadline, "the fake never recorded the charge"
            await asyncio.sleep(0.02)

    async def charges_under(self, gateway_key: str) -> int:
        intents = self.fake.state.intents.values()
        return sum(1 for i in intents if i["metadata"].get(METADATA_KEY) == gateway_key)


@pytest.fixture
def stripe_fake() -> Iterator[StripeFake]:
    fake = StripeFake().start()
    try:
        yield fake
    finally:
        fake.stop()


@contextlib.asynccontextmanager
async def stripe_gateway(fake: StripeFake) -> AsyncIterator[StripeGateway]:
    gateway = StripeGateway(
        API_KEY, webhook_secret=WEBHOOK_SECRET, api_base=fake.base_url, timeout_s=5
    )
    try:
        yield gateway
    finally:
        await gateway.aclose()


class TestStripeContract(GatewayContract):
    """Raw cards forwarded from inside the vault (``payment_method_data``)."""

    @pytest.fixture
    async def harness(self, stripe_fake: StripeFake) -> AsyncIterator[GatewayHarness]:
        async with stripe_gateway(stripe_fake) as gateway:
            yield StripeHarness(stripe_fake, gateway, tokens=False)


class TestStripeTokenContract(GatewayContract):
    """The merchant's own client-side tokens (``pm_…`` PaymentMethods)."""

    @pytest.fixture
    async def harness(self, stripe_fake: StripeFake) -> AsyncIterator[GatewayHarness]:
        async with stripe_gateway(stripe_fake) as gateway:
            yield StripeHarness(stripe_fake, gateway, tokens=True)


# ---------------------------------------------------------------------- adapter-specific tests


def _request(key: str, source: PaymentSource | None = None, **extra: object) -> AuthorizeRequest:
    return AuthorizeRequest(
        gateway_key=key,
        amount=5_000,
        currency="USD",
        source=source or GatewayToken("pm_card_visa"),
        **extra,  # type: ignore[arg-type]
    )


class _NoWait:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


async def test_timeout_then_retry_makes_exactly_one_charge(stripe_fake: StripeFake) -> None:
    stripe_fake.delay_next(UNANSWERED_DELAY_S, "/v1/payment_intents")
    inner = StripeGateway(
        API_KEY,
        webhook_secret=WEBHOOK_SECRET,
        api_base=stripe_fake.base_url,
        timeout_s=CLIENT_TIMEOUT_S,
    )
    sleep = _NoWait()
    gateway = ResilientGateway(inner, retries=3, base_delay_s=0.01, sleep=sleep)
    try:
        charge = await gateway.authorize(_request("pi_t:1", capture=True))
    finally:
        await inner.aclose()
    assert charge.status is ChargeStatus.CAPTURED
    assert len(sleep.waits) == 1  # one timeout, one retry
    creates = [r for r in stripe_fake.state.requests if r == ("POST", "/v1/payment_intents")]
    assert len(creates) == 2  # the retry reached Stripe, which replayed the first answer
    assert stripe_fake.intent_count == 1
    assert len(stripe_fake.charges_for("pi_t:1")) == 1


async def test_search_lag_falls_back_to_the_strongly_consistent_list(
    stripe_fake: StripeFake,
) -> None:
    async with stripe_gateway(stripe_fake) as first:
        charge = await first.authorize(_request("pi_lag:1"))
    stripe_fake.search_lag = True
    async with stripe_gateway(stripe_fake) as other:  # another process: no memory of the key
        found = await other.retrieve_by_idempotency_key("pi_lag:1")
        assert found is not None
        assert found.charge_id == charge.charge_id
        assert await other.retrieve_by_idempotency_key("pi_lag:never") is None
    assert ("GET", "/v1/payment_intents") in stripe_fake.state.requests


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, GatewayUnavailable), (503, GatewayUnavailable), (429, GatewayUnavailable)],
)
async def test_server_errors_and_rate_limits_are_unavailable(
    stripe_fake: StripeFake, status: int, error: type[GatewayError]
) -> None:
    stripe_fake.fail_next(status)
    async with stripe_gateway(stripe_fake) as gateway:
        with pytest.raises(error):
            await gateway.authorize(_request("pi_e:1"))
        assert stripe_fake.intent_count == 0
        assert (await gateway.authorize(_request("pi_e:1"))).status is ChargeStatus.AUTHORIZED


async def test_unreachable_stripe_is_unavailable() -> None:
    gateway = StripeGateway(
        API_KEY, webhook_secret=WEBHOOK_SECRET, api_base=f"http://127.0.0.1:{free_port()}"
    )
    try:
        with pytest.raises(GatewayUnavailable):
            await gateway.authorize(_request("pi_down:1"))
    finally:
        await gateway.aclose()


async def test_bad_api_key_is_rejected(stripe_fake: StripeFake) -> None:
    gateway = StripeGateway(
        "sk_test_wrong", webhook_secret=WEBHOOK_SECRET, api_base=stripe_fake.base_url
    )
    try:
        with pytest.raises(GatewayRejected) as refused:
            await gateway.authorize(_request("pi_auth:1"))
        assert not refused.value.retryable
    finally:
        await gateway.aclose()


async def test_reused_key_with_other_parameters_is_idempotency_key_reuse(
    stripe_fake: StripeFake,
) -> None:
    async with stripe_gateway(stripe_fake) as gateway:
        await gateway.authorize(_request("pi_reuse:1"))
        with pytest.raises(GatewayRejected) as refused:
            await gateway.authorize(_request("pi_reuse:1", capture=True))
    assert refused.value.code == "idempotency_key_reuse"


def test_http_409_and_5xx_map_to_unavailable_and_4xx_to_rejected() -> None:
    conflict = stripe.APIError("in use", http_status=409)
    assert isinstance(map_error(conflict), GatewayUnavailable)
    invalid = stripe.InvalidRequestError("bad", param="amount", code="parameter_invalid")
    mapped = map_error(invalid)
    assert isinstance(mapped, GatewayRejected)
    assert mapped.code == "parameter_invalid"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ({"code": "card_declined", "decline_code": "generic_decline"}, "card_declined"),
        ({"code": "card_declined", "decline_code": "insufficient_funds"}, "insufficient_funds"),
        ({"code": "expired_card"}, "expired_card"),
        ({"code": "incorrect_cvc"}, "incorrect_cvc"),
        ({"code": "processing_error"}, "processing_error"),
        ({"code": "authentication_required"}, "authentication_required"),
        ({"code": "payment_intent_authentication_failure"}, "authentication_required"),
        ({"code": "card_declined", "decline_code": "fraudulent"}, "card_declined"),
    ],
)
def test_decline_codes(error: dict[str, str], expected: str) -> None:
    assert decline_codes(error)[0] == expected


@pytest.mark.parametrize(
    "source",
    [VaultToken("tok_123"), GatewayToken("tok_legacy"), GatewayToken("src_1")],
)
async def test_sources_stripe_cannot_take_are_rejected_before_any_call(
    stripe_fake: StripeFake, source: PaymentSource
) -> None:
    async with stripe_gateway(stripe_fake) as gateway:
        with pytest.raises(GatewayRejected, match=r"vault|PaymentMethod"):
            await gateway.authorize(_request("pi_src:1", source))
    assert stripe_fake.state.requests == []


async def test_escrow_is_refused_stripe_has_none(stripe_fake: StripeFake) -> None:
    async with stripe_gateway(stripe_fake) as gateway:
        with pytest.raises(GatewayRejected) as refused:
            await gateway.authorize(_request("pi_escrow:1", hold_in_escrow=True))
        assert refused.value.code == "escrow_unsupported"
        with pytest.raises(GatewayRejected):
            await gateway.release_from_escrow("pi_escrow:1")


async def test_keys_with_unsafe_characters_are_refused(stripe_fake: StripeFake) -> None:
    async with stripe_gateway(stripe_fake) as gateway:
        with pytest.raises(GatewayRejected) as refused:
            await gateway.retrieve_by_idempotency_key("x' OR metadata['a']:'b")
    assert refused.value.code == "invalid_key"


async def test_raw_card_data_is_forwarded_as_payment_method_data(stripe_fake: StripeFake) -> None:
    card = CardData("4242424242424242", 12, 2034, cvc="123", name="A Bidder")
    async with stripe_gateway(stripe_fake) as gateway:
        charge = await gateway.authorize(_request("pi_card:1", card, description="lot 7"))
    assert charge.card is not None
    assert charge.card.last4 == "4242"
    intent = stripe_fake.intent(charge.charge_id)
    assert intent["description"] == "lot 7"
    assert intent["metadata"] == {METADATA_KEY: "pi_card:1"}


# ---------------------------------------------------------------------- webhooks

NOW_S = 1_767_225_600


def _event_body(intent_id: str = "pi_123", key: str = "pi_int:1") -> bytes:
    return orjson.dumps(
        {
            "id": "evt_1",
            "type": "payment_intent.succeeded",
            "created": NOW_S - 3,
            "data": {
                "object": {
                    "id": intent_id,
                    "object": "payment_intent",
                    "metadata": {METADATA_KEY: key},
                }
            },
        }
    )


def _webhook_gateway(now_s: float = NOW_S) -> StripeGateway:
    return StripeGateway(API_KEY, webhook_secret=WEBHOOK_SECRET, now_s=lambda: now_s)


def test_webhook_with_a_valid_signature_is_parsed() -> None:
    body = _event_body()
    headers = {"Stripe-Signature": sign_header(WEBHOOK_SECRET, NOW_S - 10, body)}
    event = _webhook_gateway().parse_webhook(headers, body)
    assert (event.gateway, event.event_id, event.type) == (
        "stripe",
        "evt_1",
        "payment_intent.succeeded",
    )
    assert (event.gateway_key, event.charge_id, event.created_s) == (
        "pi_int:1",
        "pi_123",
        NOW_S - 3,
    )


def test_webhook_signed_during_secret_rotation_is_accepted() -> None:
    body = _event_body()
    good = sign_header(WEBHOOK_SECRET, NOW_S, body).split(",")[1]
    old = sign_header("whsec_old", NOW_S, body).split(",")[1]
    headers = {"stripe-signature": f"t={NOW_S},{old},{good}"}
    assert _webhook_gateway().parse_webhook(headers, body).event_id == "evt_1"


def test_tampered_webhook_is_rejected() -> None:
    body = _event_body()
    headers = {"Stripe-Signature": sign_header(WEBHOOK_SECRET, NOW_S, body)}
    with pytest.raises(InvalidSignature) as refused:
        _webhook_gateway().parse_webhook(headers, _event_body(intent_id="pi_other"))
    assert refused.value.reason == "mismatch"


def test_webhook_signed_with_another_secret_is_rejected() -> None:
    body = _event_body()
    headers = {"Stripe-Signature": sign_header("whsec_attacker", NOW_S, body)}
    with pytest.raises(InvalidSignature):
        _webhook_gateway().parse_webhook(headers, body)


@pytest.mark.parametrize("age_s", [301, -301, 86_400])
def test_stale_webhook_is_rejected(age_s: int) -> None:
    body = _event_body()
    headers = {"Stripe-Signature": sign_header(WEBHOOK_SECRET, NOW_S - age_s, body)}
    with pytest.raises(InvalidSignature) as refused:
        _webhook_gateway().parse_webhook(headers, body)
    assert refused.value.reason == "stale"


def test_replayed_webhook_keeps_its_event_id_and_dies_after_the_tolerance() -> None:
    body = _event_body()
    headers = {"Stripe-Signature": sign_header(WEBHOOK_SECRET, NOW_S, body)}
    first = _webhook_gateway(NOW_S).parse_webhook(headers, body)
    replay = _webhook_gateway(NOW_S + 200).parse_webhook(headers, body)
    assert replay.event_id == first.event_id  # the receiver's dedupe by event id drops it
    with pytest.raises(InvalidSignature):
        _webhook_gateway(NOW_S + 301).parse_webhook(headers, body)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({}, b"{}"),
        ({"Stripe-Signature": "garbage"}, b"{}"),
        ({"Stripe-Signature": f"t={NOW_S}"}, b"{}"),
    ],
)
def test_malformed_webhook_is_rejected(headers: dict[str, str], body: bytes) -> None:
    with pytest.raises(GatewayRejected):
        _webhook_gateway().parse_webhook(headers, body)


def test_signed_garbage_is_rejected_as_payload() -> None:
    body = b"not json"
    headers = {"Stripe-Signature": sign_header(WEBHOOK_SECRET, NOW_S, body)}
    with pytest.raises(GatewayRejected) as refused:
        _webhook_gateway().parse_webhook(headers, body)
    assert refused.value.code == "invalid_payload"


async def test_built_from_settings_without_leaking_secrets(stripe_fake: StripeFake) -> None:
    settings = Settings(
        stripe_api_key=API_KEY,  # type: ignore[arg-type]
        stripe_webhook_secret=WEBHOOK_SECRET,  # type: ignore[arg-type]
        stripe_api_base=stripe_fake.base_url,
        stripe_timeout_s=3,
    )
    gateway = ResilientGateway.from_settings(StripeGateway.from_settings(settings), settings)
    try:
        assert API_KEY not in repr(gateway.inner)
        charge = await gateway.authorize(_request("pi_settings:1"))
        assert charge.status is ChargeStatus.AUTHORIZED
    finally:
        await gateway.aclose()
    with pytest.raises(ValueError, match="STRIPE"):
        StripeGateway.from_settings(Settings())


async def test_a_pending_refund_is_looked_up_never_made_twice(stripe_fake: StripeFake) -> None:
    """Stripe replays a key's *first* answer ("pending") for 24 h, then forgets the key: asking
    again must find the refund's current state, and never create a second refund."""
    stripe_fake.refund_status = "pending"
    async with stripe_gateway(stripe_fake) as gateway:
        await gateway.authorize(_request("pi_rf:1", capture=True))
        first = await gateway.refund("pi_rf:1", "re_rf.refund", 2_000)
        assert first.status == "pending"
        [stored] = stripe_fake.state.refunds.values()
        stored["status"] = "succeeded"  # the bank confirmed it
        assert (await gateway.refund("pi_rf:1", "re_rf.refund", 2_000)).status == "succeeded"
        stripe_fake.state.idempotency.clear()  # a day later: Stripe no longer knows the key
        again = await gateway.refund("pi_rf:1", "re_rf.refund", 2_000)
    assert again.status == "succeeded"
    assert again.refund_id == first.refund_id
    assert len(stripe_fake.state.refunds) == 1


async def test_a_partly_reversed_or_duplicated_transfer_is_never_shown_as_paid(
    stripe_fake: StripeFake,
) -> None:
    """Stripe keeps ``reversed`` false until a transfer is reversed whole: a partial reversal
    shows in ``amount_reversed``. Either, or two transfers under one key, is not "paid": the
    escrow's exact match fails and an operator looks."""
    async with stripe_gateway(stripe_fake) as gateway:
        request = PayoutRequest("ord_1.payout", 9_000, "USD", "acct_seller_1")
        made = await gateway.payout(request)
        assert (await gateway.find_payout("ord_1.payout")) == made
        stripe_fake.state.transfers[made.payout_id]["amount_reversed"] = 8_999
        shown = await gateway.find_payout("ord_1.payout")
        assert shown is not None
        assert shown.status == "partly_reversed"
        stripe_fake.state.transfers[made.payout_id]["reversed"] = True
        stripe_fake.state.transfers[made.payout_id]["amount_reversed"] = 9_000
        shown = await gateway.find_payout("ord_1.payout")
        assert shown is not None
        assert shown.status == "reversed"
        other = await gateway.payout(PayoutRequest("ord_2.payout", 500, "USD", "acct_seller_1"))
        copy = dict(stripe_fake.state.transfers[other.payout_id], id="tr_copy")
        stripe_fake.state.transfers["tr_copy"] = copy  # made again after Stripe forgot the key
        shown = await gateway.find_payout("ord_2.payout")
        assert shown is not None
        assert shown.status == "duplicate"

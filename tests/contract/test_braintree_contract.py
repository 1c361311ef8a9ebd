"""The gateway contract, run against the Braintree adapter and the local Braintree fake (real SDK).

Two documented differences, each overridden here with what Braintree does instead:

* 3-D Secure happens in the browser with Braintree's client SDK *before* the sale (the nonce
  carries the authentication); the server API has no challenge redirect, so no charge is ever
  ``requires_action``. A sale that needs 3-D Secure and has none is gateway-rejected
  (``three_d_secure``): a ``DECLINED`` charge with ``authentication_required``.
* Braintree has no payout call: a Marketplace sub-merchant is paid by Braintree itself after
  ``release_from_escrow``, so ``payout`` is refused with ``payout_unsupported``.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlencode

import braintree
import pytest

from hammerlock.money import InvalidAmount
from hammerlock.payments.gateways.base import (
    AuthorizeRequest,
    CardData,
    Charge,
    ChargeStatus,
    DeclineCode,
    GatewayError,
    GatewayRejected,
    GatewayTimeout,
    GatewayToken,
    GatewayUnavailable,
    PaymentSource,
    PayoutRequest,
)
from hammerlock.payments.gateways.braintree import (
    BraintreeGateway,
    custom_environment,
    from_amount,
    to_amount,
)
from hammerlock.payments.gateways.resilience import ResilientGateway
from hammerlock.settings import Settings
from tests.contract.gateway_contract import GatewayContract, GatewayHarness, Scenario
from tests.fakes.braintree_fake import (
    MERCHANT_ID,
    PRIVATE_KEY,
    PUBLIC_KEY,
    SUB_MERCHANT_ID,
    BraintreeFake,
)
from tests.servers import free_port

CARDS = {
    Scenario.SUCCESS: "4111111111111111",
    Scenario.DECLINE: "4000000000000002",
    Scenario.INSUFFICIENT_FUNDS: "4000000000009995",
    Scenario.THREE_D_SECURE: "4000002760003184",
    Scenario.PROCESSING_ERROR: "4000000000000119",
}
UNANSWERED_DELAY_S = 3.0
CLIENT_TIMEOUT_S = 1.0  # long enough for any other call on a loaded machine
RECORDED_TIMEOUT_S = 5.0


def braintree_gateway(fake: BraintreeFake, *, timeout_s: float = 5.0) -> BraintreeGateway:
    return BraintreeGateway(
        MERCHANT_ID, PUBLIC_KEY, PRIVATE_KEY, host=fake.host, timeout_s=timeout_s
    )


class BraintreeHarness:
    payout_destination = "seller_sub_merchant"

    def __init__(self, fake: BraintreeFake, gateway: BraintreeGateway, *, nonces: bool) -> None:
        self.fake = fake
        self.gateway = gateway
        self._nonces = nonces

    def source(self, scenario: Scenario) -> PaymentSource:
        if self._nonces and scenario is Scenario.SUCCESS:
            return GatewayToken("fake-valid-nonce")
        return CardData(number=CARDS[scenario], exp_month=12, exp_year=2034, cvc="123")

    async def complete_challenge(self, charge: Charge, *, passed: bool) -> None:
        pytest.fail(f"Braintree never asks for a challenge ({charge.charge_id}, {passed})")

    async def authorize_unanswered(self, request: AuthorizeRequest) -> None:
        self.fake.delay_next(UNANSWERED_DELAY_S, "create")
        short = braintree_gateway(self.fake, timeout_s=CLIENT_TIMEOUT_S)
        with pytest.raises(GatewayTimeout):
            await short.authorize(request)
        deadline = time.monotonic() + RECORDED_TIMEOUT_S
        while await self.charges_under(request.gateway_key) == 0:
            assert time.monotonic() < deadline, "the fake never recorded the charge"
            await asyncio.sleep(0.02)

    async def charges_under(self, gateway_key: str) -> int:
        return len(self.fake.transactions_for(gateway_key))


@pytest.fixture
def braintree_fake() -> Iterator[BraintreeFake]:
    fake = BraintreeFake().start()
    try:
        yield fake
    finally:
        fake.stop()


class _BraintreeDifferences(GatewayContract):
    async def _declined_for_three_d_secure(self, harness: GatewayHarness, capture: bool) -> Charge:
        request = self.request(harness, Scenario.THREE_D_SECURE, capture=capture)
        charge = await harness.gateway.authorize(request)
        assert charge.status is ChargeStatus.DECLINED
        assert charge.error_code == DeclineCode.AUTHENTICATION_REQUIRED
        assert charge.decline_code == "three_d_secure"
        assert charge.next_action_url is None
        assert charge.amount_captured == 0
        return charge

    @pytest.mark.parametrize("capture", [False, True])
    async def test_three_d_secure_pass(self, harness: GatewayHarness, capture: bool) -> None:
        await self._declined_for_three_d_secure(harness, capture)

    async def test_three_d_secure_fail_declines(self, harness: GatewayHarness) -> None:
        charge = await self._declined_for_three_d_secure(harness, True)
        again = await harness.gateway.retrieve_by_idempotency_key(charge.gateway_key)
        assert again == charge

    async def test_challenged_charge_can_be_voided(self, harness: GatewayHarness) -> None:
        charge = await self._declined_for_three_d_secure(harness, False)
        voided = await harness.gateway.void(charge.gateway_key)  # nothing held: nothing to do
        assert voided.status is ChargeStatus.DECLINED

    async def test_payout_is_idempotent(self, harness: GatewayHarness) -> None:
        request = PayoutRequest("po_contract", 2_500, self.currency, harness.payout_destination)
        with pytest.raises(GatewayRejected) as refused:
            await harness.gateway.payout(request)
        assert refused.value.code == "payout_unsupported"

    async def test_a_payout_is_found_by_its_key(self, harness: GatewayHarness) -> None:
        assert await harness.gateway.find_payout("po_contract") is None  # never any payout


class TestBraintreeContract(_BraintreeDifferences):
    """Raw cards forwarded from inside the vault (``credit_card``)."""

    @pytest.fixture
    def harness(self, braintree_fake: BraintreeFake) -> GatewayHarness:
        return BraintreeHarness(braintree_fake, braintree_gateway(braintree_fake), nonces=False)


class TestBraintreeNonceContract(_BraintreeDifferences):
    """The merchant's client-side nonces (``payment_method_nonce``) for successful charges."""

    @pytest.fixture
    def harness(self, braintree_fake: BraintreeFake) -> GatewayHarness:
        return BraintreeHarness(braintree_fake, braintree_gateway(braintree_fake), nonces=True)


# ---------------------------------------------------------------------- adapter-specific tests


def _request(key: str, source: PaymentSource | None = None, **extra: object) -> AuthorizeRequest:
    return AuthorizeRequest(
        gateway_key=key,
        amount=5_000,
        currency="USD",
        source=source or GatewayToken("fake-valid-nonce"),
        **extra,  # type: ignore[arg-type]
    )


class _NoWait:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def _live(fake: BraintreeFake, key: str) -> list[str]:
    return [t["id"] for t in fake.sales_for(key) if t["status"] != "voided"]


async def test_timeout_then_retry_makes_exactly_one_charge(braintree_fake: BraintreeFake) -> None:
    braintree_fake.delay_next(UNANSWERED_DELAY_S, "create")
    sleep = _NoWait()
    gateway = ResilientGateway(
        braintree_gateway(braintree_fake, timeout_s=CLIENT_TIMEOUT_S),
        retries=3,
        base_delay_s=0.01,
        sleep=sleep,
    )
    charge = await gateway.authorize(_request("pi_t:1", capture=True))
    assert charge.status is ChargeStatus.CAPTURED
    assert len(sleep.waits) == 1
    creates = [r for r in braintree_fake.state.requests if r[1].endswith("/transactions")]
    assert len(creates) == 1  # the retry looked first and found the first charge
    assert len(braintree_fake.transactions_for("pi_t:1")) == 1


async def test_two_processes_racing_on_one_key_make_one_live_charge(
    braintree_fake: BraintreeFake,
) -> None:
    """Both search (nothing yet), both create: Braintree's duplicate check rejects the second,
    which then answers with the first."""
    one, two = braintree_gateway(braintree_fake), braintree_gateway(braintree_fake)
    first, second = await asyncio.gather(
        one.authorize(_request("pi_race:1")), two.authorize(_request("pi_race:1"))
    )
    assert first.charge_id == second.charge_id
    assert len(_live(braintree_fake, "pi_race:1")) == 1


def _sale_behind_our_back(fake: BraintreeFake, order_id: str) -> str:
    """What a second process does when its search ran before the first sale existed."""
    sdk = braintree.BraintreeGateway(
        braintree.Configuration(custom_environment(fake.host), MERCHANT_ID, PUBLIC_KEY, PRIVATE_KEY)
    )
    sale = {"amount": "50.00", "order_id": order_id, "payment_method_nonce": "fake-valid-nonce"}
    result = sdk.transaction.sale(sale)
    assert result.is_success
    return str(result.transaction.id)


async def test_a_sale_rejected_as_duplicate_answers_with_the_first(
    braintree_fake: BraintreeFake,
) -> None:
    """The search ran before the first sale was visible; Braintree's duplicate check catches
    the second sale, and the adapter answers with the first."""
    first_id = await asyncio.to_thread(_sale_behind_our_back, braintree_fake, "pi_dupchk:1")
    braintree_fake.blind_searches = 1
    charge = await braintree_gateway(braintree_fake).authorize(_request("pi_dupchk:1"))
    assert charge.charge_id == first_id
    statuses = sorted(t["status"] for t in braintree_fake.transactions_for("pi_dupchk:1"))
    assert statuses == ["authorized", "gateway_rejected"]


async def test_a_duplicate_rejection_before_the_first_is_visible_is_a_timeout(
    braintree_fake: BraintreeFake,
) -> None:
    await asyncio.to_thread(_sale_behind_our_back, braintree_fake, "pi_dupchk:2")
    braintree_fake.blind_searches = 2  # still invisible when the adapter looks again
    with pytest.raises(GatewayTimeout):
        await braintree_gateway(braintree_fake).authorize(_request("pi_dupchk:2"))
    found = await braintree_gateway(braintree_fake).retrieve_by_idempotency_key("pi_dupchk:2")
    assert found is not None
    assert found.status is ChargeStatus.AUTHORIZED


async def test_a_duplicate_past_every_check_is_voided_when_found() -> None:
    fake = BraintreeFake(duplicate_window_s=0).start()  # duplicate checking turned off
    try:
        first = await braintree_gateway(fake).authorize(_request("pi_dup:1"))
        second_id = await asyncio.to_thread(_sale_behind_our_back, fake, "pi_dup:1")
        assert first.charge_id != second_id  # the residual race: two charges
        janitor = braintree_gateway(fake)  # what the janitor does for a stuck intent
        kept = await janitor.retrieve_by_idempotency_key("pi_dup:1")
        assert kept is not None
        assert kept.charge_id == first.charge_id  # the earliest
        assert _live(fake, "pi_dup:1") == [kept.charge_id]
        statuses = sorted(t["status"] for t in fake.transactions_for("pi_dup:1"))
        assert statuses == ["authorized", "voided"]
    finally:
        fake.stop()


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, GatewayUnavailable),
        (503, GatewayUnavailable),
        (429, GatewayUnavailable),
        (502, GatewayUnavailable),
        (504, GatewayTimeout),
    ],
)
async def test_server_errors_map_by_status(
    braintree_fake: BraintreeFake, status: int, error: type[GatewayError]
) -> None:
    braintree_fake.fail_next(status, "create")
    gateway = braintree_gateway(braintree_fake)
    with pytest.raises(error):
        await gateway.authorize(_request("pi_e:1"))
    assert (await gateway.authorize(_request("pi_e:1"))).status is ChargeStatus.AUTHORIZED
    assert len(braintree_fake.transactions_for("pi_e:1")) == 1


async def test_unreachable_braintree_is_unavailable() -> None:
    gateway = BraintreeGateway(
        MERCHANT_ID, PUBLIC_KEY, PRIVATE_KEY, host=f"http://127.0.0.1:{free_port()}"
    )
    with pytest.raises(GatewayUnavailable):
        await gateway.authorize(_request("pi_down:1"))


async def test_wrong_credentials_are_rejected(braintree_fake: BraintreeFake) -> None:
    gateway = BraintreeGateway(MERCHANT_ID, PUBLIC_KEY, "wrong", host=braintree_fake.host)
    with pytest.raises(GatewayRejected) as refused:
        await gateway.authorize(_request("pi_auth:1"))
    assert not refused.value.retryable


async def test_validation_errors_are_rejected(braintree_fake: BraintreeFake) -> None:
    gateway = braintree_gateway(braintree_fake)
    with pytest.raises(GatewayRejected, match="payment method"):
        await gateway.authorize(_request("pi_v:1", GatewayToken("fake-unknown-nonce")))


async def test_processor_declined_nonce(braintree_fake: BraintreeFake) -> None:
    gateway = braintree_gateway(braintree_fake)
    source = GatewayToken("fake-processor-declined-visa-nonce")
    charge = await gateway.authorize(_request("pi_nonce:1", source))
    assert charge.status is ChargeStatus.DECLINED
    assert (charge.error_code, charge.decline_code) == ("card_declined", "do_not_honor")


async def test_amounts_in_the_sandbox_decline_range(braintree_fake: BraintreeFake) -> None:
    gateway = braintree_gateway(braintree_fake)
    request = AuthorizeRequest("pi_amt:1", 200_100, "USD", GatewayToken("fake-valid-nonce"))
    charge = await gateway.authorize(request)  # 2001.00: processor response 2001
    assert (charge.status, charge.error_code) == (ChargeStatus.DECLINED, "insufficient_funds")


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [(5_000, "USD", "50.00"), (1, "USD", "0.01"), (500, "JPY", "500"), (1_250, "KWD", "1.250")],
)
def test_amounts_cross_as_exact_decimal_strings(minor: int, currency: str, text: str) -> None:
    assert to_amount(minor, currency) == text
    assert from_amount(Decimal(text), currency) == minor
    assert from_amount(text, currency) == minor


def test_sub_minor_amounts_are_refused_not_rounded() -> None:
    with pytest.raises(InvalidAmount):
        from_amount(Decimal("10.005"), "USD")


# ---------------------------------------------------------------------- Marketplace escrow

ESCROW_SOURCE = GatewayToken("fake-valid-nonce")


def _escrow_gateway(fake: BraintreeFake) -> BraintreeGateway:
    return BraintreeGateway(
        MERCHANT_ID,
        PUBLIC_KEY,
        PRIVATE_KEY,
        host=fake.host,
        merchant_account_id=SUB_MERCHANT_ID,
    )


async def test_escrow_hold_with_service_fee_then_release(braintree_fake: BraintreeFake) -> None:
    gateway = _escrow_gateway(braintree_fake)
    request = _request("pi_esc:1", capture=True, hold_in_escrow=True, service_fee_amount=1_250)
    charge = await gateway.authorize(request)
    assert charge.status is ChargeStatus.CAPTURED
    tx = braintree_fake.transaction(charge.charge_id)
    assert (tx["merchant_account_id"], tx["service_fee_amount"]) == (SUB_MERCHANT_ID, "12.50")
    assert tx["escrow_status"] == "held"
    released = await gateway.release_from_escrow("pi_esc:1")
    assert released.charge_id == charge.charge_id
    assert braintree_fake.transaction(charge.charge_id)["escrow_status"] == "release_pending"
    again = await gateway.release_from_escrow("pi_esc:1")  # idempotent
    assert again.charge_id == charge.charge_id


async def test_escrow_hold_on_an_authorization_is_held_once_captured_and_settled(
    braintree_fake: BraintreeFake,
) -> None:
    gateway = _escrow_gateway(braintree_fake)
    charge = await gateway.authorize(
        _request("pi_esc:2", hold_in_escrow=True, service_fee_amount=0)
    )
    assert braintree_fake.transaction(charge.charge_id)["escrow_status"] == "hold_pending"
    with pytest.raises(GatewayRejected) as refused:
        await gateway.release_from_escrow("pi_esc:2")
    assert refused.value.code == "escrow_not_held"
    await gateway.capture("pi_esc:2", 5_000)
    assert braintree_fake.transaction(charge.charge_id)["escrow_status"] == "held"
    await gateway.release_from_escrow("pi_esc:2")


async def test_release_of_a_charge_not_in_escrow_is_rejected(
    braintree_fake: BraintreeFake,
) -> None:
    gateway = braintree_gateway(braintree_fake)
    await gateway.authorize(_request("pi_esc:3", capture=True))
    with pytest.raises(GatewayRejected):
        await gateway.release_from_escrow("pi_esc:3")


async def test_service_fee_needs_a_sub_merchant_account(braintree_fake: BraintreeFake) -> None:
    gateway = braintree_gateway(braintree_fake)  # master account
    with pytest.raises(GatewayRejected, match="master merchant"):
        await gateway.authorize(_request("pi_esc:4", capture=True, service_fee_amount=100))


async def test_service_fee_above_the_amount_is_rejected(braintree_fake: BraintreeFake) -> None:
    gateway = _escrow_gateway(braintree_fake)
    with pytest.raises(GatewayRejected):
        await gateway.authorize(_request("pi_esc:5", capture=True, service_fee_amount=5_001))


# ---------------------------------------------------------------------- refunds before settlement


async def test_full_refund_before_settlement_voids_the_sale() -> None:
    fake = BraintreeFake(settle_immediately=False).start()
    try:
        gateway = braintree_gateway(fake)
        charge = await gateway.authorize(_request("pi_rf:1", capture=True))
        refund = await gateway.refund("pi_rf:1", "rf_1", 5_000)
        assert (refund.status, refund.amount) == ("succeeded", 5_000)
        assert fake.transaction(charge.charge_id)["status"] == "voided"
        await gateway.authorize(_request("pi_rf:2", capture=True))
        with pytest.raises(GatewayRejected):  # a part of an unsettled sale cannot be refunded
            await gateway.refund("pi_rf:2", "rf_2", 1_000)
        await gateway.authorize(_request("pi_rf:3"))
        with pytest.raises(GatewayRejected):  # nor can an authorization be "refunded" by a void
            await gateway.refund("pi_rf:3", "rf_3", 5_000)
        assert fake.sales_for("pi_rf:3")[0]["status"] == "authorized"
    finally:
        fake.stop()


# ---------------------------------------------------------------------- webhooks


def _form(fields: dict[str, str]) -> bytes:
    return urlencode(fields).encode()


async def test_webhook_about_a_transaction_is_parsed(braintree_fake: BraintreeFake) -> None:
    gateway = braintree_gateway(braintree_fake)
    charge = await gateway.authorize(_request("pi_wh:1", capture=True))
    at = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    body = _form(braintree_fake.notification("transaction_settled", charge.charge_id, at))
    event = gateway.parse_webhook({"content-type": "application/x-www-form-urlencoded"}, body)
    assert (event.gateway, event.type) == ("braintree", "transaction_settled")
    assert (event.gateway_key, event.charge_id) == ("pi_wh:1", charge.charge_id)
    assert event.created_s == int(at.timestamp())
    assert event.event_id.startswith("bt_")


def test_sdk_sample_webhook_is_accepted(braintree_fake: BraintreeFake) -> None:
    gateway = braintree_gateway(braintree_fake)
    sample = braintree.BraintreeGateway(
        braintree.Configuration(braintree.Environment.Sandbox, MERCHANT_ID, PUBLIC_KEY, PRIVATE_KEY)
    ).webhook_testing.sample_notification("transaction_disbursed", "tx_sample")
    body = _form({k: v.decode() if isinstance(v, bytes) else v for k, v in sample.items()})
    event = gateway.parse_webhook({}, body)
    assert (event.type, event.charge_id) == ("transaction_disbursed", "tx_sample")


async def test_tampered_webhook_is_rejected(braintree_fake: BraintreeFake) -> None:
    gateway = braintree_gateway(braintree_fake)
    charge = await gateway.authorize(_request("pi_wh:2"))
    fields = braintree_fake.notification("transaction_settled", charge.charge_id, datetime.now(UTC))
    original = base64.b64decode(fields["bt_payload"])
    payload = original.replace(b"50.00", b"90.00")
    assert payload != original
    tampered = {**fields, "bt_payload": base64.encodebytes(payload).decode()}
    with pytest.raises(GatewayRejected) as refused:
        gateway.parse_webhook({}, _form(tampered))
    assert refused.value.code == "invalid_signature"


def test_webhook_signed_with_another_key_is_rejected(braintree_fake: BraintreeFake) -> None:
    gateway = BraintreeGateway(MERCHANT_ID, PUBLIC_KEY, "another", host=braintree_fake.host)
    payload = base64.encodebytes(b"<notification><kind>check</kind></notification>")
    body = _form({"bt_signature": braintree_fake.sign(payload), "bt_payload": payload.decode()})
    with pytest.raises(GatewayRejected):
        gateway.parse_webhook({}, body)


async def test_replayed_webhook_has_the_same_event_id(braintree_fake: BraintreeFake) -> None:
    """No timestamp is signed, so a replay verifies: the receiver's dedupe by event id (and
    re-fetching the transaction before acting) is what makes it harmless."""
    gateway = braintree_gateway(braintree_fake)
    charge = await gateway.authorize(_request("pi_wh:3"))
    at = datetime(2026, 1, 1, tzinfo=UTC)  # old: still verifies
    body = _form(braintree_fake.notification("transaction_settled", charge.charge_id, at))
    assert gateway.parse_webhook({}, body).event_id == gateway.parse_webhook({}, body).event_id
    other = _form(braintree_fake.notification("transaction_disbursed", charge.charge_id, at))
    assert gateway.parse_webhook({}, other).event_id != gateway.parse_webhook({}, body).event_id


@pytest.mark.parametrize(
    "body",
    [b"", b"bt_signature=x", b"bt_payload=eA==", b"bt_signature=a%7Cb&bt_payload=%%%"],
)
def test_malformed_webhook_is_rejected(braintree_fake: BraintreeFake, body: bytes) -> None:
    with pytest.raises(GatewayRejected):
        braintree_gateway(braintree_fake).parse_webhook({}, body)


async def test_a_currency_the_merchant_account_does_not_settle_in_is_refused(
    braintree_fake: BraintreeFake,
) -> None:
    gateway = braintree_gateway(braintree_fake)  # a USD account
    request = AuthorizeRequest("pi_eur:1", 5_000, "EUR", GatewayToken("fake-valid-nonce"))
    with pytest.raises(GatewayRejected) as refused:
        await gateway.authorize(request)
    assert refused.value.code == "currency_unsupported"
    assert braintree_fake.state.requests == []


async def test_a_misconfigured_account_currency_voids_the_sale(
    braintree_fake: BraintreeFake,
) -> None:
    gateway = BraintreeGateway(
        MERCHANT_ID, PUBLIC_KEY, PRIVATE_KEY, host=braintree_fake.host, currency="EUR"
    )
    request = AuthorizeRequest("pi_eur:2", 5_000, "EUR", GatewayToken("fake-valid-nonce"))
    with pytest.raises(GatewayRejected) as refused:
        await gateway.authorize(request)
    assert refused.value.code == "currency_mismatch"
    assert [t["status"] for t in braintree_fake.transactions_for("pi_eur:2")] == ["voided"]


async def test_a_full_refund_made_by_voiding_replays(braintree_fake: BraintreeFake) -> None:
    braintree_fake.settle_immediately = False
    gateway = braintree_gateway(braintree_fake)
    await gateway.authorize(_request("pi_rv:1", capture=True))
    first = await gateway.refund("pi_rv:1", "rf_rv", 5_000)
    again = await braintree_gateway(braintree_fake).refund("pi_rv:1", "rf_rv", 5_000)
    assert again == first


async def test_an_unreversible_duplicate_is_reported_not_ignored() -> None:
    fake = BraintreeFake(duplicate_window_s=0).start()
    try:
        await braintree_gateway(fake).authorize(_request("pi_stuck:1"))
        await asyncio.to_thread(_sale_behind_our_back, fake, "pi_stuck:1")
        fake.fail_next(422, "void")  # Braintree answers the void with an unexpected status
        with pytest.raises(GatewayError):
            await braintree_gateway(fake).retrieve_by_idempotency_key("pi_stuck:1")
        kept = await braintree_gateway(fake).retrieve_by_idempotency_key("pi_stuck:1")
        assert kept is not None
        assert len(_live(fake, "pi_stuck:1")) == 1
    finally:
        fake.stop()


def test_built_from_settings_without_leaking_the_private_key(
    braintree_fake: BraintreeFake,
) -> None:
    settings = Settings(
        braintree_merchant_id=MERCHANT_ID,
        braintree_public_key=PUBLIC_KEY,
        braintree_private_key=PRIVATE_KEY,  # type: ignore[arg-type]
        braintree_host=braintree_fake.host,
        braintree_merchant_account_id=SUB_MERCHANT_ID,
    )
    gateway = BraintreeGateway.from_settings(settings, timeout_s=3)
    assert PRIVATE_KEY not in repr(gateway)
    assert PRIVATE_KEY not in repr(settings)
    with pytest.raises(ValueError, match="BRAINTREE"):
        BraintreeGateway.from_settings(Settings())


async def test_built_from_settings_it_works(braintree_fake: BraintreeFake) -> None:
    settings = Settings(
        braintree_merchant_id=MERCHANT_ID,
        braintree_public_key=PUBLIC_KEY,
        braintree_private_key=PRIVATE_KEY,  # type: ignore[arg-type]
        braintree_host=braintree_fake.host,
        gateway_retries=1,
    )
    gateway = ResilientGateway.from_settings(BraintreeGateway.from_settings(settings), settings)
    charge = await gateway.authorize(_request("pi_settings:1"))
    assert charge.status is ChargeStatus.AUTHORIZED
    await gateway.aclose()

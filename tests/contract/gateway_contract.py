"""The gateway contract: what every :class:`~hammerlock.payments.gateways.base.Gateway` must do.

Use it by subclassing :class:`GatewayContract` in a ``test_<gateway>_contract.py`` module and
giving the subclass a ``harness`` fixture that yields a :class:`GatewayHarness`::

    class TestStripeContract(GatewayContract):
        @pytest.fixture
        async def harness(self, tmp_path: Path) -> AsyncIterator[GatewayHarness]:
            ...  # start the local fake, build the adapter pointed at it
            yield StripeHarness(...)

The harness knows the gateway's test payment sources (one per :class:`Scenario`), how a
cardholder completes a 3-D Secure challenge there, how to make the gateway record a charge
whose answer never reaches the caller (a crash or a timeout after the charge), and how many
charges the gateway holds under one idempotency key (from its own records or its fake).

Keys are fresh per test (``uuid4``), so a harness may share state between tests.
"""

from __future__ import annotations

import asyncio
import enum
import uuid
from typing import Protocol

import httpx
import pytest

from hammerlock.payments.gateways.base import (
    AuthorizeRequest,
    Charge,
    ChargeStatus,
    DeclineCode,
    Gateway,
    GatewayRejected,
    PaymentSource,
    PayoutRequest,
)

__all__ = ["GatewayContract", "GatewayHarness", "Scenario"]


class Scenario(enum.StrEnum):
    SUCCESS = "success"
    DECLINE = "decline"  # card_declined / generic_decline
    INSUFFICIENT_FUNDS = "insufficient_funds"
    THREE_D_SECURE = "three_d_secure"  # the bank asks for a challenge
    PROCESSING_ERROR = "processing_error"


class GatewayHarness(Protocol):
    # Read-only members, so a harness may declare its adapter's own class.
    @property
    def gateway(self) -> Gateway: ...

    @property
    def payout_destination(self) -> str:
        """A destination the gateway accepts for payouts."""
        ...

    def source(self, scenario: Scenario) -> PaymentSource:
        """A payment source that makes the gateway behave as ``scenario`` says."""
        ...

    async def complete_challenge(self, charge: Charge, *, passed: bool) -> None:
        """Do what the cardholder does on the challenge page (``charge.next_action_url``)."""
        ...

    async def authorize_unanswered(self, request: AuthorizeRequest) -> None:
        """Send ``request`` so that the gateway records the charge but the caller never gets
        the answer (its process crashed or its timeout fired). Returns once it is recorded."""
        ...

    async def charges_under(self, gateway_key: str) -> int:
        """How many charges the gateway holds for ``gateway_key`` (its own records)."""
        ...


def _key(label: str) -> str:
    return f"pi_contract_{uuid.uuid4().hex}_{label}"


class GatewayContract:
    """The suite. Subclasses provide the ``harness`` fixture; nothing else."""

    currency = "USD"

    def request(
        self, harness: GatewayHarness, scenario: Scenario, amount: int = 5_000, **extra: object
    ) -> AuthorizeRequest:
        return AuthorizeRequest(
            gateway_key=_key(scenario.value),
            amount=amount,
            currency=self.currency,
            source=harness.source(scenario),
            return_url="https://shop.example/return?order=ord_1",
            **extra,  # type: ignore[arg-type]
        )

    # ------------------------------------------------------------------ outcomes

    async def test_success_authorizes_without_capture(self, harness: GatewayHarness) -> None:
        request = self.request(harness, Scenario.SUCCESS)
        charge = await harness.gateway.authorize(request)
        assert charge.status is ChargeStatus.AUTHORIZED
        assert (charge.gateway_key, charge.amount, charge.currency) == (
            request.gateway_key,
            5_000,
            self.currency,
        )
        assert charge.amount_captured == 0
        assert charge.charge_id
        assert charge.gateway == harness.gateway.name
        assert charge.error_code is None

    async def test_success_with_capture_is_captured(self, harness: GatewayHarness) -> None:
        charge = await harness.gateway.authorize(
            self.request(harness, Scenario.SUCCESS, capture=True)
        )
        assert charge.status is ChargeStatus.CAPTURED
        assert charge.amount_captured == 5_000

    @pytest.mark.parametrize(
        ("scenario", "error_code"),
        [
            (Scenario.DECLINE, DeclineCode.CARD_DECLINED),
            (Scenario.INSUFFICIENT_FUNDS, DeclineCode.INSUFFICIENT_FUNDS),
            (Scenario.PROCESSING_ERROR, DeclineCode.PROCESSING_ERROR),
        ],
    )
    async def test_declines_come_back_as_charges(
        self, harness: GatewayHarness, scenario: Scenario, error_code: str
    ) -> None:
        request = self.request(harness, scenario, capture=True)
        charge = await harness.gateway.authorize(request)
        assert charge.status is ChargeStatus.DECLINED
        assert charge.error_code == error_code
        assert charge.message
        assert charge.amount_captured == 0
        if scenario is Scenario.DECLINE:
            assert charge.decline_code == "generic_decline"
        # A decline is an answer too: the same key answers the same decline, no second charge.
        again = await harness.gateway.authorize(request)
        assert again.charge_id == charge.charge_id
        assert again.status is ChargeStatus.DECLINED
        assert await harness.charges_under(request.gateway_key) == 1

    # ------------------------------------------------------------------ 3-D Secure

    async def _challenged(self, harness: GatewayHarness, *, capture: bool) -> Charge:
        request = self.request(harness, Scenario.THREE_D_SECURE, capture=capture)
        charge = await harness.gateway.authorize(request)
        assert charge.status is ChargeStatus.REQUIRES_ACTION
        assert charge.next_action_url is not None
        url = httpx.URL(charge.next_action_url)
        assert url.scheme in ("http", "https")
        assert url.host
        assert charge.amount_captured == 0
        return charge

    @pytest.mark.parametrize("capture", [False, True])
    async def test_three_d_secure_pass(self, harness: GatewayHarness, capture: bool) -> None:
        charge = await self._challenged(harness, capture=capture)
        await harness.complete_challenge(charge, passed=True)
        after = await harness.gateway.retrieve_by_idempotency_key(charge.gateway_key)
        assert after is not None
        assert after.charge_id == charge.charge_id
        if capture:
            assert after.status is ChargeStatus.CAPTURED
            assert after.amount_captured == charge.amount
        else:
            assert after.status is ChargeStatus.AUTHORIZED
        assert after.next_action_url is None

    async def test_a_payout_is_found_by_its_key(self, harness: GatewayHarness) -> None:
        key = _key("payout-found")
        assert await harness.gateway.find_payout(key) is None  # nothing made under it yet
        made = await harness.gateway.payout(
            PayoutRequest(
                payout_key=key,
                amount=2_500,
                currency=self.currency,
                destination=harness.payout_destination,
            )
        )
        found = await harness.gateway.find_payout(key)
        assert found == made
        assert (found.amount, found.currency, found.status) == (2_500, self.currency, "paid")

    async def test_three_d_secure_fail_declines(self, harness: GatewayHarness) -> None:
        charge = await self._challenged(harness, capture=True)
        await harness.complete_challenge(charge, passed=False)
        after = await harness.gateway.retrieve_by_idempotency_key(charge.gateway_key)
        assert after is not None
        assert after.status is ChargeStatus.DECLINED
        assert after.error_code == DeclineCode.AUTHENTICATION_REQUIRED
        assert after.amount_captured == 0

    async def test_challenged_charge_can_be_voided(self, harness: GatewayHarness) -> None:
        charge = await self._challenged(harness, capture=False)
        voided = await harness.gateway.void(charge.gateway_key)
        assert voided.status is ChargeStatus.VOIDED

    # ------------------------------------------------------------------ idempotency

    async def test_same_key_same_charge_exactly_one_record(self, harness: GatewayHarness) -> None:
        request = self.request(harness, Scenario.SUCCESS)
        first = await harness.gateway.authorize(request)
        second = await harness.gateway.authorize(request)
        assert second == first
        assert await harness.charges_under(request.gateway_key) == 1

    async def test_same_key_concurrently_one_charge(self, harness: GatewayHarness) -> None:
        request = self.request(harness, Scenario.SUCCESS, capture=True)
        charges = await asyncio.gather(*(harness.gateway.authorize(request) for _ in range(5)))
        assert len({c.charge_id for c in charges}) == 1
        assert await harness.charges_under(request.gateway_key) == 1

    async def test_same_key_different_amount_is_rejected(self, harness: GatewayHarness) -> None:
        request = self.request(harness, Scenario.SUCCESS)
        await harness.gateway.authorize(request)
        changed = AuthorizeRequest(
            gateway_key=request.gateway_key,
            amount=request.amount + 1,
            currency=request.currency,
            source=request.source,
        )
        with pytest.raises(GatewayRejected):
            await harness.gateway.authorize(changed)
        assert await harness.charges_under(request.gateway_key) == 1

    async def test_retrieve_unknown_key_is_none(self, harness: GatewayHarness) -> None:
        assert await harness.gateway.retrieve_by_idempotency_key(_key("never-sent")) is None

    async def test_recorded_but_unanswered_is_found_and_not_repeated(
        self, harness: GatewayHarness
    ) -> None:
        request = self.request(harness, Scenario.SUCCESS, capture=True)
        await harness.authorize_unanswered(request)
        found = await harness.gateway.retrieve_by_idempotency_key(request.gateway_key)
        assert found is not None
        assert found.status is ChargeStatus.CAPTURED
        # The caller's retry with the same key gets that charge, not a second one.
        retried = await harness.gateway.authorize(request)
        assert retried.charge_id == found.charge_id
        assert await harness.charges_under(request.gateway_key) == 1

    # ------------------------------------------------------------------ capture, void

    async def test_partial_capture(self, harness: GatewayHarness) -> None:
        request = self.request(harness, Scenario.SUCCESS, amount=10_000)
        await harness.gateway.authorize(request)
        captured = await harness.gateway.capture(request.gateway_key, 6_000)
        assert captured.status is ChargeStatus.CAPTURED
        assert (captured.amount, captured.amount_captured) == (10_000, 6_000)
        again = await harness.gateway.capture(request.gateway_key, 6_000)
        assert again.amount_captured == 6_000
        # The rest was released: it can neither be captured nor refunded.
        with pytest.raises(GatewayRejected):
            await harness.gateway.refund(request.gateway_key, _key("refund"), 6_001)

    async def test_capture_beyond_authorized_is_rejected(self, harness: GatewayHarness) -> None:
        request = self.request(harness, Scenario.SUCCESS, amount=1_000)
        await harness.gateway.authorize(request)
        with pytest.raises(GatewayRejected):
            await harness.gateway.capture(request.gateway_key, 1_001)
        still = await harness.gateway.retrieve_by_idempotency_key(request.gateway_key)
        assert still is not None
        assert still.status is ChargeStatus.AUTHORIZED

    async def test_void_releases_and_blocks_capture(self, harness: GatewayHarness) -> None:
        request = self.request(harness, Scenario.SUCCESS)
        await harness.gateway.authorize(request)
        voided = await harness.gateway.void(request.gateway_key)
        assert voided.status is ChargeStatus.VOIDED
        assert (await harness.gateway.void(request.gateway_key)).status is ChargeStatus.VOIDED
        with pytest.raises(GatewayRejected):
            await harness.gateway.capture(request.gateway_key, request.amount)

    async def test_capture_of_unknown_key_is_rejected(self, harness: GatewayHarness) -> None:
        with pytest.raises(GatewayRejected):
            await harness.gateway.capture(_key("unknown"), 100)

    # ------------------------------------------------------------------ refunds, payouts

    async def test_multiple_partial_refunds_never_beyond_captured(
        self, harness: GatewayHarness
    ) -> None:
        request = self.request(harness, Scenario.SUCCESS, amount=10_000, capture=True)
        await harness.gateway.authorize(request)
        key = request.gateway_key
        first_key = _key("refund-1")
        first = await harness.gateway.refund(key, first_key, 3_000)
        assert (first.amount, first.status, first.refund_key) == (3_000, "succeeded", first_key)
        replay = await harness.gateway.refund(key, first_key, 3_000)
        assert replay.refund_id == first.refund_id
        await harness.gateway.refund(key, _key("refund-2"), 3_000)
        with pytest.raises(GatewayRejected):
            await harness.gateway.refund(key, _key("refund-over"), 4_001)
        await harness.gateway.refund(key, _key("refund-3"), 4_000)
        with pytest.raises(GatewayRejected):
            await harness.gateway.refund(key, _key("refund-4"), 1)
        charge = await harness.gateway.retrieve_by_idempotency_key(key)
        assert charge is not None
        assert (charge.amount_captured, charge.amount_refunded) == (10_000, 10_000)

    async def test_refund_of_uncaptured_charge_is_rejected(self, harness: GatewayHarness) -> None:
        request = self.request(harness, Scenario.SUCCESS)
        await harness.gateway.authorize(request)
        with pytest.raises(GatewayRejected):
            await harness.gateway.refund(request.gateway_key, _key("refund"), 100)

    async def test_payout_is_idempotent(self, harness: GatewayHarness) -> None:
        request = PayoutRequest(
            payout_key=_key("payout"),
            amount=2_500,
            currency=self.currency,
            destination=harness.payout_destination,
        )
        first = await harness.gateway.payout(request)
        again = await harness.gateway.payout(request)
        assert again.payout_id == first.payout_id
        assert (first.amount, first.currency) == (2_500, self.currency)

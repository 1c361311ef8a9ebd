"""ResilientGateway: retries only what may be retried, with the same key; a breaker per gateway.

Time is injected: ``sleep`` records the waits instead of waiting, ``clock`` is a counter the
test moves, ``rng`` is seeded.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest

from hammerlock.payments.gateways.base import (
    AuthorizeRequest,
    Charge,
    ChargeStatus,
    Gateway,
    GatewayError,
    GatewayRejected,
    GatewayTimeout,
    GatewayToken,
    GatewayUnavailable,
    Payout,
    PayoutRequest,
    Refund,
    WebhookEvent,
)
from hammerlock.payments.gateways.resilience import BreakerState, ResilientGateway

REQUEST = AuthorizeRequest(
    gateway_key="pi_1:attempt:1", amount=5_000, currency="USD", source=GatewayToken("pm_card_visa")
)


def _charge(key: str, status: ChargeStatus = ChargeStatus.AUTHORIZED) -> Charge:
    return Charge("scripted", key, "ch_1", status, 5_000, "USD")


class ScriptedGateway:
    """Answers each call with the next scripted outcome: an exception to raise or a value."""

    name = "scripted"

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, object]] = []

    def _next(self, method: str, argument: object) -> object:
        self.calls.append((method, argument))
        outcome = self.outcomes.pop(0) if self.outcomes else _charge("default")
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def authorize(self, request: AuthorizeRequest) -> Charge:
        result = self._next("authorize", request)
        assert isinstance(result, Charge)
        return result

    async def capture(self, gateway_key: str, amount: int) -> Charge:
        result = self._next("capture", (gateway_key, amount))
        assert isinstance(result, Charge)
        return result

    async def void(self, gateway_key: str) -> Charge:
        result = self._next("void", gateway_key)
        assert isinstance(result, Charge)
        return result

    async def refund(self, gateway_key: str, refund_key: str, amount: int) -> Refund:
        result = self._next("refund", (gateway_key, refund_key, amount))
        assert isinstance(result, Refund)
        return result

    async def payout(self, request: PayoutRequest) -> Payout:
        result = self._next("payout", request)
        assert isinstance(result, Payout)
        return result

    async def retrieve_by_idempotency_key(self, gateway_key: str) -> Charge | None:
        result = self._next("retrieve", gateway_key)
        assert result is None or isinstance(result, Charge)
        return result

    async def release_from_escrow(self, gateway_key: str) -> Charge:
        result = self._next("release", gateway_key)
        assert isinstance(result, Charge)
        return result

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        self.calls.append(("parse_webhook", (headers, body)))
        return WebhookEvent("scripted", "evt_1", "charge.updated", None, None)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Sleeper:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def _resilient(
    inner: ScriptedGateway,
    *,
    retries: int = 3,
    threshold: int = 100,
    clock: Clock | None = None,
    sleeper: Sleeper | None = None,
) -> ResilientGateway:
    return ResilientGateway(
        inner,
        retries=retries,
        base_delay_s=0.1,
        max_delay_s=1.0,
        breaker_threshold=threshold,
        breaker_reset_s=30.0,
        sleep=sleeper or Sleeper(),
        rng=random.Random(7),
        clock=clock or Clock(),
    )


def test_is_a_gateway() -> None:
    assert isinstance(_resilient(ScriptedGateway()), Gateway)


async def test_timeouts_are_retried_with_the_same_request_until_an_answer() -> None:
    inner = ScriptedGateway(
        GatewayTimeout("t"), GatewayUnavailable("u"), _charge(REQUEST.gateway_key)
    )
    sleeper = Sleeper()
    charge = await _resilient(inner, sleeper=sleeper).authorize(REQUEST)
    assert charge.gateway_key == REQUEST.gateway_key
    assert [argument for _, argument in inner.calls] == [REQUEST, REQUEST, REQUEST]
    assert len(sleeper.waits) == 2


@pytest.mark.parametrize(
    "answer",
    [
        GatewayRejected("bad parameters"),
        GatewayRejected("reused", code="idempotency_key_reuse"),
    ],
)
async def test_a_refusal_is_never_retried(answer: GatewayError) -> None:
    inner = ScriptedGateway(answer, _charge("never"))
    with pytest.raises(GatewayRejected):
        await _resilient(inner).authorize(REQUEST)
    assert len(inner.calls) == 1


async def test_a_decline_is_an_answer_not_a_failure() -> None:
    declined = _charge(REQUEST.gateway_key, ChargeStatus.DECLINED)
    inner = ScriptedGateway(declined)
    gateway = _resilient(inner, threshold=1)
    assert await gateway.authorize(REQUEST) == declined
    assert len(inner.calls) == 1
    assert gateway.breaker.state is BreakerState.CLOSED


async def test_retries_are_bounded_and_the_last_error_surfaces() -> None:
    inner = ScriptedGateway(*(GatewayTimeout(f"t{i}") for i in range(10)))
    sleeper = Sleeper()
    with pytest.raises(GatewayTimeout, match="t3"):
        await _resilient(inner, retries=3, sleeper=sleeper).capture("pi_1:attempt:1", 100)
    assert len(inner.calls) == 4
    assert len(sleeper.waits) == 3


async def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    inner = ScriptedGateway(*(GatewayUnavailable("u") for _ in range(6)))
    sleeper = Sleeper()
    with pytest.raises(GatewayUnavailable):
        await _resilient(inner, retries=5, sleeper=sleeper).void("pi_1:attempt:1")
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0]  # base * 2**attempt, capped at max_delay_s
    assert len(sleeper.waits) == len(ceilings)
    for wait, ceiling in zip(sleeper.waits, ceilings, strict=True):
        assert 0 <= wait <= ceiling
    assert len(set(sleeper.waits)) > 1  # jittered, not a fixed schedule


def test_full_jitter_spreads_over_the_whole_range() -> None:
    gateway = _resilient(ScriptedGateway())
    waits = [gateway.backoff_s(10) for _ in range(2_000)]
    assert max(waits) <= 1.0
    assert min(waits) < 0.05
    assert max(waits) > 0.95


async def test_breaker_opens_after_threshold_and_fails_fast() -> None:
    clock = Clock()
    inner = ScriptedGateway(*(GatewayUnavailable("down") for _ in range(3)))
    gateway = _resilient(inner, retries=0, threshold=3, clock=clock)
    for _ in range(3):
        with pytest.raises(GatewayUnavailable):
            await gateway.retrieve_by_idempotency_key("k")
    assert gateway.breaker.state is BreakerState.OPEN
    with pytest.raises(GatewayUnavailable, match="circuit_open"):
        await gateway.retrieve_by_idempotency_key("k")
    assert len(inner.calls) == 3  # the open breaker did not call the gateway


async def test_open_breaker_stops_a_retry_loop() -> None:
    inner = ScriptedGateway(*(GatewayTimeout("t") for _ in range(10)))
    gateway = _resilient(inner, retries=8, threshold=2)
    with pytest.raises(GatewayUnavailable, match="circuit_open"):
        await gateway.authorize(REQUEST)
    assert len(inner.calls) == 2


async def test_half_open_lets_one_trial_through_and_success_closes() -> None:
    clock = Clock()
    inner = ScriptedGateway(GatewayTimeout("t"), _charge("k"), _charge("k"))
    gateway = _resilient(inner, retries=0, threshold=1, clock=clock)
    with pytest.raises(GatewayTimeout):
        await gateway.void("k")
    assert gateway.breaker.state is BreakerState.OPEN
    clock.now += 29.9
    with pytest.raises(GatewayUnavailable):
        await gateway.void("k")
    clock.now += 0.1
    assert gateway.breaker.state is BreakerState.HALF_OPEN
    assert (await gateway.void("k")).gateway_key == "k"
    assert gateway.breaker.state is BreakerState.CLOSED
    assert (await gateway.void("k")).gateway_key == "k"


async def test_failed_trial_opens_again_for_a_full_period() -> None:
    clock = Clock()
    inner = ScriptedGateway(GatewayUnavailable("a"), GatewayUnavailable("b"), _charge("k"))
    gateway = _resilient(inner, retries=0, threshold=1, clock=clock)
    with pytest.raises(GatewayUnavailable):
        await gateway.void("k")
    clock.now += 30
    with pytest.raises(GatewayUnavailable, match="b"):
        await gateway.void("k")  # the trial, failing
    assert gateway.breaker.state is BreakerState.OPEN
    clock.now += 29
    with pytest.raises(GatewayUnavailable, match="circuit_open"):
        await gateway.void("k")
    clock.now += 1
    assert (await gateway.void("k")).gateway_key == "k"


def test_only_one_trial_at_a_time_while_half_open() -> None:
    clock = Clock()
    gateway = _resilient(ScriptedGateway(), threshold=1, clock=clock)
    gateway.breaker.record_failure()
    clock.now += 30
    gateway.breaker.before_call()  # the trial
    with pytest.raises(GatewayUnavailable, match="circuit_open"):
        gateway.breaker.before_call()


async def test_a_bug_in_the_trial_does_not_wedge_the_breaker() -> None:
    clock = Clock()
    inner = ScriptedGateway(GatewayTimeout("t"), KeyError("bug"), _charge("k"))
    gateway = _resilient(inner, retries=0, threshold=1, clock=clock)
    with pytest.raises(GatewayTimeout):
        await gateway.void("k")
    clock.now += 30
    with pytest.raises(KeyError):
        await gateway.void("k")
    assert (await gateway.void("k")).gateway_key == "k"


async def test_refusals_reset_the_failure_count() -> None:
    inner = ScriptedGateway(
        GatewayTimeout("1"), GatewayRejected("no"), GatewayTimeout("2"), _charge("k")
    )
    gateway = _resilient(inner, retries=0, threshold=2)
    for error in (GatewayTimeout, GatewayRejected, GatewayTimeout):
        with pytest.raises(error):
            await gateway.void("k")
    assert gateway.breaker.state is BreakerState.CLOSED


async def test_every_method_goes_through_the_retry_loop() -> None:
    refund = Refund("scripted", "rf_1", "re_1", "ch_1", 100, "USD", "succeeded")
    payout = Payout("scripted", "po_1", "tr_1", 100, "USD", "paid")
    request = PayoutRequest("po_1", 100, "USD", "acct_1")
    inner = ScriptedGateway(
        GatewayTimeout("t"), refund, GatewayTimeout("t"), payout, GatewayTimeout("t"), _charge("k")
    )
    gateway = _resilient(inner)
    assert await gateway.refund("k", "rf_1", 100) == refund
    assert await gateway.payout(request) == payout
    assert (await gateway.release_from_escrow("k")).gateway_key == "k"
    assert [method for method, _ in inner.calls] == [
        "refund",
        "refund",
        "payout",
        "payout",
        "release",
        "release",
    ]
    assert gateway.parse_webhook({}, b"{}").event_id == "evt_1"
    assert gateway.name == "scripted"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retries": -1},
        {"retries": 11},
        {"base_delay_s": -0.1},
        {"base_delay_s": 2.0, "max_delay_s": 1.0},
        {"breaker_threshold": 0},
        {"breaker_reset_s": 0},
    ],
)
def test_limits_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        ResilientGateway(ScriptedGateway(), **kwargs)  # type: ignore[arg-type]

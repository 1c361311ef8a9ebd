"""Webhook events, their retry schedule and their signature (pure parts)."""

from __future__ import annotations

import hashlib
import hmac
import random

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hammerlock.payments.gateways.signature import sign_header, verify_header
from hammerlock.webhooks.model import (
    AttemptOutcome,
    Backoff,
    WebhookEvent,
    check_event_type,
    classify_status,
    new_event_id,
)

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(
    "name",
    [
        "payment_intent.succeeded",
        "payment_intent.payment_failed",
        "refund.created",
        "review.decided",
        "order.shipped",
        "a.b.c",
        "x" * 30 + "." + "y" * 33,
    ],
)
def test_valid_event_types(name: str) -> None:
    assert check_event_type(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "succeeded",
        "Payment_intent.succeeded",
        "payment-intent.succeeded",
        "payment_intent.",
        ".succeeded",
        "payment_intent..succeeded",
        "payment_intent.succeeded ",
        "1pi.succeeded",
        "x" * 31 + "." + "y" * 33,
    ],
)
def test_invalid_event_types_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="dotted lowercase"):
        check_event_type(name)


def test_event_body_is_the_documented_object() -> None:
    event = WebhookEvent(
        id="we_abc", type="refund.created", created_us=T0 + 5, data={"id": "re_1", "amount": 5}
    )
    assert orjson.loads(event.body()) == {
        "id": "we_abc",
        "type": "refund.created",
        "created": "2026-01-01T00:00:00.000005Z",
        "data": {"id": "re_1", "amount": 5},
    }
    assert event.body() == event.body()  # stable bytes: every attempt sends the same
    assert new_event_id().startswith("we_")
    assert new_event_id() != new_event_id()


def test_oversized_events_are_refused() -> None:
    event = WebhookEvent(
        id="we_big", type="refund.created", created_us=T0, data={"blob": "x" * 70_000}
    )
    with pytest.raises(ValueError, match="bytes"):
        event.body()


def test_only_2xx_is_delivered() -> None:
    assert classify_status(200) is AttemptOutcome.DELIVERED
    assert classify_status(204) is AttemptOutcome.DELIVERED
    for status in (100, 301, 302, 400, 404, 410, 429, 500, 503):
        assert classify_status(status) is AttemptOutcome.RETRY


def test_default_schedule_retries_for_three_days() -> None:
    backoff = Backoff()
    now, attempt, rng = T0, 1, random.Random(7)
    waits = []
    while (due := backoff.next_attempt_us(T0, now, attempt, rng.random())) is not None:
        waits.append(due - now)
        now, attempt = due, attempt + 1
    assert 3 * 86_400 * 1_000_000 - now < 6 * 3600 * 1_000_000  # gave up within the last gap
    assert 12 <= len(waits) + 1 <= 30  # attempts made in 3 days
    assert waits[0] <= 30_000_000
    assert max(waits) <= 6 * 3600 * 1_000_000


@given(st.integers(1, 200), st.floats(0, 1))
def test_delay_is_jittered_exponential_and_capped(attempt: int, jitter: float) -> None:
    backoff = Backoff(initial_s=10, max_s=3600, max_age_s=86_400)
    base_us = min(3600, 10 * 2 ** min(attempt - 1, 62)) * 1_000_000
    delay = backoff.delay_us(attempt, jitter)
    assert base_us // 2 <= delay <= base_us
    assert backoff.delay_us(attempt, 0.0) <= backoff.delay_us(attempt + 1, 0.0)


@given(st.integers(0, 10**12), st.integers(1, 50), st.floats(0, 1))
def test_never_schedules_past_the_maximum_age(offset_us: int, attempt: int, jitter: float) -> None:
    backoff = Backoff(initial_s=1, max_s=600, max_age_s=3600)
    due = backoff.next_attempt_us(T0, T0 + offset_us, attempt, jitter)
    if due is not None:
        assert T0 + offset_us < due <= T0 + backoff.max_age_us


def test_bad_schedules_are_refused() -> None:
    with pytest.raises(ValueError, match="initial_s"):
        Backoff(initial_s=0)
    with pytest.raises(ValueError, match="initial_s"):
        Backoff(initial_s=10, max_s=5)
    with pytest.raises(ValueError, match="jitter"):
        Backoff().delay_us(0, 0.5)


def test_signature_matches_an_independent_hmac() -> None:
    secret, body, t = b"whsec_0123456789abcdef", b'{"id":"we_1"}', 1_767_225_600
    header = sign_header(secret, t, body)
    expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert header == f"t={t},v1={expected}"
    assert verify_header(secret, header, body, now_s=t + 10) == t

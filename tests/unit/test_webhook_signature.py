"""Hammerlock-Signature: t=<unix>,v1=<hex HMAC-SHA-256 over "t.body">."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hammerlock.payments.gateways.base import GatewayRejected
from hammerlock.payments.gateways.signature import (
    InvalidSignature,
    compute_signature,
    sign_header,
    verify_header,
)

SECRET = "whsec_sandbox_test_secret"
NOW = 1_767_225_600
BODY = b'{"id":"evt_1","type":"charge.captured"}'


def test_known_answer() -> None:
    expected = hmac.new(SECRET.encode(), b"1767225600." + BODY, hashlib.sha256).hexdigest()
    assert compute_signature(SECRET, NOW, BODY) == expected
    assert sign_header(SECRET, NOW, BODY) == f"t=1767225600,v1={expected}"


@given(body=st.binary(max_size=512), skew=st.integers(-300, 300))
def test_round_trip_within_tolerance(body: bytes, skew: int) -> None:
    header = sign_header(SECRET, NOW, body)
    assert verify_header(SECRET, header, body, now_s=NOW + skew) == NOW


@pytest.mark.parametrize("skew", [-301, 301, 86_400])
def test_stale_either_way_is_refused(skew: int) -> None:
    header = sign_header(SECRET, NOW, BODY)
    with pytest.raises(InvalidSignature) as caught:
        verify_header(SECRET, header, BODY, now_s=NOW + skew)
    assert caught.value.reason == "stale"


def test_tampered_body_wrong_secret_and_moved_timestamp_are_refused() -> None:
    header = sign_header(SECRET, NOW, BODY)
    for secret, head, body in [
        (SECRET, header, BODY + b" "),
        ("another_secret_value", header, BODY),
        (SECRET, header.replace(f"t={NOW}", f"t={NOW + 1}"), BODY),
    ]:
        with pytest.raises(InvalidSignature) as caught:
            verify_header(secret, head, body, now_s=NOW)
        assert caught.value.reason == "mismatch"


def test_rotation_any_v1_matches_other_schemes_ignored() -> None:
    good = compute_signature(SECRET, NOW, BODY)
    header = f"t={NOW},v0={good},v1={'0' * 64},v1={good}"
    assert verify_header(SECRET, header, BODY, now_s=NOW) == NOW
    with pytest.raises(InvalidSignature):
        verify_header(SECRET, f"t={NOW},v0={good}", BODY, now_s=NOW)


@pytest.mark.parametrize(
    "header",
    ["", "v1=abc", f"t={NOW}", "t=,v1=ab", "t=-5,v1=ab", "t=1e9,v1=ab", "t=١٢٣,v1=ab", "x" * 2_000],
)
def test_malformed_headers(header: str) -> None:
    with pytest.raises(InvalidSignature) as caught:
        verify_header(SECRET, header, BODY, now_s=NOW)
    assert caught.value.reason == "malformed"
    assert isinstance(caught.value, GatewayRejected)
    assert caught.value.code == "invalid_signature"
    assert not caught.value.retryable

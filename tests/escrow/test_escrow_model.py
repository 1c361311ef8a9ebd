"""Fees, settlement splits, the transition table and tracking formats: exact cents, no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hammerlock.escrow.model import (
    TERMINAL,
    Event,
    Fees,
    OrderStatus,
    OrderTerms,
    compute_fees,
    fees_for,
    next_status,
    settle,
    transitions,
    valid_tracking_number,
)


def terms(**kw: object) -> OrderTerms:
    base: dict[str, object] = {
        "lot_id": "lot_1",
        "seller_id": "sel_1",
        "buyer_id": "bid_1",
        "currency": "USD",
        "hammer_price": 19_350_000,
        "buyer_premium_bps": 2_500,
        "seller_commission_bps": 1_000,
        "payment_window_s": 172_800,
        "inspection_period_s": 259_200,
    }
    return OrderTerms(**{**base, **kw})  # type: ignore[arg-type]


def test_the_demo_coin() -> None:
    fees = fees_for(terms())
    assert (fees.premium, fees.commission) == (4_837_500, 1_935_000)
    assert fees.total == 24_187_500
    assert fees.seller_net == 17_415_000
    assert fees.revenue == 6_772_500


@pytest.mark.parametrize(
    ("hammer", "bps", "fee"),
    [
        (1_001, 2_500, 250),  # 250.25 -> 250
        (1_002, 2_500, 251),  # 250.5 -> 251 (half up: ties away from zero)
        (1_003, 2_500, 251),  # 250.75 -> 251
        (999, 1_234, 123),  # 123.2766 -> 123
        (12_345, 1, 1),  # 1.2345 -> 1
        (5_000, 1, 1),  # 0.5 -> 1
        (4_999, 1, 0),  # 0.4999 -> 0
        (7, 3_333, 2),  # 2.3331 -> 2
        (3, 5_000, 2),  # 1.5 -> 2
        (1, 10_000, 1),
        (100, 0, 0),
    ],
)
def test_fee_rounding_is_half_up_on_exact_integers(hammer: int, bps: int, fee: int) -> None:
    fees = compute_fees(hammer, "USD", bps, bps)
    assert fees.premium == fee
    assert fees.commission == fee


def test_jpy_has_no_minor_unit_but_the_same_rule() -> None:
    fees = compute_fees(10_001, "JPY", 1_250, 875)
    assert (fees.premium, fees.commission) == (1_250, 875)  # 1250.125 -> 1250; 875.0875 -> 875


def test_partial_refund_shrinks_premium_and_commission_pro_rata() -> None:
    fees = Fees(hammer=100_000, premium=25_000, commission=10_000)  # total 125,000
    split = settle(fees, "USD", 115_000)
    # 115,000 in the ratio 100,000 : 25,000 -> 92,000 of hammer, 23,000 of premium
    assert (split.kept.hammer, split.kept.premium) == (8_000, 2_000)
    assert split.kept.commission == 800  # 10,000 * 8,000 / 100,000
    assert (split.to_seller, split.to_revenue) == (7_200, 2_800)


def test_odd_refund_split_by_largest_remainder() -> None:
    fees = compute_fees(333, "USD", 1_111, 777)  # premium 36.9963 -> 37, commission 25.87 -> 26
    assert (fees.premium, fees.commission) == (37, 26)
    split = settle(fees, "USD", 101)  # of 370: hammer share 90.9 -> 91, premium 10.1 -> 10
    assert (split.kept.hammer, split.kept.premium) == (242, 27)
    assert split.kept.commission == 19  # 26 * 242 / 333 = 18.895 -> 19
    assert split.to_seller + split.to_revenue + split.refund == fees.total


def test_full_refund_leaves_nothing() -> None:
    fees = compute_fees(100_000, "USD", 2_500, 1_000)
    split = settle(fees, "USD", fees.total)
    assert (split.to_seller, split.to_revenue) == (0, 0)
    with pytest.raises(ValueError, match="refund"):
        settle(fees, "USD", fees.total + 1)


@given(
    hammer=st.integers(1, 10**12),
    premium_bps=st.integers(0, 10_000),
    commission_bps=st.integers(0, 10_000),
    data=st.data(),
)
def test_settlement_always_sums_to_the_total(
    hammer: int, premium_bps: int, commission_bps: int, data: st.DataObject
) -> None:
    fees = compute_fees(hammer, "USD", premium_bps, commission_bps)
    refund = data.draw(st.integers(0, fees.total))
    split = settle(fees, "USD", refund)
    assert split.to_seller + split.to_revenue + split.refund == fees.total
    assert split.to_seller >= 0
    assert split.to_revenue >= 0
    assert 0 <= split.kept.commission <= split.kept.hammer


def test_transition_table() -> None:
    s, e = OrderStatus, Event
    assert next_status(s.AWAITING_PAYMENT, e.PAID) is s.PAID
    assert next_status(s.SHIPPED, e.ACCEPT) is s.RELEASED
    assert next_status(s.PAID, e.DISPUTE) is None  # only during inspection
    assert next_status(s.SHIPPED, e.DISPUTE) is None
    assert next_status(s.DISPUTED, e.INSPECTION_END) is None  # a dispute freezes release
    assert next_status(s.PAID, e.CANCEL) is s.REFUNDED
    assert next_status(s.SHIPPED, e.CANCEL) is None  # shipped: too late to cancel
    for (status, _), target in transitions().items():
        assert status not in TERMINAL or target is status  # a terminal state is never left
    for status in TERMINAL:
        assert all(next_status(status, event) in {None, status} for event in Event)


@pytest.mark.parametrize(
    ("carrier", "number", "ok"),
    [
        ("ups", "1Z999AA10123456784", True),
        ("ups", "1Z12345E0205271688", True),
        ("ups", "1Z999AA1012345678", False),
        ("fedex", "449044304137821", True),
        ("fedex", "123456789012", True),
        ("fedex", "12345678901", False),
        ("usps", "9400111899223197428490", True),
        ("usps", "92612901001304350828", True),
        ("usps", "9400 1118 9922 3197 4284 90", False),
        ("dhl", "1234567890", True),
        ("dhl", "JD014600003828", False),
        ("ups", "4242424242424242", False),
        ("royalmail", "1234567890", False),
    ],
)
def test_tracking_formats(carrier: str, number: str, ok: bool) -> None:
    assert valid_tracking_number(carrier, number) is ok


def test_terms_validation() -> None:
    with pytest.raises(ValueError, match="seller and buyer"):
        terms(buyer_id="sel_1")
    with pytest.raises(ValueError, match="runner_up"):
        terms(runner_up_bidder_id="bid_2")
    with pytest.raises(ValueError, match="hammer_price"):
        terms(hammer_price=0)
    with pytest.raises(ValueError, match="runner-up"):
        terms(runner_up_bidder_id="bid_1", runner_up_amount=5)

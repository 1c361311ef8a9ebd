"""Proxy bidding as pure functions, against a naive reference that replays the accepted bids.

The reference is written the slow, literal way (DESIGN.md and issue #6 as prose): every bidder
counts with the highest maximum they ever gave, dated by the bid that first gave it; the leader
is the highest (earliest on a tie), the runner-up the best of the rest; the price is the
runner-up's maximum plus one increment, capped at the leader's maximum, the starting price with
one bidder, lifted to the reserve when the leader's maximum reaches it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hammerlock.auctions.model import (
    AcceptedBid,
    Band,
    BidRefusal,
    LotTerms,
    Standing,
    apply_bid,
    ask_for,
    default_deposit_bps,
    default_increments,
    deposit_amount,
    extend_end,
    increment_at,
    new_id,
    standing_of,
    validate_increments,
)
from hammerlock.parties.model import PartyKind, new_party_id
from hammerlock.security.pan import contains_pan

USD = default_increments("USD")


def terms(reserve: int = 0, start: int = 1_000, bands: tuple[Band, ...] = USD) -> LotTerms:
    return LotTerms(starting_price=start, reserve_price=reserve, increments=bands)


@dataclass(frozen=True)
class Expected:
    price: int | None
    leader: str | None
    runner_up: str | None


def reference(t: LotTerms, bids: list[tuple[str, int]]) -> Expected:
    """Replay from scratch: (bidder, max) in acceptance order."""
    best: dict[str, tuple[int, int]] = {}
    for seq, (bidder, amount) in enumerate(bids, start=1):
        if bidder not in best or amount > best[bidder][0]:
            best[bidder] = (amount, seq)
    if not best:
        return Expected(None, None, None)
    order = sorted(best, key=lambda b: (-best[b][0], best[b][1]))
    leader_max = best[order[0]][0]
    if len(order) == 1:
        price = t.starting_price
        runner = None
    else:
        runner = order[1]
        runner_max = best[runner][0]
        step = [b.step for b in t.increments if b.start <= runner_max][-1]
        price = min(leader_max, runner_max + step)
    if leader_max >= t.reserve_price:
        price = max(price, t.reserve_price)
    return Expected(min(max(price, t.starting_price), leader_max), order[0], runner)


def play(t: LotTerms, attempts: list[tuple[str, int]]) -> tuple[Standing, list[tuple[str, int]]]:
    standing = Standing()
    accepted: list[tuple[str, int]] = []
    for bidder, amount in attempts:
        after = apply_bid(t, standing, bidder, amount)
        if isinstance(after, BidRefusal):
            assert amount < ask_for(t, standing, bidder)
            continue
        assert amount >= ask_for(t, standing, bidder)
        assert after.last_seq == standing.last_seq + 1
        standing = after
        accepted.append((bidder, amount))
    return standing, accepted


# -- examples -----------------------------------------------------------------------------------


def test_a_single_bid_shows_the_starting_price() -> None:
    s = apply_bid(terms(), Standing(), "a", 5_000)
    assert isinstance(s, Standing)
    assert (s.price, s.leader_id, s.bid_count, s.last_seq) == (1_000, "a", 1, 1)


def test_the_price_beats_the_runner_up_by_one_increment() -> None:
    s, _ = play(terms(), [("a", 5_000), ("b", 3_000)])
    assert (s.price, s.leader_id, s.runner_up_id) == (3_100, "a", "b")  # $30 band: $1 step


def test_a_higher_maximum_takes_the_lead_at_the_old_leaders_maximum_plus_a_step() -> None:
    s, _ = play(terms(), [("a", 5_000), ("b", 8_000)])
    assert (s.price, s.leader_id, s.runner_up_id) == (5_100, "b", "a")


def test_equal_maximums_go_to_the_earlier_bid_at_that_maximum() -> None:
    s, _ = play(terms(), [("a", 5_000), ("b", 5_000)])
    assert (s.price, s.leader_id) == (5_000, "a")


def test_the_leader_raising_does_not_outbid_themselves_but_uncaps_a_tie() -> None:
    s, accepted = play(terms(), [("a", 5_000), ("a", 9_000)])
    assert (s.price, s.leader_id, len(accepted)) == (1_000, "a", 2)
    s, _ = play(terms(), [("a", 5_000), ("b", 5_000), ("a", 9_000)])
    assert (s.price, s.leader_id) == (5_100, "a")


def test_the_leader_may_only_raise() -> None:
    t = terms()
    s, _ = play(t, [("a", 5_000)])
    assert apply_bid(t, s, "a", 5_000) is BidRefusal.TOO_LOW
    assert ask_for(t, s, "a") == 5_001
    assert ask_for(t, s, "b") == 1_050  # $10 band: 50c step


def test_a_maximum_at_the_reserve_lifts_the_price_to_it() -> None:
    t = terms(reserve=4_000)
    s, _ = play(t, [("a", 3_000)])
    assert (s.price, s.reserve_met(t)) == (1_000, False)
    s, _ = play(t, [("a", 4_500)])
    assert (s.price, s.reserve_met(t)) == (4_000, True)
    s, _ = play(t, [("a", 4_500), ("b", 4_200)])
    assert s.price == 4_300


def test_a_bid_below_the_ask_is_refused() -> None:
    t = terms()
    assert apply_bid(t, Standing(), "a", 999) is BidRefusal.TOO_LOW
    s, _ = play(t, [("a", 5_000), ("b", 3_000)])
    assert ask_for(t, s, "c") == 3_200
    assert apply_bid(t, s, "c", 3_199) is BidRefusal.TOO_LOW


def test_default_increments_scale_with_the_currency() -> None:
    assert increment_at(USD, 0) == 5
    assert increment_at(USD, 99) == 5
    assert increment_at(USD, 100) == 25
    assert increment_at(USD, 10_000_000) == 250_000
    jpy = default_increments("JPY")
    assert jpy[0] == Band(0, 1)
    assert validate_increments(jpy) is None
    assert default_increments("KWD")[1] == Band(1_000, 250)


def test_increment_tables_are_validated() -> None:
    assert validate_increments(()) is not None
    assert validate_increments((Band(5, 1),)) is not None
    assert validate_increments((Band(0, 10), Band(100, 5))) is not None
    assert validate_increments((Band(0, 10), Band(0, 20))) is not None
    assert validate_increments((Band(0, 10), Band(100, 20))) is None


def test_deposit_defaults() -> None:
    assert default_deposit_bps("USD", 999_999) == 0
    assert default_deposit_bps("USD", 1_000_000) == 1_000
    assert default_deposit_bps("JPY", 10_000) == 1_000
    assert deposit_amount(1_000_001, 1_000) == 100_001  # rounded up


@pytest.mark.parametrize(
    ("now_s", "expected_s", "extended"),
    [
        (0, 1_000, False),
        (879, 1_000, False),
        (880, 1_000, False),
        (950, 1_070, True),
        (1_099, 1_200, True),
    ],
)
def test_soft_close_pushes_the_end_up_to_its_cap(
    now_s: int, expected_s: int, extended: bool
) -> None:
    us = 1_000_000
    assert extend_end(1_000 * us, 1_200 * us, now_s * us, 120) == (expected_s * us, extended)


# -- properties ---------------------------------------------------------------------------------

bidders = st.sampled_from(["a", "b", "c", "d", "e"])
amounts = st.integers(min_value=1, max_value=200_000)
attempts = st.lists(st.tuples(bidders, amounts), max_size=60)


@st.composite
def lot_terms(draw: st.DrawFn) -> LotTerms:
    steps = sorted(draw(st.lists(st.integers(1, 5_000), min_size=1, max_size=5)))
    starts = sorted(
        draw(st.sets(st.integers(1, 150_000), min_size=len(steps) - 1, max_size=len(steps) - 1))
    )
    bands = (Band(0, steps[0]), *(Band(s, t) for s, t in zip(starts, steps[1:], strict=True)))
    assert validate_increments(bands) is None
    return LotTerms(
        starting_price=draw(st.integers(1, 10_000)),
        reserve_price=draw(st.integers(0, 150_000)),
        increments=bands,
    )


@given(t=lot_terms(), tries=attempts)
def test_incremental_standing_equals_a_replay_of_the_accepted_bids(
    t: LotTerms, tries: list[tuple[str, int]]
) -> None:
    standing, accepted = play(t, tries)
    expected = reference(t, accepted)
    assert (standing.price, standing.leader_id, standing.runner_up_id) == (
        expected.price,
        expected.leader,
        expected.runner_up,
    )
    scratch = standing_of(t, (AcceptedBid(i, b, m) for i, (b, m) in enumerate(accepted, start=1)))
    assert scratch == standing
    assert standing.bid_count == standing.last_seq == len(accepted)


@given(t=lot_terms(), tries=attempts)
def test_the_price_never_falls_and_never_exceeds_the_leaders_maximum(
    t: LotTerms, tries: list[tuple[str, int]]
) -> None:
    standing = Standing()
    for bidder, amount in tries:
        after = apply_bid(t, standing, bidder, amount)
        if isinstance(after, BidRefusal):
            continue
        assert after.price is not None
        assert after.leader_max is not None
        assert after.price <= after.leader_max
        assert standing.price is None or after.price >= standing.price
        if after.reserve_met(t):
            assert after.price >= t.reserve_price
        standing = after


@given(t=lot_terms(), tries=attempts, data=st.data())
def test_a_retraction_recomputes_as_if_the_bid_never_was(
    t: LotTerms, tries: list[tuple[str, int]], data: st.DataObject
) -> None:
    _, accepted = play(t, tries)
    if not accepted:
        return
    gone = data.draw(st.integers(0, len(accepted) - 1))
    remaining = [
        AcceptedBid(i, b, m) for i, (b, m) in enumerate(accepted, start=1) if i != gone + 1
    ]
    after = standing_of(t, remaining, last_seq=len(accepted))
    expected = reference(t, [(b.bidder_id, b.max_amount) for b in remaining])
    # The reference dates bids by position; remaining keeps the original order, so it agrees.
    assert (after.price, after.leader_id) == (expected.price, expected.leader)
    assert after.last_seq == len(accepted)


def test_the_docs_example() -> None:
    """docs/auctions.md "Proxy bidding": the example table, row by row."""
    t = terms(reserve=4_000)
    rows = [("A", 3_000, 1_000, "A"), ("B", 5_000, 4_000, "B"), ("A", 4_500, 4_600, "B")]
    rows.append(("C", 5_000, 5_000, "B"))
    standing = Standing()
    for bidder, amount, price, leader in rows:
        after = apply_bid(t, standing, bidder, amount)
        assert isinstance(after, Standing)
        assert (after.price, after.leader_id) == (price, leader)
        standing = after


def test_ids_never_look_like_card_numbers() -> None:
    """Ids travel in paths, which the API's PAN guard scans (hex ids trip it 3 in 10,000)."""
    ids = [new_id("lot") for _ in range(20_000)] + [
        new_party_id(PartyKind.BIDDER) for _ in range(5_000)
    ]
    assert not any(contains_pan(i) for i in ids)
    assert len(set(ids)) == len(ids)

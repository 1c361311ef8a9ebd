"""Round-robin queue cursors (hammerlock.db.queues), against an in-memory queue.

The queue is sorted by (updated_us, id) like the escrow sweeper's and the payments janitor's.
Each pass reads one page after the cursor. Items the pass "touches" get updated_us = the pass's
clock (a little later than the clock it read first) and stay queued — a payout lookup recorded,
a reminder; "still" items stay put — an order waiting for an operator; other processes keep
adding items, stamped by their own clocks, which may run ahead of ours. Every item must be
reached again within a bounded number of passes.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from hammerlock.db.queues import CLOCK_SLACK_US, Cursors, Key

PASS_US = 10_000_000  # a pass every 10 s


def page(rows: dict[str, int], after: Key | None, limit: int) -> list[Key]:
    keys = sorted((updated, ident) for ident, updated in rows.items())
    if after is not None:
        keys = [k for k in keys if k > after]
    return keys[:limit]


def longest_gaps(
    n_touched: int,
    n_still: int,
    limit: int,
    *,
    with_now: bool,
    passes: int,
    arrivals: int = 0,
    skew_us: int = 0,
) -> dict[str, int]:
    """For each item, the most passes between two visits of it (or between its arrival and its
    first, or after its last). ``arrivals`` items join per pass, stamped by a clock ``skew_us``
    ahead of the sweeper's, and are touched like the rest once visited."""
    rows = {f"s{i:03d}": i for i in range(n_still)}  # older: at the front of the queue
    rows |= {f"t{i:03d}": 1_000 + i for i in range(n_touched)}
    cursors = Cursors()
    last_seen = dict.fromkeys(rows, 0)
    gap = dict.fromkeys(rows, 0)
    for n in range(1, passes + 1):
        now = 1_000_000_000 + n * PASS_US  # the pass's clock, read before its steps run
        for a in range(arrivals):
            ident = f"n{n:04d}-{a}"
            rows[ident] = now + skew_us
            last_seen[ident], gap[ident] = n - 1, 0
        keys = page(rows, cursors.at("q"), limit)
        cursors.read("q", keys, limit, now=now if with_now else None)
        for _, ident in keys:
            if not ident.startswith("s"):
                rows[ident] = now + 1  # touched: moved behind the cursor
            gap[ident] = max(gap[ident], n - last_seen[ident])
            last_seen[ident] = n
    return {i: max(gap[i], passes + 1 - last_seen[i]) for i in rows}


def test_without_the_lap_bound_the_cursor_chases_what_it_touches() -> None:
    # The scenario is one that starves: without `now`, the still items are never read again.
    gap = longest_gaps(10, 5, 4, with_now=False, passes=200)
    assert max(gap[i] for i in gap if i.startswith("s")) > 150


@settings(max_examples=200, deadline=None)
@given(
    n_touched=st.integers(min_value=0, max_value=40),
    n_still=st.integers(min_value=1, max_value=40),
    limit=st.integers(min_value=1, max_value=10),
)
def test_with_the_lap_bound_every_item_is_reached_again(
    n_touched: int, n_still: int, limit: int
) -> None:
    # One lap reads what was queued when it began, plus the page that ends it; an item is read
    # once per lap; the slack lets a lap go on through what the last half second touched.
    lap = math.ceil((n_touched + n_still) / limit) + 1
    gap = longest_gaps(n_touched, n_still, limit, with_now=True, passes=8 * lap)
    assert max(gap.values()) <= 2 * lap


@settings(max_examples=100, deadline=None)
@given(
    limit=st.integers(min_value=2, max_value=8),
    arrivals=st.integers(min_value=1, max_value=3),
    skew_s=st.integers(min_value=0, max_value=CLOCK_SLACK_US // 1_000_000),
)
def test_items_stamped_by_a_clock_ahead_are_not_left_behind(
    limit: int, arrivals: int, skew_s: int
) -> None:
    # Other processes add items stamped up to the slack ahead of our clock. Had each of them
    # ended the lap it was read in, the ones behind would wait until our clock caught up with
    # their stamps; within the slack, a lap reads on through them.
    passes, n_still = 40, 6
    gap = longest_gaps(
        0, n_still, limit, with_now=True, passes=passes, arrivals=arrivals,
        skew_us=skew_s * 1_000_000,
    )  # fmt: skip
    queued = n_still + arrivals * passes  # at most, at any pass
    assert max(gap.values()) <= 2 * (math.ceil(queued / limit) + 1)


def test_a_clock_far_ahead_only_delays_what_it_stamped() -> None:
    # Beyond the slack (a clock a minute ahead: six passes), what it stamped is read a page per
    # lap until our clock catches up: later than the rest, but read, and the rest not held up.
    def run(skew_us: int) -> dict[str, int]:
        return longest_gaps(0, 6, 4, with_now=True, passes=60, arrivals=2, skew_us=skew_us)

    on_time, ahead = run(0), run(60_000_000)
    still = [i for i in on_time if i.startswith("s")]
    assert max(ahead[i] for i in still) <= max(on_time[i] for i in still)
    assert max(ahead.values()) < 60


def test_a_short_page_still_ends_the_lap_and_a_full_one_goes_on() -> None:
    s = CLOCK_SLACK_US
    cursors = Cursors()
    cursors.read("q", [(1, "a"), (2, "b")], 2, now=10)
    assert cursors.at("q") == (2, "b")
    cursors.read("q", [(3, "c")], 2, now=11)
    assert cursors.at("q") is None
    cursors.read("q", [(1, "a"), (12 + s, "b")], 2, now=12)  # b: within the slack of the lap
    assert cursors.at("q") == (12 + s, "b")
    cursors.read("q", [(13 + s, "c"), (14 + s, "d")], 2, now=20)  # d: after it: the lap ends
    assert cursors.at("q") is None
    cursors.read("q", [(1, "a"), (2, "b")], 2)  # no clock: only a short page ends a lap
    cursors.read("q", [(30 + s, "c"), (40 + s, "d")], 2)
    assert cursors.at("q") == (40 + s, "d")

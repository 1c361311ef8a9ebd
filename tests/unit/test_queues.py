"""Round-robin queue cursors (hammerlock.db.queues), against an in-memory queue.

The queue is sorted by (updated_us, id) like the escrow sweeper's and the payments janitor's.
Each pass reads one page after the cursor; items the pass "touches" get updated_us = now and
stay queued (a payout lookup recorded, a reminder), the other items stay put (an order waiting
for an operator). Every item must be reached again within a bounded number of passes.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from hammerlock.db.queues import Cursors, Key


def page(rows: dict[str, int], after: Key | None, limit: int) -> list[Key]:
    keys = sorted((updated, ident) for ident, updated in rows.items())
    if after is not None:
        keys = [k for k in keys if k > after]
    return keys[:limit]


def passes_until_each_untouched_seen(
    n_touched: int, n_still: int, limit: int, *, with_now: bool, max_passes: int
) -> dict[str, int]:
    """The longest gap (in passes) between two visits of each untouched item."""
    rows = {f"s{i:03d}": i for i in range(n_still)}  # older: at the front of the queue
    rows |= {f"t{i:03d}": 1_000 + i for i in range(n_touched)}
    cursors = Cursors()
    last_seen = dict.fromkeys((k for k in rows if k.startswith("s")), 0)
    gap = dict.fromkeys(last_seen, 0)
    for n in range(1, max_passes + 1):
        now = 10_000 + 10 * n  # the pass's clock, read before its steps run
        keys = page(rows, cursors.at("q"), limit)
        cursors.read("q", keys, limit, now=now if with_now else None)
        for _, ident in keys:
            if ident.startswith("t"):
                rows[ident] = now + 1  # touched: moved behind the cursor
            else:
                gap[ident] = max(gap[ident], n - last_seen[ident])
                last_seen[ident] = n
    for ident, seen in last_seen.items():
        gap[ident] = max(gap[ident], max_passes + 1 - seen)
    return gap


def test_without_the_lap_bound_the_cursor_chases_what_it_touches() -> None:
    # The scenario is one that starves: without `now`, the untouched items are never read again.
    gap = passes_until_each_untouched_seen(10, 5, 4, with_now=False, max_passes=200)
    assert max(gap.values()) > 150


@settings(max_examples=200, deadline=None)
@given(
    n_touched=st.integers(min_value=0, max_value=40),
    n_still=st.integers(min_value=1, max_value=40),
    limit=st.integers(min_value=1, max_value=10),
)
def test_with_the_lap_bound_every_item_is_reached_again(
    n_touched: int, n_still: int, limit: int
) -> None:
    bound = math.ceil((n_touched + n_still) / limit) + 1  # one lap, and the page that ends it
    gap = passes_until_each_untouched_seen(
        n_touched, n_still, limit, with_now=True, max_passes=6 * bound
    )
    assert max(gap.values()) <= bound


def test_a_short_page_still_ends_the_lap_and_a_full_one_goes_on() -> None:
    cursors = Cursors()
    cursors.read("q", [(1, "a"), (2, "b")], 2, now=10)
    assert cursors.at("q") == (2, "b")
    cursors.read("q", [(3, "c")], 2, now=11)
    assert cursors.at("q") is None
    cursors.read("q", [(1, "a"), (12, "b")], 2, now=12)  # b updated at the lap's start: kept
    assert cursors.at("q") == (12, "b")
    cursors.read("q", [(13, "c"), (14, "d")], 2, now=20)  # c updated after it: the lap ends
    assert cursors.at("q") is None
    cursors.read("q", [(1, "a"), (2, "b")], 2)  # no clock: only a short page ends a lap
    cursors.read("q", [(30, "c"), (40, "d")], 2)
    assert cursors.at("q") == (40, "d")

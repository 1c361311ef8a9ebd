"""Round-robin over the background queues a pass reads a page at a time.

A sweeper that reads its queue oldest first, ``LIMIT n``, hands the same first ``n`` items to
every pass. When those items make no progress — a void the gateway keeps refusing, a buyer who
left a 3-D Secure challenge, a payout only an operator can settle — nothing behind them is ever
reached: 100 stuck payments stop the janitor for every payment after them. So each queue is
read from where the previous pass stopped (keyset pagination on its sort column and id), and
starts over once a page comes back short: every item is reached within ``⌈items / n⌉`` passes,
however many of them stay stuck. The position is per process and in memory: a restart starts
at the beginning, and several processes each go round on their own.

A queue sorted by its items' last update (``updated_us``) has one more way to starve: a pass
that touches an item and leaves it queued moves it *behind* the cursor, so the cursor can chase
the items it keeps touching and never come back short — and never return to the items it does
not touch. Such a queue passes the pass's ``now`` to :meth:`Cursors.read`: a lap then also ends
at the first item updated more than :data:`CLOCK_SLACK_US` after the lap began, and the next
pass starts over. The slack is for the clocks of other processes (an item another API node
stamped a little ahead of ours is not taken for one this pass touched: with no slack, a queue
full of them would end every lap at its first page until our clock caught up).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

__all__ = ["CLOCK_SLACK_US", "Cursors", "Key", "after"]

CLOCK_SLACK_US = 5_000_000  # how far ahead another process's clock may stamp an update

Key = tuple[Any, str]  # (the sort column's value, the id) of the last item read


def after(sort: sa.ColumnElement[Any], ident: sa.ColumnElement[Any], key: Key | None) -> list[Any]:
    """The condition for "after ``key`` in (``sort``, ``ident``) order"; none from the start."""
    if key is None:
        return []
    # ``sort >= k`` is implied by the OR, and stated so that an index on the sort column can
    # start its range scan at the cursor instead of filtering from the start.
    return [sort >= key[0], sa.or_(sort > key[0], sa.and_(sort == key[0], ident > key[1]))]


class Cursors:
    """Each named queue's position: :meth:`at` before reading a page, :meth:`read` after."""

    def __init__(self) -> None:
        self._at: dict[str, Key] = {}
        self._lap: dict[str, Any] = {}  # when each lap began (queues sorted by update time)

    def at(self, queue: str) -> Key | None:
        return self._at.get(queue)

    def read(self, queue: str, keys: list[Key], limit: int, *, now: Any = None) -> None:
        """A page of ``keys`` (in order) was read with ``limit``: go on after its last item,
        or from the start again when it was the end of the queue. With ``now`` (µs; the queue's
        sort column is the items' last update, in µs), the lap also ends at an item updated
        more than :data:`CLOCK_SLACK_US` after the ``now`` of the lap's first page."""
        lap = self._lap.setdefault(queue, now) if now is not None else None
        if (
            len(keys) < limit
            or not keys
            or (lap is not None and keys[-1][0] > lap + CLOCK_SLACK_US)
        ):
            self._at.pop(queue, None)
            self._lap.pop(queue, None)
        else:
            self._at[queue] = keys[-1]

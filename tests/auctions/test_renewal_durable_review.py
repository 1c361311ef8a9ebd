"""Review of ADR 0019 (deposit renewals recorded in ``deposit_renewals``, commit e2529b5).

Each test here demonstrates a gap found in review: it fails on the code it was written against.
"A process" is an :class:`Auctions` over the shared database and payments; "a crash" is an
exception at the step named (what the database holds afterwards is what a crash leaves).
"""

from __future__ import annotations

from typing import Any

import pytest

from hammerlock.auctions import storage as auction_storage
from hammerlock.auctions.model import RenewalState
from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from tests.auctions.conftest import Market
from tests.auctions.deposit_support import (
    held_intents,
    lot_with_deposit,
    renewal_attempts,
    restarted,
    wire,
)
from tests.payments.fake_gateway import FakeGateway

SYSTEM = Context.system("tests.renewal_durable_review")
_DAY = 86_400


# -- 1. a stale process's "decline" overwrites a swapped attempt: the old hold is never voided ----


async def test_a_stale_decline_never_overwrites_a_swapped_attempt(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``_renew_one`` checks the attempt of the row's version (``get_renewal``: none yet), then
    takes whatever ``record_renewal`` answers and goes on with it, whatever its state; and
    ``_declined`` writes ``declined`` over the state it was handed (``expected`` defaults to
    ``attempt.state``), not only over ``open``.

    Process B reads no attempt for version v. Before B's ``record_renewal``, process A renews
    the same row: authorization X (key ``…:v{v}``) is swapped in (attempt ``swapped``) and A
    dies before voiding the old authorization W (the case ADR 0019 records ``swapped`` for).
    The lot then closes unsold: the release voids X, the deposit's authorization. B's
    ``record_renewal`` answers the ``swapped`` attempt; B's create under the same key answers
    X, ``canceled``; B "declines" it and writes ``declined`` over ``swapped``. No settling
    pass looks at a ``declined`` attempt: W stays held on the bidder's card, beside a released
    deposit, until it lapses (invariant 2)."""
    wire(container, gateway)
    lot, _, first = await lot_with_deposit(market, clock, days=4.5)  # no bid: unsold
    proc_a = container.auctions
    proc_b = restarted(proc_a)
    clock.advance(4.1 * _DAY)

    async def a_dies(*_: Any, **__: Any) -> bool:
        raise RuntimeError("process A dies between the swap and the void")

    real_get = auction_storage.get_renewal
    raced: list[bool] = []

    async def get_renewal(uow: Any, deposit_id: str, version: int) -> Any:
        found = await real_get(uow, deposit_id, version)
        if not raced:  # B: no attempt at v yet; A and the close run before B records one
            raced.append(True)
            monkeypatch.setattr(proc_a, "_finish_swap", a_dies)
            assert await proc_a.renew_deposits(SYSTEM) == 0  # swapped, then died
            monkeypatch.delattr(proc_a, "_finish_swap")
            await proc_a.close(SYSTEM, lot["id"])  # unsold: the release voids X
        return found

    monkeypatch.setattr(auction_storage, "get_renewal", get_renewal)
    assert await proc_b.renew_deposits(SYSTEM) == 0
    monkeypatch.setattr(auction_storage, "get_renewal", real_get)
    assert raced == [True]

    for _ in range(3):  # every process's settling passes, as in production
        clock.advance(120)
        for p in (proc_a, proc_b, restarted(proc_a)):
            await p.renew_deposits(SYSTEM)
    [attempt] = await renewal_attempts(container)
    assert attempt.old_intent == first
    # What goes wrong: W (the first authorization) is held on the card beside a released
    # deposit, and its attempt reads "declined", which no settling pass looks at.
    assert await held_intents(container, lot["id"]) == [], attempt
    assert attempt.state is RenewalState.DONE, attempt

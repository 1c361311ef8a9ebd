"""An attempt taken up again after a long pause is not closed as unanswered under the process
resuming it, and a renewal whose attempt was closed while its call was in flight is voided
(read-through review of ADR 0019)."""

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
    deposit_intents,
    lot_with_deposit,
    renewal_attempts,
    wire,
)
from tests.payments.fake_gateway import FakeGateway

SYSTEM = Context.system("tests.renewal_unanswered")
_DAY = 86_400


async def _dies(*_: Any, **__: Any) -> Any:
    raise RuntimeError("the process dies before payments records anything")


async def test_a_resumed_open_attempt_is_touched(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wire(container, gateway)
    await lot_with_deposit(market, clock, days=4.5)
    clock.advance(4.1 * _DAY)
    with monkeypatch.context() as m:
        m.setattr(container.payments, "create", _dies)
        assert await container.auctions.renew_deposits(SYSTEM) == 0
    [first] = await renewal_attempts(container)
    clock.advance(11 * 60)  # past the ten minutes after which an open attempt with no intent
    # is closed by the settling pass — unless someone took it up again: seen during the call.
    real_create = container.payments.create
    during: list[int] = []

    async def resumed_call(ctx: Context, new: Any, **kw: Any) -> Any:
        [attempt] = await renewal_attempts(container)
        during.append(attempt.updated_us)
        return await real_create(ctx, new, **kw)

    monkeypatch.setattr(container.payments, "create", resumed_call)
    assert await container.auctions.renew_deposits(SYSTEM) == 1
    assert during == [clock.now_us()]
    assert during[0] > first.updated_us


async def test_a_renewal_whose_attempt_closed_during_its_call_is_voided(
    market: Market,
    container: Container,
    clock: FixedClock,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wire(container, gateway)
    lot, _, first = await lot_with_deposit(market, clock, days=4.5)
    clock.advance(4.1 * _DAY)
    real_create = container.payments.create

    async def closed_meanwhile(ctx: Context, new: Any, **kw: Any) -> Any:
        # The settling pass of another process closes the attempt while this call is in flight.
        [attempt] = await renewal_attempts(container)
        async with container.db.transaction() as uow:
            assert await auction_storage.set_renewal(
                uow, attempt, state=RenewalState.DONE, now_us=uow.clock.now_us()
            )
        gateway.faults.add("timeout_after_charge")
        return await real_create(ctx, new, **kw)

    monkeypatch.setattr(container.payments, "create", closed_meanwhile)
    assert await container.auctions.renew_deposits(SYSTEM) == 0
    monkeypatch.undo()
    renewals = [i for i in await deposit_intents(container, lot["id"]) if i.id != first]
    assert [i.status.value for i in renewals] == ["canceled"]

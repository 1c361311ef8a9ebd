"""The janitor reads its queues round-robin (db.queues): payments it cannot move on — here,
voids of lapsing authorizations the gateway keeps refusing — no longer fill every pass's page
and starve the ones behind them (found by soaking the stateful test: 100 such intents stopped
the janitor for every other payment)."""

from __future__ import annotations

import pytest

from hammerlock.audit.model import Actor, Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.db.queues import Cursors
from hammerlock.payments import service as payments_service
from hammerlock.payments.model import CaptureMethod, IntentStatus
from hammerlock.payments.service import NewIntent, Payments, PaymentsConfig
from hammerlock.risk.model import RiskRules
from hammerlock.risk.service import RulesAssessor
from tests.payments.fake_gateway import FakeGateway

CREATOR = Context(actor=Actor(principal_id="svc", role="service", key_id="key_svc"))
SYSTEM = Context.system("tests.janitor_round_robin")
_BATCH = 4


def _payments(container: Container, gateway: FakeGateway) -> Payments:
    return Payments(
        container.db,
        {"sandbox": gateway},
        config=PaymentsConfig(janitor_grace_s=0),
        risk=RulesAssessor(RiskRules()),
    )


async def test_stuck_payments_do_not_starve_the_ones_behind_them(
    container: Container, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(payments_service, "_JANITOR_BATCH", _BATCH)
    first = _payments(container, FakeGateway())
    for n in range(2 * _BATCH + 1):  # more than two pages of them
        held = await first.create(
            CREATOR,
            NewIntent(
                amount=5_000,
                currency="USD",
                payment_method=f"tok_ok_{n}",
                capture_method=CaptureMethod.MANUAL,
                confirm=True,
            ),
            idempotency_key=f"held-{n}",
        )
        assert held.status is IntentStatus.REQUIRES_CAPTURE
    # A gateway that knows none of those charges refuses every void: once their authorizations
    # lapse, the janitor's voids leave them processing, untouched — oldest in the queue.
    gateway = FakeGateway()
    payments = _payments(container, gateway)
    clock.advance(30 * 86_400)
    for _ in range(3):
        await payments.janitor_pass(SYSTEM)
    gateway.down_for = 3  # a new payment caught by an outage: processing, the newest
    new = await payments.create(
        CREATOR,
        NewIntent(
            amount=5_000,
            currency="USD",
            payment_method="tok_ok_new",
            capture_method=CaptureMethod.MANUAL,
            confirm=True,
        ),
        idempotency_key="new",
    )
    assert new.status is IntentStatus.PROCESSING
    for _ in range(4):  # ceil((2 * batch + 2) / batch) passes reach every stuck intent
        await payments.janitor_pass(SYSTEM)
    after, _ = await payments.get(new.id)
    assert after.status is IntentStatus.REQUIRES_CAPTURE


def test_cursors_go_on_after_a_full_page_and_start_over_after_a_short_one() -> None:
    cursors = Cursors()
    assert cursors.at("q") is None
    cursors.read("q", [(1, "a"), (2, "b")], 2)
    assert cursors.at("q") == (2, "b")
    cursors.read("q", [(3, "c")], 2)  # the end of the queue
    assert cursors.at("q") is None
    cursors.read("q", [], 2)
    assert cursors.at("q") is None

"""The payment intent state machine under random events, faults and clock moves.

A Hypothesis state machine creates intents (automatic and manual capture, cards that succeed,
decline, lack funds or ask for 3-D Secure, amounts that need one or two reviewers), confirms
them again after declines, completes challenges, captures (partially), cancels, refunds,
approves and rejects reviews, re-runs create requests with their Idempotency-Key, injects
gateway faults (a timeout after the charge was made, the gateway down, a timeout after the
capture), runs the janitor and moves the clock past review and authorization deadlines.

After every step: no intent has more than one live charge at the gateway; every intent's
state agrees with its gateway charge; amounts stay ordered (refunded ≤ received ≤ amount); and
the ledger moved by exactly what the intents say (holds = capturable, posted = received,
refunded back = refunded). At the end, with faults cleared, the janitor brings every intent to
rest. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine
from typing import Any, ClassVar, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from hammerlock.audit.model import Actor, Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.errors import DomainError
from hammerlock.ledger import service as ledger
from hammerlock.ledger.errors import AccountNotFound
from hammerlock.payments.gateways.base import ChargeStatus
from hammerlock.payments.model import CaptureMethod, IntentStatus, RefundReason, ReviewStatus
from hammerlock.payments.service import NewIntent, NewRefund, Payments, PaymentsConfig
from hammerlock.risk.model import RiskRules
from hammerlock.risk.service import RulesAssessor
from hammerlock.settings import Settings
from tests.payments.fake_gateway import FakeGateway

T = TypeVar("T")
_examples = itertools.count()
CREATOR = Context(actor=Actor(principal_id="svc", role="service", key_id="key_svc"))
REVIEWERS = [
    Context(actor=Actor(principal_id=f"reviewer{n}", role="reviewer", key_id=f"key_r{n}"))
    for n in (1, 2)
]
SYSTEM = Context.system("tests.janitor")
_OPEN = frozenset(
    {
        IntentStatus.REQUIRES_CAPTURE,
        IntentStatus.REQUIRES_ACTION,
        IntentStatus.REQUIRES_CONFIRMATION,
        IntentStatus.REQUIRES_PAYMENT_METHOD,
        IntentStatus.REQUIRES_REVIEW,
    }
)
GATEWAY = "gateway:sandbox:USD"
DEST = "platform:unallocated:USD"
HELD = {IntentStatus.REQUIRES_CAPTURE, IntentStatus.REQUIRES_REVIEW}


class _Env:
    def __init__(self, app_settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.clock = FixedClock()
        self.container = Container(app_settings, clock=self.clock, background=False)
        self.run(self.container.start())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        try:
            self.run(self.container.stop())
        finally:
            self.loop.close()


class PaymentsMachine(RuleBasedStateMachine):
    env: ClassVar[_Env]
    intents = Bundle("intents")

    def __init__(self) -> None:
        super().__init__()
        self.gateway = FakeGateway()
        self.payments = Payments(
            self.env.container.db,
            {"sandbox": self.gateway},  # type: ignore[dict-item]
            config=PaymentsConfig(janitor_grace_s=0),
            risk=RulesAssessor(RiskRules()),
        )
        self.example = next(_examples)
        self.requests = itertools.count()
        self.ids: list[str] = []
        self.create_keys: dict[str, tuple[str, NewIntent]] = {}
        self.base = {GATEWAY: self._balances(GATEWAY), DEST: self._balances(DEST)}

    def _balances(self, account: str) -> tuple[int, int, int, int]:
        async def read() -> tuple[int, int, int, int]:
            async with self.env.container.db.transaction(write=False) as uow:
                try:
                    b = (await ledger.get_account(uow, account)).balances
                except AccountNotFound:
                    return (0, 0, 0, 0)
                return b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted

        return self.env.run(read())

    def _try(self, coro: Coroutine[Any, Any, T]) -> T | None:
        try:
            return self.env.run(coro)
        except DomainError:
            return None

    # -- rules -----------------------------------------------------------------------------

    @rule(
        target=intents,
        amount=st.sampled_from([5_000, 77_777, 1_200_000, 19_350_000]),
        card=st.sampled_from(["tok_ok", "tok_ok", "tok_decline", "tok_funds", "tok_3ds"]),
        manual=st.booleans(),
    )
    def create(self, amount: int, card: str, manual: bool) -> str:
        idem = f"e{self.example}.r{next(self.requests)}"
        new = NewIntent(
            amount=amount,
            currency="USD",
            payment_method=f"{card}{idem}",
            capture_method=CaptureMethod.MANUAL if manual else CaptureMethod.AUTOMATIC,
            confirm=True,
        )
        intent = self.env.run(self.payments.create(CREATOR, new, idempotency_key=idem))
        self.ids.append(intent.id)
        self.create_keys[intent.id] = (idem, new)
        return intent.id

    @rule(intent=intents)
    def rerun_create(self, intent: str) -> None:
        idem, new = self.create_keys[intent]
        again = self.env.run(self.payments.create(CREATOR, new, idempotency_key=idem))
        assert again.id == intent

    @rule(intent=intents)
    def confirm_with_a_good_card(self, intent: str) -> None:
        self._try(self.payments.confirm(CREATOR, intent, payment_method=f"tok_ok{intent}"))

    @rule(intent=intents, passed=st.booleans())
    def complete_challenge(self, intent: str, passed: bool) -> None:
        for key, charge in self.gateway.charges.items():
            if key.startswith(intent) and charge.status is ChargeStatus.REQUIRES_ACTION:
                self.gateway.complete_challenge(key, passed=passed)

    @rule(intent=intents, fraction=st.sampled_from([None, 1, 2]))
    def capture(self, intent: str, fraction: int | None) -> None:
        current, _ = self.env.run(self.payments.get(intent))
        amount = None if fraction is None else max(1, current.amount_capturable // fraction)
        self._try(self.payments.capture(CREATOR, intent, amount_to_capture=amount))

    @rule(intent=intents)
    def cancel(self, intent: str) -> None:
        self._try(self.payments.cancel(CREATOR, intent, reason=None))

    @rule(intent=intents, part=st.sampled_from([None, 1, 3]))
    def refund(self, intent: str, part: int | None) -> None:
        current, _ = self.env.run(self.payments.get(intent))
        amount = None if part is None else max(1, current.amount_received // 3 * part)
        self._try(
            self.payments.refund(
                CREATOR,
                NewRefund(intent, amount, RefundReason.REQUESTED_BY_CUSTOMER),
                idempotency_key=f"e{self.example}.r{next(self.requests)}",
            )
        )

    @rule(intent=intents, who=st.sampled_from([0, 1]), approve=st.booleans())
    def decide(self, intent: str, who: int, approve: bool) -> None:
        _, review = self.env.run(self.payments.get(intent))
        if review is None or review.status is not ReviewStatus.OPEN:
            return
        self._try(
            self.payments.decide_review(REVIEWERS[who], review.id, approve=approve, note=None)
        )

    @rule(fault=st.sampled_from(["timeout_after_charge", "down", "timeout_after_capture"]))
    def fault(self, fault: str) -> None:
        if fault == "down":
            self.gateway.down_for = 3  # outlasts the in-request retries
        else:
            self.gateway.faults.add(fault)

    @rule()
    def janitor(self) -> None:
        self.env.run(self.payments.janitor_pass(SYSTEM))

    @rule(hours=st.sampled_from([1, 24, 100]))
    def advance(self, hours: int) -> None:
        self.env.clock.advance(hours * 3600)

    # -- invariants ------------------------------------------------------------------------

    def _all(self) -> list[Any]:
        return [self.env.run(self.payments.get(i))[0] for i in self.ids]

    @invariant()
    def one_live_charge_and_state_agrees(self) -> None:
        for intent in self._all():
            live = [
                c
                for k, c in self.gateway.charges.items()
                if k.startswith(intent.id + ".")
                and c.status in {ChargeStatus.AUTHORIZED, ChargeStatus.CAPTURED}
            ]
            assert len(live) <= 1, (intent.id, live)
            assert 0 <= intent.amount_refunded <= intent.amount_received <= intent.amount
            assert intent.amount_received + intent.amount_capturable <= intent.amount
            charge = self.gateway.charges.get(intent.authorize_key or "")
            if intent.status is IntentStatus.SUCCEEDED:
                assert charge is not None
                assert charge.status is ChargeStatus.CAPTURED
                assert charge.amount_captured == intent.amount_received
                assert charge.amount_refunded == intent.amount_refunded
            elif intent.status in HELD:
                assert charge is not None
                assert charge.status is ChargeStatus.AUTHORIZED
                assert intent.amount_capturable == charge.amount
            elif intent.status is IntentStatus.CANCELED and charge is not None:
                assert charge.status is ChargeStatus.VOIDED

    @invariant()
    def ledger_moved_by_what_the_intents_say(self) -> None:
        intents = self._all()
        held = sum(
            i.amount_capturable
            for i in intents
            if i.authorize_key is not None
            and i.status not in {IntentStatus.SUCCEEDED}
            and i.status is not IntentStatus.CANCELED
        )
        received = sum(i.amount_received for i in intents)
        refunded = sum(i.amount_refunded for i in intents)
        base = self.base[GATEWAY]
        now = self._balances(GATEWAY)
        delta = tuple(n - b for n, b in zip(now, base, strict=True))
        assert delta == (held, received, 0, refunded), (delta, held, received, refunded)
        dest_base = self.base[DEST]
        dest = tuple(n - b for n, b in zip(self._balances(DEST), dest_base, strict=True))
        assert dest == (0, refunded, held, received), dest

    def teardown(self) -> None:
        self.gateway.faults.clear()
        self.gateway.down_for = 0
        for _ in range(3):
            self.env.run(self.payments.janitor_pass(SYSTEM))
        for intent in self._all():
            assert intent.status is not IntentStatus.PROCESSING, intent
        # Examples share the database and the clock, not the gateway: an authorization left
        # held would lapse in a later example, whose janitor would void it through a gateway
        # that never saw it (and move that example's balances). Nothing is left open.
        for intent in self._all():
            if intent.status in _OPEN:
                self._try(self.payments.cancel(SYSTEM, intent.id, reason="abandoned"))


def test_payment_intents_under_random_events(app_settings: Settings) -> None:
    env = _Env(app_settings)
    machine = type("PaymentsMachineRun", (PaymentsMachine,), {"env": env})
    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                settings.default,
                max_examples=max(10, settings.default.max_examples // 3),
                stateful_step_count=25,
            ),
        )
    finally:
        env.close()

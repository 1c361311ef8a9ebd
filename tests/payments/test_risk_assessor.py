"""The rules assessor against the database: each score rule reads what it needs, and only when
it is enabled (the default rules run no velocity or history query per payment)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import event

from hammerlock.audit.model import Actor, Context
from hammerlock.bootstrap import Container
from hammerlock.payments.model import IntentStatus, PaymentIntent
from hammerlock.payments.service import NewIntent, Payments, PaymentsConfig
from hammerlock.risk.model import NewCustomerRule, RiskRules, VelocityRule
from hammerlock.risk.service import RulesAssessor
from tests.payments.fake_gateway import FakeGateway

CTX = Context(actor=Actor(principal_id="svc_risk", role="service", key_id="key_risk"))


def install(container: Container, rules: RiskRules) -> None:
    container.gateways["sandbox"] = FakeGateway()
    container.payments = Payments(
        container.db,
        container.gateways,
        config=PaymentsConfig(janitor_grace_s=0),
        risk=RulesAssessor(rules),
    )


async def pay(
    container: Container, n: int, *, card: str, customer: str, amount: int = 5_000
) -> PaymentIntent:
    return await container.payments.create(
        CTX,
        NewIntent(
            amount=amount,
            currency="USD",
            payment_method=card,
            confirm=True,
            customer=customer,
        ),
        idempotency_key=f"risk.{customer}.{n}",
    )


@pytest.mark.parametrize(
    "rules",
    [
        RiskRules(card_velocity=VelocityRule(enabled=True, max_payments=2, points=60)),
        RiskRules(customer_velocity=VelocityRule(enabled=True, max_payments=2, points=60)),
    ],
    ids=["card", "customer"],
)
async def test_velocity_sends_the_third_payment_to_review(
    container: Container, rules: RiskRules
) -> None:
    install(container, _scored(rules))
    card = "tok_ok_velocity"
    statuses = [(await pay(container, n, card=card, customer="cus_v")).status for n in range(3)]
    assert statuses == [
        IntentStatus.SUCCEEDED,
        IntentStatus.SUCCEEDED,
        IntentStatus.REQUIRES_REVIEW,
    ]


async def test_a_new_customer_over_the_amount_goes_to_review_once(container: Container) -> None:
    install(
        container,
        _scored(
            RiskRules(
                new_customer=NewCustomerRule(enabled=True, amounts_minor={"USD": 1_000}, points=60)
            )
        ),
    )
    first = await pay(container, 0, card="tok_ok_new", customer="cus_new")
    assert first.status is IntentStatus.REQUIRES_REVIEW
    other = await pay(container, 0, card="tok_ok_new", customer="cus_small", amount=999)
    assert other.status is IntentStatus.SUCCEEDED


async def test_default_rules_run_no_velocity_or_history_query(container: Container) -> None:
    install(container, RiskRules())
    seen: list[str] = []

    def hook(*args: object) -> None:
        seen.append(str(args[2]))

    sync_engine = container.db.engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", hook)
    try:
        for n in range(3):
            intent = await pay(container, n, card="tok_ok_default", customer="cus_d")
            assert intent.status is IntentStatus.SUCCEEDED
    finally:
        event.remove(sync_engine, "before_cursor_execute", hook)
    assert seen, "the hook saw no statement at all"
    velocity = [s for s in seen if "count(" in s.lower() and "payment_intents" in s]
    history = [s for s in seen if s.startswith("SELECT payment_intents.id FROM payment_intents")]
    assert not velocity
    assert not history


def _scored(rules: RiskRules) -> RiskRules:
    """The same rules with score review on (review over 50 points)."""
    return replace(rules, score_review_enabled=True, score_threshold=50)

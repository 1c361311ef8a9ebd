"""Payments tests run the real service, database and ledger against an in-memory gateway."""

from __future__ import annotations

import pytest

from hammerlock.bootstrap import Container
from hammerlock.payments.service import Payments, PaymentsConfig
from hammerlock.risk.model import RiskRules
from hammerlock.risk.service import RulesAssessor
from tests.payments.fake_gateway import FakeGateway


@pytest.fixture
def gateway(container: Container) -> FakeGateway:
    fake = FakeGateway()
    container.gateways["sandbox"] = fake  # type: ignore[assignment]
    container.payments = Payments(
        container.db,
        container.gateways,
        config=PaymentsConfig(janitor_grace_s=0),
        risk=RulesAssessor(RiskRules()),
    )
    return fake

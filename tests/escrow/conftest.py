"""Escrow tests run the real services, database and ledger against an in-memory gateway.

Orders are opened as the lot close does (``open_order`` inside a transaction), so these tests
do not depend on the auctions package; deposits are manual-capture intents into
``deposit:{bidder}:{lot}`` as the auctions service makes them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest

from hammerlock.audit.model import Actor, Context
from hammerlock.bootstrap import Container
from hammerlock.escrow.model import OrderTerms
from hammerlock.escrow.service import Escrow, EscrowConfig, open_order
from hammerlock.escrow.service import chargeback as escrow_chargeback
from hammerlock.ledger import service as ledger
from hammerlock.ledger.model import AccountFlag, AccountInput
from hammerlock.payments.model import CaptureMethod, Purpose
from hammerlock.payments.service import NewIntent, Payments, PaymentsConfig
from hammerlock.risk.model import RiskRules
from hammerlock.risk.service import RulesAssessor
from tests.payments.fake_gateway import FakeGateway

SYSTEM = Context.system("tests.escrow")
_lots = itertools.count()


def party_ctx(principal: str, role: str) -> Context:
    return Context(actor=Actor(principal_id=principal, role=role, key_id=f"key_{principal}"))


def install(container: Container, gateway: FakeGateway, *, auto_delivery_s: int = 3600) -> Escrow:
    """Put ``gateway`` behind fresh payments and escrow services on ``container``."""
    container.gateways["sandbox"] = gateway
    container.payments = Payments(
        container.db,
        container.gateways,
        config=PaymentsConfig(janitor_grace_s=0),
        risk=RulesAssessor(RiskRules()),
        on_chargeback=escrow_chargeback,
    )
    container.escrow = Escrow(
        container.db,
        container.payments,
        container.gateways,
        config=EscrowConfig(auto_delivery_s=auto_delivery_s, sweeper_grace_s=0),
        card_on_file=_cards.get,
    )
    return container.escrow


class _Cards:
    def __init__(self) -> None:
        self.cards: dict[str, str] = {}

    async def get(self, uow: object, bidder_id: str) -> str | None:  # noqa: ARG002
        return self.cards.get(bidder_id)


_cards = _Cards()


@dataclass(frozen=True, slots=True)
class Opened:
    order_id: str
    terms: OrderTerms


async def make_deposit(
    container: Container, bidder: str, lot: str, amount: int, card: str = "tok_ok_dep"
) -> str:
    """A deposit as the auctions service makes it: manual capture into deposit:{bidder}:{lot}."""
    account = f"deposit:{bidder}:{lot}"
    async with container.db.transaction() as uow:
        await ledger.create_accounts(
            uow,
            None,
            [
                AccountInput(
                    account, "USD", "deposit", AccountFlag.DEBITS_MUST_NOT_EXCEED_CREDITS, "{}"
                )
            ],
            public=False,
        )
    intent = await container.payments.create(
        party_ctx(bidder, "bidder"),
        NewIntent(
            amount=amount,
            currency="USD",
            payment_method=f"{card}_{lot}",
            capture_method=CaptureMethod.MANUAL,
            confirm=True,
            purpose=Purpose.DEPOSIT,
            destination_account=account,
        ),
        idempotency_key=f"dep.{lot}",
    )
    return intent.id


async def open_test_order(
    container: Container,
    *,
    hammer: int = 100_000,
    premium_bps: int = 2_500,
    commission_bps: int = 1_000,
    deposit: int | None = None,
    window_s: int = 3_600,
    inspection_s: int = 600,
    buyer: str = "bid_buyer",
    seller: str = "sel_seller",
    runner_up: tuple[str, int] | None = None,
    card: str | None = "tok_ok_card",
) -> Opened:
    lot = f"lot_{next(_lots):08d}"
    if card is None:
        _cards.cards.pop(buyer, None)
    else:
        _cards.cards[buyer] = f"{card}_{lot}"
    deposit_id = None
    if deposit is not None:
        deposit_id = await make_deposit(container, buyer, lot, deposit)
    terms = OrderTerms(
        lot_id=lot,
        seller_id=seller,
        buyer_id=buyer,
        currency="USD",
        hammer_price=hammer,
        buyer_premium_bps=premium_bps,
        seller_commission_bps=commission_bps,
        payment_window_s=window_s,
        inspection_period_s=inspection_s,
        deposit_intent_id=deposit_id,
        runner_up_bidder_id=runner_up[0] if runner_up else None,
        runner_up_amount=runner_up[1] if runner_up else None,
    )
    async with container.db.transaction() as uow:
        order_id = await open_order(uow, SYSTEM, terms)
    return Opened(order_id, terms)


@pytest.fixture
def gateway(container: Container) -> FakeGateway:
    fake = FakeGateway()
    install(container, fake)
    return fake

"""Chargebacks on an order's payment (docs/escrow.md "Chargebacks", ADR 0012): booked
``platform:chargebacks → gateway`` once per dispute; an order still in escrow turns ``disputed``
(release frozen) and its resolution pays the chargeback back from escrow. The sandbox gateway
raises one through its signed webhook, received at ``POST /v1/webhooks/sandbox``. SQLite and
PostgreSQL."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.escrow.errors import InvalidTransition, RefundOutOfRange, RefundTooLarge
from hammerlock.escrow.model import Order, OrderStatus
from hammerlock.ledger.check import run_check
from hammerlock.payments.gateways.base import (
    DISPUTE_CREATED,
    AuthorizeRequest,
    CardData,
    GatewayRejected,
    WebhookEvent,
)
from hammerlock.security.permissions import Role
from hammerlock.vault.sandbox import SandboxGateway
from hammerlock.vault.sandbox.gateway import verify_webhook
from tests.conftest import Keys
from tests.escrow.conftest import SYSTEM, install, open_test_order
from tests.escrow.test_escrow_flow import BUYER, OPERATOR, SELLER, balance
from tests.payments.fake_gateway import FakeGateway

SECRET = "whsec_chargebacks_0123456789"


def dispute(key: str, dispute_id: str, amount: int) -> WebhookEvent:
    return WebhookEvent(
        gateway="sandbox",
        event_id=f"evt_{dispute_id}",
        type=DISPUTE_CREATED,
        gateway_key=key,
        charge_id=None,
        dispute_id=dispute_id,
        amount=amount,
    )


async def _delivered(container: Container) -> tuple[Order, str]:
    escrow = container.escrow
    opened = await open_test_order(container, hammer=100_000, deposit=20_000)
    order, intent = await escrow.pay(BUYER, opened.order_id, payment_method=None)
    assert intent is not None
    assert intent.authorize_key is not None
    await escrow.ship(SELLER, order.id, carrier="dhl", tracking="1234567890")
    order = await escrow.confirm_delivery(BUYER, order.id)
    return order, intent.authorize_key


async def test_a_chargeback_freezes_release_and_the_resolution_covers_it(
    container: Container, gateway: FakeGateway, clock: FixedClock
) -> None:
    escrow, payments = container.escrow, container.payments
    order, key = await _delivered(container)
    assert await payments.chargeback(SYSTEM, "sandbox", dispute(key, "dp_1", 50_000))
    assert not await payments.chargeback(SYSTEM, "sandbox", dispute(key, "dp_1", 50_000))
    order = (await escrow.get(SYSTEM, order.id)).order
    assert order.status is OrderStatus.DISPUTED
    assert order.dispute_reason == "chargeback"
    assert order.chargeback_amount == 50_000
    assert await balance(container, "platform:chargebacks:USD") == -50_000
    assert await balance(container, f"escrow:{order.id}") == 125_000  # still all held
    # frozen: no accept, no release at the end of the inspection period
    with pytest.raises(InvalidTransition):
        await escrow.accept(BUYER, order.id)
    clock.advance(601)
    assert (await escrow.sweep(SYSTEM))["released"] == 0
    # the resolution refunds at least what the bank took back; escrow pays the bank's share
    with pytest.raises(RefundOutOfRange):
        await escrow.resolve(OPERATOR, order.id, refund_amount=49_999)
    order = await escrow.resolve(OPERATOR, order.id, refund_amount=60_000)
    assert order.status is OrderStatus.RELEASED
    assert order.refunded_amount == 60_000
    assert order.chargeback_covered == 50_000
    assert sum(r.amount for r in gateway.refunds.values()) == 10_000  # the rest by card
    assert await balance(container, "platform:chargebacks:USD") == 0
    assert await balance(container, f"escrow:{order.id}") == 0
    assert order.released_to_seller + order.released_to_revenue + 60_000 == order.total
    report = await run_check(container.db)
    assert report.ok, report.lines()


async def test_a_chargeback_after_release_is_booked_and_left_to_an_operator(
    container: Container, gateway: FakeGateway
) -> None:
    del gateway
    escrow, payments = container.escrow, container.payments
    order, key = await _delivered(container)
    order = await escrow.accept(BUYER, order.id)
    seller = await balance(container, "seller:sel_seller:payable:USD")
    assert await payments.chargeback(SYSTEM, "sandbox", dispute(key, "dp_2", 30_000))
    order = (await escrow.get(SYSTEM, order.id)).order
    assert order.status is OrderStatus.RELEASED  # a terminal state is never left
    assert order.chargeback_amount == 30_000
    assert await balance(container, "platform:chargebacks:USD") == -30_000
    assert await balance(container, "seller:sel_seller:payable:USD") == seller
    # a refund after release may not give back what the bank already did
    with pytest.raises(RefundTooLarge):
        await escrow.refund_after_release(
            OPERATOR, order.id, amount=95_001, reason="x", request_key="k"
        )


class SandboxSigned(FakeGateway):
    """The fake gateway for payments, verifying inbound webhooks as the sandbox signs them."""

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        return verify_webhook(SECRET.encode(), headers, body, now_s=self.clock.now_us() // 10**6)

    def __init__(self, clock: FixedClock) -> None:
        super().__init__()
        self.clock = clock


async def test_the_sandbox_raises_a_chargeback_through_its_webhook(
    container: Container,
    client: httpx.AsyncClient,
    keys: Keys,
    clock: FixedClock,
    tmp_path: Path,
) -> None:
    install(container, SandboxSigned(clock))
    delivered: list[httpx.Request] = []

    def receive(request: httpx.Request) -> httpx.Response:
        delivered.append(request)
        return httpx.Response(200)

    sandbox = SandboxGateway(
        tmp_path,
        public_base_url="http://vault.test",
        clock=clock,
        webhook_url="https://hooks.example/sandbox",
        webhook_secret=SECRET,
        webhook_client=httpx.AsyncClient(transport=httpx.MockTransport(receive)),
    )
    try:
        order, key = await _delivered(container)
        intent, _ = await container.payments.get(order.payment_intent_id or "")
        # the sandbox holds the same captured charge under the same key (in production the
        # vault forwards the card to it; here the fake gateway took the payment)
        await sandbox.authorize(
            AuthorizeRequest(
                gateway_key=key,
                amount=intent.amount,
                currency="USD",
                source=CardData("4242424242424242", 12, 2034, "123"),
                capture=True,
            )
        )
        dispute_id = await sandbox.open_dispute(key, 25_000)
        await sandbox.flush_webhooks()
        [event] = [r for r in delivered if DISPUTE_CREATED.encode() in r.content]
        headers = {k: v for k, v in event.headers.items() if k.lower() != "content-length"}
        r = await client.post("/v1/webhooks/sandbox", content=event.content, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json() == {"received": True, "duplicate": False}
        again = await client.post("/v1/webhooks/sandbox", content=event.content, headers=headers)
        assert again.json()["duplicate"] is True
        operator = await keys.headers(Role.OPERATOR)
        got = (await client.get(f"/v1/orders/{order.id}", headers=operator)).json()
        assert got["status"] == "disputed"
        assert got["chargebacks"]["amount"] == 25_000
        assert [e["event"] for e in got["timeline"]][-1] == "chargeback"
        assert got["timeline"][-1]["details"]["dispute"] == dispute_id
        assert await balance(container, "platform:chargebacks:USD") == -25_000
    finally:
        await sandbox.aclose()


async def test_a_dispute_resent_with_another_amount_is_acknowledged_not_rebooked(
    container: Container, gateway: FakeGateway
) -> None:
    """A gateway re-sending a dispute with other terms must not get a 5xx loop: the first
    booking stands and the change is audited as a failure for an operator."""
    del gateway
    payments = container.payments
    order, key = await _delivered(container)
    assert await payments.chargeback(SYSTEM, "sandbox", dispute(key, "dp_9", 40_000))
    changed = replace(dispute(key, "dp_9", 45_000), event_id="evt_dp_9_again")
    assert not await payments.chargeback(SYSTEM, "sandbox", changed)
    assert await balance(container, "platform:chargebacks:USD") == -40_000
    order = (await container.escrow.get(SYSTEM, order.id)).order
    assert order.chargeback_amount == 40_000
    for bad in (0, -5, 2**53):
        with pytest.raises(GatewayRejected):
            await payments.chargeback(SYSTEM, "sandbox", dispute(key, "dp_bad", bad))

"""A settlement writes the same rows on both backends.

On PostgreSQL an order's row, its timeline entry, audit event and webhook go in one statement
(and a payment intent's UPDATE carries its transition's audit event and webhook): the rows,
their order and their contents are those SQLite writes one statement at a time.
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa

from hammerlock.bootstrap import Container
from hammerlock.escrow.model import OrderStatus, PayoutStatus
from tests.escrow.conftest import open_test_order, party_ctx
from tests.payments.fake_gateway import FakeGateway

BUYER = party_ctx("bid_buyer", "bidder")
SELLER = party_ctx("sel_seller", "seller")

TIMELINE = [
    ("created", "awaiting_payment"),
    ("payment_requested", "awaiting_payment"),
    ("deposit_captured", "awaiting_payment"),
    ("payment_started", "awaiting_payment"),
    ("paid", "paid"),
    ("shipped", "shipped"),
    ("delivered", "delivered"),
    ("released", "released"),
    ("payout_paid", "released"),
]
AUDIT = [
    "payments.intent.create",  # the deposit, as the auctions service makes it
    "payments.intent.confirm",
    "payments.intent.authorized",
    "escrow.order.created",
    "escrow.order.payment_requested",
    "payments.intent.capture",
    "payments.intent.captured",
    "escrow.order.deposit_captured",
    "payments.intent.create",
    "escrow.order.payment_started",
    "payments.intent.confirm",
    "payments.intent.authorized",
    "payments.intent.captured",
    "escrow.order.paid",
    "escrow.order.shipped",
    "escrow.order.delivered",
    "escrow.order.released",
    "escrow.order.payout_paid",
]
WEBHOOKS = [
    "order.created",
    "order.payment_requested",
    "payment_intent.succeeded",
    "order.deposit_captured",
    "order.payment_started",
    "payment_intent.succeeded",
    "order.paid",
    "order.shipped",
    "order.delivered",
    "order.released",
    "order.payout_paid",
]


async def _rows(container: Container, sql: str, **params: Any) -> list[Any]:
    async with container.db.read() as uow:
        return list((await uow.conn.execute(sa.text(sql), params)).all())


async def test_a_settlement_writes_the_same_rows_on_both_backends(
    container: Container, gateway: FakeGateway
) -> None:
    del gateway
    escrow = container.escrow
    start = await _rows(container, "SELECT coalesce(max(id), 0) FROM audit_outbox")
    opened = await open_test_order(container, hammer=100_000, deposit=20_000)
    order, intent = await escrow.pay(BUYER, opened.order_id, payment_method=None)
    assert intent is not None
    assert order.status is OrderStatus.PAID
    order = await escrow.ship(SELLER, order.id, carrier="ups", tracking="1Z999AA10123456784")
    order = await escrow.confirm_delivery(BUYER, order.id)
    order = await escrow.accept(BUYER, order.id)
    assert order.status is OrderStatus.RELEASED
    assert order.payout_status is PayoutStatus.PAID

    timeline = await _rows(
        container,
        "SELECT seq, event, status, details FROM escrow_order_events WHERE order_id = :o "
        "ORDER BY seq",
        o=order.id,
    )
    assert [(e, s) for _, e, s, _ in timeline] == TIMELINE
    assert [seq for seq, *_ in timeline] == list(range(1, len(TIMELINE) + 1))
    assert orjson.loads(timeline[-1][3])["amount"] == order.payout_amount

    ours = {order.id, intent.id, opened.terms.deposit_intent_id}
    audit = await _rows(
        container,
        "SELECT action, event FROM audit_outbox WHERE id > :start ORDER BY id",
        start=start[0][0],
    )
    actions = [a for a, event in audit if orjson.loads(event)["resource"]["id"] in ours]
    assert actions == AUDIT
    # each audit event names the state it recorded
    released = [orjson.loads(e) for a, e in audit if a == "escrow.order.released"]
    assert released[0]["details"]["status"] == "released"

    hooks = await _rows(container, "SELECT type, payload FROM webhook_events ORDER BY seq")
    mine = [t for t, payload in hooks if orjson.loads(payload)["data"].get("id") in ours]
    assert mine == WEBHOOKS
    last = orjson.loads(hooks[-1][1])
    assert (last["type"], last["data"]["status"]) == ("order.payout_paid", "released")

    view = await escrow.get(BUYER, order.id)
    assert view.order == order
    assert view.payment_intent is not None
    assert view.payment_intent.id == intent.id
    assert [t["event"] for t in view.timeline] == [e for e, _ in TIMELINE]

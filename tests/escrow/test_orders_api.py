"""The order routes over HTTP: each action, ownership, idempotency, errors and the money."""

from __future__ import annotations

import secrets
import string
from typing import Any

import httpx
import pytest

from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.security.permissions import Role
from tests.conftest import Keys
from tests.escrow.conftest import SYSTEM, open_test_order
from tests.payments.fake_gateway import FakeGateway

BUYER, SELLER = "bid_api_buyer", "sel_api_seller"


def _idem() -> dict[str, str]:
    # Letters only: about 1 in 1,000 uuid4 strings holds a Luhn-valid card-like digit run
    # between its dashes, which the API's PAN guard refuses (400 pan_not_allowed).
    return {"Idempotency-Key": "".join(secrets.choice(string.ascii_letters) for _ in range(32))}


class Parties:
    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.headers: dict[str, dict[str, str]] = {}

    async def setup(self) -> None:
        for name, role, principal in (
            ("buyer", Role.BIDDER, BUYER),
            ("other_bidder", Role.BIDDER, "bid_someone_else"),
            ("runner_up", Role.BIDDER, "bid_runner_up"),
            ("seller", Role.SELLER, SELLER),
            ("other_seller", Role.SELLER, "sel_someone_else"),
            ("operator", Role.OPERATOR, "op_api"),
            ("service", Role.SERVICE, "svc_market"),
        ):
            self.headers[name] = (await self.keys.create(role, principal))["headers"]

    def __call__(self, name: str, idem: bool = True) -> dict[str, str]:
        return {**self.headers[name], **(_idem() if idem else {})}


@pytest.fixture
async def parties(keys: Keys, gateway: FakeGateway) -> Parties:
    del gateway
    p = Parties(keys)
    await p.setup()
    return p


async def _post(
    client: httpx.AsyncClient, order_id: str, action: str, headers: dict[str, str], body: Any = None
) -> httpx.Response:
    return await client.post(f"/v1/orders/{order_id}/{action}", json=body or {}, headers=headers)


async def _paid_order(
    client: httpx.AsyncClient, container: Container, parties: Parties, **kw: Any
) -> str:
    opened = await open_test_order(container, buyer=BUYER, seller=SELLER, **kw)
    r = await _post(client, opened.order_id, "pay", parties("buyer"))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "paid"
    return opened.order_id


async def test_pay_ship_deliver_dispute_resolve(
    client: httpx.AsyncClient, container: Container, parties: Parties
) -> None:
    opened = await open_test_order(container, buyer=BUYER, seller=SELLER, deposit=20_000)
    order_id = opened.order_id
    got = (await client.get(f"/v1/orders/{order_id}", headers=parties("buyer", False))).json()
    assert got["status"] == "awaiting_payment"
    assert got["amounts"] == {
        "hammer_price": 100_000,
        "buyer_premium": 25_000,
        "buyer_premium_bps": 2_500,
        "seller_commission": 10_000,
        "seller_commission_bps": 1_000,
        "total": 125_000,
        "seller_net": 90_000,
    }
    pay_headers = parties("buyer")
    r = await _post(client, order_id, "pay", pay_headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "paid"
    assert body["escrow_balance"] == 125_000
    assert body["deposit"]["in_escrow"] == 20_000
    assert body["payment_intent"]["status"] == "succeeded"
    assert body["payment_intent"]["amount"] == 105_000
    again = await _post(client, order_id, "pay", pay_headers)
    assert again.headers.get("Idempotent-Replayed") == "true"

    r = await _post(
        client, order_id, "ship", parties("seller"), {"carrier": "ups", "tracking_number": "1Z9"}
    )
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_tracking_number"
    r = await _post(
        client,
        order_id,
        "ship",
        parties("seller"),
        {"carrier": "ups", "tracking_number": "1Z999AA10123456784"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["shipping"]["carrier"] == "ups"
    r = await _post(client, order_id, "confirm_delivery", parties("buyer"))
    assert r.json()["status"] == "delivered"
    r = await _post(client, order_id, "dispute", parties("buyer"), {"reason": "cracked case"})
    assert r.json()["status"] == "disputed"
    r = await _post(client, order_id, "resolve", parties("operator"), {"refund_amount": 200_000})
    assert r.status_code == 422
    assert r.json()["code"] == "refund_exceeds_total"
    r = await _post(client, order_id, "resolve", parties("operator"), {"refund_amount": 115_000})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "released"
    assert body["refunded_amount"] == 115_000
    assert body["released"] == {"to_seller": 7_200, "to_revenue": 2_800}
    assert body["payout"]["status"] == "paid"
    assert body["escrow_balance"] == 0
    assert {r["payment_intent"] for r in body["refunds"]} == {
        body["payment_intent_id"],
        opened.terms.deposit_intent_id,
    }
    events = [e["event"] for e in body["timeline"]]
    assert events == [
        "created",
        "payment_requested",
        "deposit_captured",
        "payment_started",
        "paid",
        "shipped",
        "delivered",
        "disputed",
        "resolved",
        "refund_started",
        "refund_started",
        "payout_paid",
    ]


async def test_full_refund(
    client: httpx.AsyncClient, container: Container, parties: Parties, gateway: FakeGateway
) -> None:
    order_id = await _paid_order(client, container, parties)
    await _post(
        client,
        order_id,
        "ship",
        parties("seller"),
        {"carrier": "dhl", "tracking_number": "1234567890"},
    )
    await _post(client, order_id, "confirm_delivery", parties("buyer"))
    await _post(client, order_id, "dispute", parties("buyer"), {"reason": "not as described"})
    r = await _post(client, order_id, "resolve", parties("operator"), {"refund_amount": 125_000})
    body = r.json()
    assert body["status"] == "refunded"
    assert body["escrow_balance"] == 0
    assert body["payout"]["status"] == "none"
    assert sum(x.amount for x in gateway.refunds.values()) == 125_000


async def test_accept_early_from_shipped_releases_and_pays_out(
    client: httpx.AsyncClient, container: Container, parties: Parties
) -> None:
    order_id = await _paid_order(client, container, parties)
    await _post(
        client,
        order_id,
        "ship",
        parties("seller"),
        {"carrier": "usps", "tracking_number": "9400111899223197428490"},
    )
    r = await _post(client, order_id, "accept", parties("buyer"))
    body = r.json()
    assert body["status"] == "released"
    assert body["released"] == {"to_seller": 90_000, "to_revenue": 35_000}
    assert body["payout"]["status"] == "paid"


async def test_illegal_transitions_are_409(
    client: httpx.AsyncClient, container: Container, parties: Parties
) -> None:
    opened = await open_test_order(container, buyer=BUYER, seller=SELLER)
    for action, who, body in (
        ("accept", "buyer", {}),
        ("confirm_delivery", "buyer", {}),
        ("dispute", "buyer", {"reason": "early"}),
        ("ship", "seller", {"carrier": "dhl", "tracking_number": "1234567890"}),
        ("resolve", "operator", {"refund_amount": 0}),
    ):
        r = await _post(client, opened.order_id, action, parties(who), body)
        assert r.status_code == 409, (action, r.text)
        assert r.json()["code"] == "invalid_state_transition"


async def test_dispute_after_inspection_is_409_and_the_sweeper_releases(
    client: httpx.AsyncClient, container: Container, parties: Parties, clock: FixedClock
) -> None:
    order_id = await _paid_order(client, container, parties)
    await _post(
        client,
        order_id,
        "ship",
        parties("seller"),
        {"carrier": "dhl", "tracking_number": "1234567890"},
    )
    await _post(client, order_id, "confirm_delivery", parties("buyer"))
    clock.advance(600)
    r = await _post(client, order_id, "dispute", parties("buyer"), {"reason": "late"})
    assert r.status_code == 409
    await container.escrow.sweep(SYSTEM)
    got = (await client.get(f"/v1/orders/{order_id}", headers=parties("seller", False))).json()
    assert got["status"] == "released"
    assert got["payout"]["status"] == "paid"


async def test_auto_delivery_after_shipping_silence(
    client: httpx.AsyncClient, container: Container, parties: Parties, clock: FixedClock
) -> None:
    order_id = await _paid_order(client, container, parties)
    await _post(
        client,
        order_id,
        "ship",
        parties("seller"),
        {"carrier": "dhl", "tracking_number": "1234567890"},
    )
    clock.advance(3_600)  # the fixture's auto-delivery period
    counts = await container.escrow.sweep(SYSTEM)
    assert counts["delivered"] == 1
    got = (await client.get(f"/v1/orders/{order_id}", headers=parties("buyer", False))).json()
    assert got["status"] == "delivered"
    assert got["timeline"][-1]["actor"] == "tests.escrow"


async def test_ownership(client: httpx.AsyncClient, container: Container, parties: Parties) -> None:
    order_id = await _paid_order(client, container, parties)
    url = f"/v1/orders/{order_id}"
    assert (await client.get(url, headers=parties("other_bidder", False))).status_code == 404
    assert (await client.get(url, headers=parties("other_seller", False))).status_code == 404
    assert (await client.get(url, headers=parties("operator", False))).status_code == 200
    ship = {"carrier": "dhl", "tracking_number": "1234567890"}
    r = await _post(client, order_id, "ship", parties("other_seller"), ship)
    assert r.status_code == 404
    assert r.json()["code"] == "order_not_found"
    assert (await _post(client, order_id, "ship", parties("buyer"), ship)).status_code == 403
    r = await _post(client, order_id, "ship", parties("service"), ship)  # on the seller's behalf
    assert r.status_code == 200
    r = await _post(client, order_id, "confirm_delivery", parties("other_bidder"))
    assert r.status_code == 404
    r = await _post(client, order_id, "resolve", parties("buyer"), {"refund_amount": 0})
    assert r.status_code == 403


async def test_idempotency_key_required(
    client: httpx.AsyncClient, container: Container, parties: Parties
) -> None:
    opened = await open_test_order(container, buyer=BUYER, seller=SELLER)
    r = await _post(client, opened.order_id, "pay", parties("buyer", False))
    assert r.status_code == 400
    assert r.json()["code"] == "idempotency_key_required"


@pytest.mark.parametrize(
    ("carrier", "number"),
    [
        ("ups", "1Z12345E0205271688"),
        ("fedex", "449044304137821"),
        ("fedex", "123456789012"),
        ("usps", "9261290100130435082876"),
        ("usps", "92612901001304350828"),
        ("dhl", "5709083440"),
    ],
)
async def test_real_tracking_numbers_pass_the_card_number_guard(
    client: httpx.AsyncClient, container: Container, parties: Parties, carrier: str, number: str
) -> None:
    order_id = await _paid_order(client, container, parties)
    r = await _post(
        client, order_id, "ship", parties("seller"), {"carrier": carrier, "tracking_number": number}
    )
    assert r.status_code == 200, r.text
    assert r.json()["shipping"]["tracking_number"] == number


async def test_a_card_number_as_tracking_number_is_refused_unread(
    client: httpx.AsyncClient, container: Container, parties: Parties
) -> None:
    order_id = await _paid_order(client, container, parties)
    r = await _post(
        client,
        order_id,
        "ship",
        parties("seller"),
        {"carrier": "fedex", "tracking_number": "371449635398431"},  # an Amex test PAN
    )
    assert r.status_code == 400
    assert r.json()["code"] == "pan_not_allowed"


async def test_three_d_secure_payment_waits_then_the_sweeper_marks_paid(
    client: httpx.AsyncClient, container: Container, parties: Parties, gateway: FakeGateway
) -> None:
    opened = await open_test_order(container, buyer=BUYER, seller=SELLER, card="tok_3ds")
    r = await _post(client, opened.order_id, "pay", parties("buyer"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "awaiting_payment"
    assert body["payment_intent"]["status"] == "requires_action"
    key = next(iter(gateway.charges))
    gateway.complete_challenge(key, passed=True)
    await container.payments.janitor_pass(SYSTEM)
    counts = await container.escrow.sweep(SYSTEM)
    assert counts["paid"] == 1
    got = await client.get(f"/v1/orders/{opened.order_id}", headers=parties("buyer", False))
    assert got.json()["status"] == "paid"


async def test_no_card_on_file_needs_a_payment_method(
    client: httpx.AsyncClient, container: Container, parties: Parties
) -> None:
    opened = await open_test_order(container, buyer="bid_no_card", seller=SELLER, card=None)
    headers = (await parties.keys.create(Role.BIDDER, "bid_no_card"))["headers"]
    r = await _post(client, opened.order_id, "pay", {**headers, **_idem()})
    assert r.status_code == 422
    assert r.json()["code"] == "payment_method_required"
    r = await _post(
        client, opened.order_id, "pay", {**headers, **_idem()}, {"payment_method": "tok_ok_x"}
    )
    assert r.json()["status"] == "paid"


async def test_default_and_second_chance_over_http(
    client: httpx.AsyncClient, container: Container, parties: Parties, clock: FixedClock
) -> None:
    opened = await open_test_order(
        container,
        buyer=BUYER,
        seller=SELLER,
        deposit=10_000,
        runner_up=("bid_runner_up", 95_000),
    )
    clock.advance(3_601)
    r = await _post(client, opened.order_id, "pay", parties("buyer"))
    assert r.status_code == 409
    await container.escrow.sweep(SYSTEM)
    got = await client.get(f"/v1/orders/{opened.order_id}", headers=parties("buyer", False))
    body = got.json()
    assert body["status"] == "defaulted"
    assert body["second_chance"]["status"] == "open"
    url = f"/v1/orders/{opened.order_id}/second_chance/accept"
    assert (await client.post(url, json={}, headers=parties("other_bidder"))).status_code == 404
    r = await client.post(url, json={}, headers=parties("runner_up"))
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["buyer_id"] == "bid_runner_up"
    assert new["amounts"]["hammer_price"] == 95_000
    assert new["parent_order"] == opened.order_id
    r = await client.post(url, json={}, headers=parties("runner_up"))
    assert r.status_code == 409
    assert r.json()["code"] == "second_chance_not_open"


async def test_cancel_and_refund_after_release_over_http(
    client: httpx.AsyncClient, container: Container, parties: Parties
) -> None:
    # cancel: operator only, a reason, Idempotency-Key; 409 from shipped onwards
    order_id = await _paid_order(client, container, parties)
    r = await _post(client, order_id, "cancel", parties("operator", False), {"reason": "x"})
    assert r.status_code == 400, r.text
    r = await _post(client, order_id, "cancel", parties("seller"), {"reason": "x"})
    assert r.status_code == 403, r.text
    r = await _post(client, order_id, "cancel", parties("operator"), {"reason": "x" * 1_001})
    assert r.status_code == 422, r.text
    r = await _post(client, order_id, "cancel", parties("operator"), {"reason": "no stock"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "refunded"
    assert r.json()["refunds"][0]["kind"] == "cancellation"
    shipped = await _paid_order(client, container, parties)
    ship = {"carrier": "dhl", "tracking_number": "1234567890"}
    assert (await _post(client, shipped, "ship", parties("seller"), ship)).status_code == 200
    r = await _post(client, shipped, "cancel", parties("operator"), {"reason": "late"})
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "invalid_state_transition"
    # refund after release: amount within what is left, replayed by its Idempotency-Key
    assert (await _post(client, shipped, "accept", parties("buyer"))).status_code == 200
    too_much = {"amount": 125_001, "reason": "broken"}
    r = await _post(client, shipped, "refund", parties("operator"), too_much)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "refund_exceeds_total"
    assert r.json()["refundable"] == 125_000
    r = await _post(client, shipped, "refund", parties("operator"), {"amount": 0, "reason": "x"})
    assert r.status_code == 422, r.text
    headers = parties("operator")
    body = {"amount": 10_000, "reason": "broken"}
    first = await _post(client, shipped, "refund", headers, body)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "released"
    assert first.json()["refunded_amount"] == 10_000
    again = await _post(client, shipped, "refund", headers, body)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["refunded_amount"] == 10_000
    r = await _post(client, order_id, "refund", parties("operator"), body)
    assert r.status_code == 409, r.text  # refunded (canceled), not released

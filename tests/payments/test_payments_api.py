"""Payment intents end to end through HTTP, on SQLite and PostgreSQL, with the real ledger."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from hammerlock.audit.model import Actor, Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.ledger import service as ledger
from hammerlock.payments.model import RefundReason
from hammerlock.payments.service import NewIntent, NewRefund
from hammerlock.security.permissions import Role
from tests.conftest import Keys
from tests.payments.fake_gateway import FakeGateway

pytestmark = pytest.mark.usefixtures("gateway")


def _idem() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


async def _pay(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    *,
    token: str = "tok_ok1",  # noqa: S107 - a vault token id, not a secret
    amount: int = 5000,
    idem: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    body = {"amount": amount, "currency": "USD", "payment_method": token, "confirm": True, **extra}
    return await client.post(
        "/v1/payment_intents", json=body, headers={**headers, **(idem or _idem())}
    )


async def _balance(container: Container, account: str) -> tuple[int, int, int, int]:
    async with container.db.transaction(write=False) as uow:
        b = (await ledger.get_account(uow, account)).balances
    return b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted


async def test_automatic_payment_succeeds_and_posts_the_ledger(
    client: httpx.AsyncClient, keys: Keys, container: Container, gateway: FakeGateway
) -> None:
    service = await keys.headers(Role.SERVICE)
    r = await _pay(client, service)
    assert r.status_code == 200, r.text
    pi = r.json()
    assert pi["status"] == "succeeded"
    assert pi["amount_received"] == 5000
    assert pi["card"] == {"brand": "visa", "last4": "4242", "country": "US"}
    assert await _balance(container, "gateway:sandbox:USD") == (0, 5000, 0, 0)
    assert await _balance(container, "platform:unallocated:USD") == (0, 0, 0, 5000)
    assert gateway.authorizations() == 1
    got = await client.get(f"/v1/payment_intents/{pi['id']}", headers=service)
    assert got.json()["status"] == "succeeded"


async def test_decline_answers_200_with_the_error(
    client: httpx.AsyncClient, keys: Keys, container: Container
) -> None:
    r = await _pay(client, await keys.headers(Role.SERVICE), token="tok_decline1")
    assert r.status_code == 200
    pi = r.json()
    assert pi["status"] == "requires_payment_method"
    assert pi["last_payment_error"] == {
        "code": "card_declined",
        "message": "declined",
        "decline_code": "generic_decline",
    }
    # a new card on the same intent
    again = await client.post(
        f"/v1/payment_intents/{pi['id']}/confirm",
        json={"payment_method": "tok_ok2"},
        headers={**await keys.headers(Role.SERVICE), **_idem()},
    )
    assert again.json()["status"] == "succeeded", again.text
    assert again.json()["last_payment_error"] is None


async def test_three_d_secure_then_the_janitor_moves_it_on(
    client: httpx.AsyncClient, keys: Keys, container: Container, gateway: FakeGateway
) -> None:
    service = await keys.headers(Role.SERVICE)
    r = await _pay(client, service, token="tok_3ds1", return_url="https://shop.test/back")
    pi = r.json()
    assert pi["status"] == "requires_action"
    assert pi["next_action"]["type"] == "three_d_secure"
    assert pi["next_action"]["url"].startswith("http")
    [key] = gateway.charges
    gateway.complete_challenge(key, passed=True)
    counts = await container.payments.janitor_pass(Context.system("test"))
    assert counts["challenges"] == 1
    got = await client.get(f"/v1/payment_intents/{pi['id']}", headers=service)
    assert got.json()["status"] == "succeeded"


async def test_failed_challenge_returns_to_requires_payment_method(
    client: httpx.AsyncClient, keys: Keys, container: Container, gateway: FakeGateway
) -> None:
    service = await keys.headers(Role.SERVICE)
    pi = (await _pay(client, service, token="tok_3ds2")).json()
    [key] = gateway.charges
    gateway.complete_challenge(key, passed=False)
    await container.payments.janitor_pass(Context.system("test"))
    got = (await client.get(f"/v1/payment_intents/{pi['id']}", headers=service)).json()
    assert got["status"] == "requires_payment_method"
    assert got["last_payment_error"]["code"] == "authentication_required"


async def test_timeout_is_pending_not_replayed_and_a_retry_charges_once(
    client: httpx.AsyncClient, keys: Keys, container: Container, gateway: FakeGateway
) -> None:
    service = await keys.headers(Role.SERVICE)
    idem = _idem()
    gateway.faults.add("timeout_after_charge")
    first = await _pay(client, service, idem=idem)
    assert first.status_code == 202
    assert first.headers["Hammerlock-Outcome"] == "pending"
    assert first.json()["status"] == "processing"
    read = await client.get(f"/v1/payment_intents/{first.json()['id']}", headers=service)
    assert read.status_code == 200  # a read is never 202: it shows the intent as it stands
    assert read.json()["status"] == "processing"
    retry = await _pay(client, service, idem=idem)
    assert retry.status_code == 200, retry.text
    assert "Idempotent-Replayed" not in retry.headers
    assert retry.json()["id"] == first.json()["id"]
    assert retry.json()["status"] == "succeeded"
    replay = await _pay(client, service, idem=idem)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == retry.json()
    assert len(gateway.charges) == 1
    assert await _balance(container, "gateway:sandbox:USD") == (0, 5000, 0, 0)


async def test_the_janitor_resolves_an_intent_nobody_retries(
    client: httpx.AsyncClient, keys: Keys, container: Container, gateway: FakeGateway
) -> None:
    service = await keys.headers(Role.SERVICE)
    gateway.faults.add("timeout_after_charge")
    pi = (await _pay(client, service)).json()
    assert pi["status"] == "processing"
    counts = await container.payments.janitor_pass(Context.system("test"))
    assert counts["resolved"] == 1
    got = (await client.get(f"/v1/payment_intents/{pi['id']}", headers=service)).json()
    assert got["status"] == "succeeded"
    assert len(gateway.charges) == 1


async def test_gateway_down_before_the_charge_resends_the_same_key(
    client: httpx.AsyncClient, keys: Keys, container: Container, gateway: FakeGateway
) -> None:
    service = await keys.headers(Role.SERVICE)
    gateway.down_for = 3
    pi = (await _pay(client, service)).json()
    assert pi["status"] == "processing"
    assert gateway.charges == {}
    await container.payments.janitor_pass(Context.system("test"))
    got = (await client.get(f"/v1/payment_intents/{pi['id']}", headers=service)).json()
    assert got["status"] == "succeeded"
    assert list(gateway.charges) == [f"{pi['id']}.authorize.1"]


async def test_manual_capture_partial_then_refunds(
    client: httpx.AsyncClient, keys: Keys, container: Container, gateway: FakeGateway
) -> None:
    service = await keys.headers(Role.SERVICE)
    pi = (await _pay(client, service, amount=10_000, capture_method="manual")).json()
    assert pi["status"] == "requires_capture"
    assert pi["amount_capturable"] == 10_000
    assert await _balance(container, "gateway:sandbox:USD") == (10_000, 0, 0, 0)
    too_much = await client.post(
        f"/v1/payment_intents/{pi['id']}/capture",
        json={"amount_to_capture": 10_001},
        headers={**service, **_idem()},
    )
    assert too_much.status_code == 422
    assert too_much.json()["code"] == "amount_too_large"
    cap = await client.post(
        f"/v1/payment_intents/{pi['id']}/capture",
        json={"amount_to_capture": 8_000},
        headers={**service, **_idem()},
    )
    assert cap.json()["status"] == "succeeded", cap.text
    assert cap.json()["amount_received"] == 8_000
    assert await _balance(container, "gateway:sandbox:USD") == (0, 8_000, 0, 0)

    operator = await keys.headers(Role.OPERATOR)
    r1 = await client.post(
        "/v1/refunds",
        json={"payment_intent": pi["id"], "amount": 3_000, "reason": "requested_by_customer"},
        headers={**operator, **_idem()},
    )
    assert r1.status_code == 200, r1.text
    assert r1.json()["status"] == "succeeded"
    over = await client.post(
        "/v1/refunds",
        json={"payment_intent": pi["id"], "amount": 5_001, "reason": "requested_by_customer"},
        headers={**operator, **_idem()},
    )
    assert over.status_code == 422
    assert over.json()["code"] == "amount_too_large"
    rest = await client.post(
        "/v1/refunds",
        json={"payment_intent": pi["id"], "reason": "dispute"},
        headers={**operator, **_idem()},
    )
    assert rest.json()["amount"] == 5_000
    none_left = await client.post(
        "/v1/refunds",
        json={"payment_intent": pi["id"], "reason": "dispute"},
        headers={**operator, **_idem()},
    )
    assert none_left.status_code == 409
    assert none_left.json()["code"] == "charge_already_refunded"
    got = (await client.get(f"/v1/payment_intents/{pi['id']}", headers=service)).json()
    assert got["amount_refunded"] == 8_000
    assert await _balance(container, "gateway:sandbox:USD") == (0, 8_000, 0, 8_000)
    assert await _balance(container, "platform:unallocated:USD") == (0, 8_000, 0, 8_000)


async def test_cancel_voids_the_authorization(
    client: httpx.AsyncClient, keys: Keys, container: Container, gateway: FakeGateway
) -> None:
    service = await keys.headers(Role.SERVICE)
    pi = (await _pay(client, service, capture_method="manual")).json()
    r = await client.post(
        f"/v1/payment_intents/{pi['id']}/cancel", json={}, headers={**service, **_idem()}
    )
    assert r.json()["status"] == "canceled", r.text
    assert await _balance(container, "gateway:sandbox:USD") == (0, 0, 0, 0)
    assert gateway.authorizations() == 0
    again = await client.post(
        f"/v1/payment_intents/{pi['id']}/capture", json={}, headers={**service, **_idem()}
    )
    assert again.status_code == 409
    assert again.json()["code"] == "invalid_state_transition"


async def test_review_above_the_threshold_then_one_approval_captures(
    client: httpx.AsyncClient, keys: Keys, container: Container
) -> None:
    service = await keys.headers(Role.SERVICE)
    pi = (await _pay(client, service, amount=1_200_000)).json()
    assert pi["status"] == "requires_review", pi
    review = pi["review"]
    assert review["status"] == "open"
    assert review["approvals_required"] == 1
    reviewer = await keys.headers(Role.REVIEWER)
    queue = (await client.get("/v1/reviews?status=open", headers=reviewer)).json()
    assert [r["payment_intent"] for r in queue["data"]] == [pi["id"]]
    ok = await client.post(
        f"/v1/reviews/{review['id']}/approve",
        json={"note": "known bidder"},
        headers={**reviewer, **_idem()},
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["status"] == "approved"
    got = (await client.get(f"/v1/payment_intents/{pi['id']}", headers=service)).json()
    assert got["status"] == "succeeded"
    assert got["review"]["approvals"][0]["reviewer_id"]


async def test_four_eyes_above_100k(
    client: httpx.AsyncClient, keys: Keys, container: Container, gateway: FakeGateway
) -> None:
    service = await keys.headers(Role.SERVICE)
    pi = (await _pay(client, service, amount=19_350_000)).json()
    review = pi["review"]
    assert review["approvals_required"] == 2
    first = await keys.headers(Role.REVIEWER)
    second = (await keys.create(Role.REVIEWER))["headers"]
    url = f"/v1/reviews/{review['id']}/approve"
    one = await client.post(url, json={}, headers={**first, **_idem()})
    assert one.json()["status"] == "open"
    assert len(one.json()["approvals"]) == 1
    got = (await client.get(f"/v1/payment_intents/{pi['id']}", headers=service)).json()
    assert got["status"] == "requires_review"
    same = await client.post(url, json={}, headers={**first, **_idem()})
    assert same.status_code == 409
    assert same.json()["code"] == "already_approved"
    two = await client.post(url, json={}, headers={**second, **_idem()})
    assert two.json()["status"] == "approved", two.text
    got = (await client.get(f"/v1/payment_intents/{pi['id']}", headers=service)).json()
    assert got["status"] == "succeeded"
    assert len(gateway.charges) == 1


async def test_nobody_approves_their_own_payment(
    client: httpx.AsyncClient, keys: Keys, container: Container
) -> None:
    admin = await keys.create(Role.ADMIN)
    pi = (await _pay(client, admin["headers"], amount=1_500_000)).json()
    r = await client.post(
        f"/v1/reviews/{pi['review']['id']}/approve",
        json={},
        headers={**admin["headers"], **_idem()},
    )
    assert r.status_code == 403
    assert r.json()["code"] == "self_review_forbidden"


async def test_rejection_voids_and_cancels(
    client: httpx.AsyncClient, keys: Keys, container: Container
) -> None:
    service = await keys.headers(Role.SERVICE)
    pi = (await _pay(client, service, amount=1_500_000)).json()
    reviewer = await keys.headers(Role.REVIEWER)
    r = await client.post(
        f"/v1/reviews/{pi['review']['id']}/reject",
        json={"note": "no"},
        headers={**reviewer, **_idem()},
    )
    assert r.json()["status"] == "rejected"
    got = (await client.get(f"/v1/payment_intents/{pi['id']}", headers=service)).json()
    assert got["status"] == "canceled"
    assert got["canceled_reason"] == "review_rejected"
    assert await _balance(container, "gateway:sandbox:USD") == (0, 0, 0, 0)


async def test_open_review_expires_before_the_authorization(
    client: httpx.AsyncClient, keys: Keys, container: Container, clock: FixedClock
) -> None:
    service = await keys.headers(Role.SERVICE)
    pi = (await _pay(client, service, amount=1_500_000)).json()
    clock.advance(5 * 86_400)
    counts = await container.payments.janitor_pass(Context.system("test"))
    assert counts["reviews_expired"] == 1
    got = (await client.get(f"/v1/payment_intents/{pi['id']}", headers=service)).json()
    assert got["status"] == "canceled"
    assert got["review"]["status"] == "rejected"


async def test_manual_authorization_expires_and_is_voided(
    client: httpx.AsyncClient, keys: Keys, container: Container, clock: FixedClock
) -> None:
    service = await keys.headers(Role.SERVICE)
    pi = (await _pay(client, service, capture_method="manual")).json()
    clock.advance(6 * 86_400)
    counts = await container.payments.janitor_pass(Context.system("test"))
    assert counts["expired"] == 1
    got = (await client.get(f"/v1/payment_intents/{pi['id']}", headers=service)).json()
    assert got["status"] == "canceled"
    assert got["canceled_reason"] == "authorization_expired"


async def test_money_moving_posts_need_an_idempotency_key(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    r = await client.post(
        "/v1/payment_intents",
        json={"amount": 100, "currency": "USD"},
        headers=await keys.headers(Role.SERVICE),
    )
    assert r.status_code == 400
    assert r.json()["code"] == "idempotency_key_required"


@pytest.mark.parametrize(
    "body",
    [
        {"amount": 0, "currency": "USD"},
        {"amount": 1.5, "currency": "USD"},
        {"amount": 2**53, "currency": "USD"},
        {"amount": 100, "currency": "XXX1"},
        {"amount": 100, "currency": "ZZZ"},
        {"amount": 100, "currency": "USD", "capture_method": "later"},
        {"amount": 100, "currency": "USD", "metadata": {"k": 1}},
        {"amount": 100, "currency": "USD", "return_url": "javascript:alert(1)"},
        {"amount": 100, "currency": "USD", "surprise": True},
    ],
)
async def test_bad_input_is_a_problem_not_a_500(
    client: httpx.AsyncClient, keys: Keys, body: dict[str, Any]
) -> None:
    r = await client.post(
        "/v1/payment_intents", json=body, headers={**await keys.headers(Role.SERVICE), **_idem()}
    )
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "validation_error"


async def test_unknown_intent_is_404(client: httpx.AsyncClient, keys: Keys) -> None:
    r = await client.get(
        "/v1/payment_intents/pi_00000000000000aaaa", headers=await keys.headers(Role.SERVICE)
    )
    assert r.status_code == 404
    assert r.json()["code"] == "payment_intent_not_found"


async def test_an_alpha3_card_country_is_normalised(
    client: httpx.AsyncClient, keys: Keys, gateway: FakeGateway
) -> None:
    gateway.country = "USA"
    pi = (await _pay(client, await keys.headers(Role.SERVICE))).json()
    assert pi["status"] == "succeeded", pi
    assert pi["card"]["country"] == "US"


async def test_a_refund_the_gateway_reports_pending_stays_pending_until_it_succeeds(
    client: httpx.AsyncClient, keys: Keys, container: Container, gateway: FakeGateway
) -> None:
    service = await keys.headers(Role.SERVICE)
    pi = (await _pay(client, service)).json()
    gateway.faults.add("refund_pending")
    r = await client.post(
        "/v1/refunds",
        json={"payment_intent": pi["id"], "reason": "requested_by_customer"},
        headers={**service, **_idem()},
    )
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "pending"
    again = await client.post(
        "/v1/refunds",
        json={"payment_intent": pi["id"], "reason": "requested_by_customer"},
        headers={**service, **_idem()},
    )
    assert again.status_code == 409  # the pending refund holds the whole amount
    counts = await container.payments.janitor_pass(Context.system("test"))
    assert counts["refunds"] == 1
    done = await client.get(f"/v1/refunds/{r.json()['id']}", headers=service)
    assert done.json()["status"] == "succeeded"
    assert await _balance(container, "gateway:sandbox:USD") == (0, 5000, 0, 5000)


async def test_cancel_after_a_failed_challenge_cancels(
    client: httpx.AsyncClient, keys: Keys, container: Container, gateway: FakeGateway
) -> None:
    service = await keys.headers(Role.SERVICE)
    pi = (await _pay(client, service, token="tok_3ds_cancel")).json()
    [key] = gateway.charges
    gateway.complete_challenge(key, passed=False)  # the janitor has not noticed yet
    r = await client.post(
        f"/v1/payment_intents/{pi['id']}/cancel", json={}, headers={**service, **_idem()}
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "canceled"


async def test_a_confirm_retried_after_pending_resumes_and_never_authorizes_again(
    client: httpx.AsyncClient, keys: Keys, container: Container, gateway: FakeGateway
) -> None:
    service = await keys.headers(Role.SERVICE)
    created = await client.post(
        "/v1/payment_intents",
        json={"amount": 900, "currency": "USD", "payment_method": "tok_decline_later"},
        headers={**service, **_idem()},
    )
    intent_id = created.json()["id"]
    idem = _idem()
    gateway.faults.add("timeout_after_charge")
    url = f"/v1/payment_intents/{intent_id}/confirm"
    first = await client.post(url, json={}, headers={**service, **idem})
    assert first.status_code == 202
    await container.payments.janitor_pass(Context.system("test"))  # learns: declined
    reuse = await client.post(
        url, json={"return_url": "https://x.test/"}, headers={**service, **idem}
    )
    assert reuse.status_code == 422
    assert reuse.json()["code"] == "idempotency_key_reuse"
    retry = await client.post(url, json={}, headers={**service, **idem})
    assert retry.status_code == 200, retry.text
    assert retry.json()["status"] == "requires_payment_method"
    assert list(gateway.charges) == [f"{intent_id}.authorize.1"]


async def test_one_bad_intent_does_not_stop_the_janitor(
    client: httpx.AsyncClient, keys: Keys, container: Container, gateway: FakeGateway
) -> None:
    service = await keys.headers(Role.SERVICE)
    gateway.down_for = 3
    bad = (await _pay(client, service)).json()
    gateway.down_for = 3
    good = (await _pay(client, service)).json()
    gateway.poisoned.add(bad["id"])
    counts = await container.payments.janitor_pass(Context.system("test"))
    assert counts["errors"] == 1
    assert counts["resolved"] == 1
    got = await client.get(f"/v1/payment_intents/{good['id']}", headers=service)
    assert got.json()["status"] == "succeeded"


async def test_a_gateway_blip_is_retried_within_the_request(
    client: httpx.AsyncClient, keys: Keys, gateway: FakeGateway
) -> None:
    gateway.down_for = 1  # unreachable once: nothing happened there, so try again at once
    r = await _pay(client, await keys.headers(Role.SERVICE))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "succeeded"
    assert len(gateway.charges) == 1


async def test_a_domain_scoped_request_is_one_payment_whoever_repeats_it(
    container: Container, gateway: FakeGateway
) -> None:
    """Escrow and auctions name their payments by their own keys: an operator's call and the
    sweeper's resume (no API key), or two keys of one buyer, must find the same intent and
    refund, never make a second charge or refund."""
    operator = Context(actor=Actor(principal_id="op", role="operator", key_id="key_op"))
    sweeper = Context.system("tests.sweeper")
    new = NewIntent(amount=7_000, currency="USD", payment_method="tok_ok_scope", confirm=True)
    first = await container.payments.create(
        operator, new, idempotency_key="ord_1.pay", scope="domain:escrow"
    )
    again = await container.payments.create(
        sweeper, new, idempotency_key="ord_1.pay", scope="domain:escrow"
    )
    assert again.id == first.id
    assert len(gateway.charges) == 1
    refund = NewRefund(first.id, 3_000, RefundReason.DISPUTE)
    r1 = await container.payments.refund(
        operator, refund, idempotency_key="ord_1.refund", scope="domain:escrow"
    )
    r2 = await container.payments.refund(
        sweeper, refund, idempotency_key="ord_1.refund", scope="domain:escrow"
    )
    assert r2.id == r1.id
    assert len(gateway.refunds) == 1

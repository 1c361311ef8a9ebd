"""The sandbox gateway beyond the contract: faults, crashes, races between processes, the
challenge page, webhooks, the admin listing, settlement files, and no card number anywhere."""

from __future__ import annotations

import asyncio
import csv
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from hammerlock.clock import FixedClock
from hammerlock.payments.gateways.base import (
    AuthorizeRequest,
    CardData,
    ChargeStatus,
    Gateway,
    GatewayRejected,
    GatewayToken,
    GatewayUnavailable,
    PayoutRequest,
    VaultToken,
)
from hammerlock.payments.gateways.signature import SIGNATURE_HEADER, sign_header
from hammerlock.settings import Settings
from hammerlock.vault.sandbox import (
    CRASH_EXIT_CODE,
    SandboxGateway,
    build_challenge_router,
    parse_faults,
    settlement_path,
)
from hammerlock.vault.sandbox.gateway import _check_url
from hammerlock.vault.sandbox.settlement import COLUMNS

BASE_URL = "http://vault.test"
RETURN_URL = "https://shop.example/checkout/return?order=ord_1"
SECRET = "whsec_sandbox_0123456789"
VISA = "4242424242424242"
THREE_DS = "4000002760003184"
ALL_TEST_CARDS = [
    VISA,
    "4000000000000002",
    "4000000000009995",
    THREE_DS,
    "4000000000000119",
    "5555555555554444",
    "378282246310005",
]


def card(number: str = VISA, *, exp_year: int = 2034) -> CardData:
    return CardData(number=number, exp_month=12, exp_year=exp_year, cvc="123")


def request(key: str, number: str = VISA, amount: int = 5_000, **extra: Any) -> AuthorizeRequest:
    return AuthorizeRequest(
        gateway_key=key, amount=amount, currency="USD", source=card(number), **extra
    )


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def make_gateway(tmp_path: Path, clock: FixedClock) -> Callable[..., SandboxGateway]:
    def make(**kwargs: Any) -> SandboxGateway:
        return SandboxGateway(tmp_path, public_base_url=BASE_URL, clock=clock, **kwargs)

    return make


@pytest.fixture
async def gateway(make_gateway: Callable[..., SandboxGateway]) -> AsyncIterator[SandboxGateway]:
    gw = make_gateway()
    yield gw
    await gw.aclose()


@pytest.fixture
async def browser(gateway: SandboxGateway) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(build_challenge_router(gateway))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        yield client


# ---------------------------------------------------------------------------- requests


def test_it_is_a_gateway_built_from_settings(tmp_path: Path, clock: FixedClock) -> None:
    settings = Settings(
        data_dir=tmp_path,
        sandbox_faults="slow:0.5@100ms",
        sandbox_webhook_url="https://hooks.example/sandbox",
        sandbox_webhook_secret=SECRET,
        sandbox_challenge_ttl_s=600,
    )
    gw = SandboxGateway.from_settings(settings, public_base_url=BASE_URL, clock=clock)
    assert isinstance(gw, Gateway)
    assert gw.name == "sandbox"
    assert str(gw.faults) == "slow:0.5@0.1s"
    assert SECRET not in repr(gw)
    assert gw.db_path == tmp_path / "sandbox" / "charges.db"
    with pytest.raises(ValueError, match="unknown name"):
        SandboxGateway(tmp_path, public_base_url=BASE_URL, clock=clock, faults="meteor")
    with pytest.raises(ValueError, match="public_base_url"):
        SandboxGateway(tmp_path, public_base_url="vault:8001", clock=clock)


async def test_separators_in_the_number_are_ignored(gateway: SandboxGateway) -> None:
    spaced = AuthorizeRequest("k1", 100, "USD", source=card("4000 0000 0000 0002"))
    charge = await gateway.authorize(spaced)
    assert (charge.status, charge.error_code) == (ChargeStatus.DECLINED, "card_declined")


@pytest.mark.parametrize("source", [GatewayToken("pm_card_visa"), VaultToken("tok_123")])
async def test_only_card_data_is_accepted(gateway: SandboxGateway, source: Any) -> None:
    bad = AuthorizeRequest(gateway_key="k1", amount=100, currency="USD", source=source)
    with pytest.raises(GatewayRejected) as caught:
        await gateway.authorize(bad)
    assert caught.value.code == "unsupported_source"


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"number": "4242424242424241"}, "invalid_card"),
        ({"amount": 0}, "invalid_request"),
        ({"currency": "XXQ"}, "invalid_request"),
        ({"gateway_key": "k" * 256}, "invalid_request"),
        ({"return_url": "javascript:alert(1)"}, "invalid_request"),
    ],
)
async def test_invalid_requests_are_rejected_and_record_nothing(
    gateway: SandboxGateway, changes: dict[str, Any], code: str
) -> None:
    number = changes.pop("number", VISA)
    fields: dict[str, Any] = {"gateway_key": "k1", "amount": 100, "currency": "USD"} | changes
    with pytest.raises(GatewayRejected) as caught:
        await gateway.authorize(AuthorizeRequest(source=card(number), **fields))
    assert caught.value.code == code
    assert (await gateway.list_charges())["data"] == []


async def test_mismatch_code_and_other_cards(gateway: SandboxGateway) -> None:
    await gateway.authorize(request("k1"))
    with pytest.raises(GatewayRejected) as caught:
        await gateway.authorize(request("k1", "5555555555554444"))
    assert caught.value.code == "idempotency_mismatch"
    mastercard = await gateway.authorize(request("k2", "5555555555554444"))
    assert mastercard.status is ChargeStatus.AUTHORIZED
    assert mastercard.card is not None
    assert (mastercard.card.brand, mastercard.card.last4) == ("mastercard", "4444")


async def test_expired_card_is_declined(gateway: SandboxGateway) -> None:
    charge = await gateway.authorize(AuthorizeRequest("k1", 100, "USD", source=card(exp_year=2025)))
    assert (charge.status, charge.error_code) == (ChargeStatus.DECLINED, "expired_card")


async def test_forced_three_d_secure(gateway: SandboxGateway) -> None:
    charge = await gateway.authorize(request("k1", force_three_d_secure=True))
    assert charge.status is ChargeStatus.REQUIRES_ACTION
    assert charge.next_action_url is not None
    assert charge.next_action_url.startswith(f"{BASE_URL}/v1/3ds/")
    assert len(charge.next_action_url.rsplit("/", 1)[1]) >= 40


async def test_escrow_and_pan_destinations_are_refused(gateway: SandboxGateway) -> None:
    with pytest.raises(GatewayRejected) as caught:
        await gateway.release_from_escrow("k1")
    assert caught.value.code == "escrow_not_supported"
    with pytest.raises(GatewayRejected):
        await gateway.payout(PayoutRequest("p1", 100, "USD", destination=f"card {VISA}"))


async def test_two_instances_race_for_one_key(
    make_gateway: Callable[..., SandboxGateway],
) -> None:
    one, two = make_gateway(), make_gateway()
    charges = await asyncio.gather(
        *(gw.authorize(request("race", capture=True)) for gw in (one, two, one, two))
    )
    assert len({c.charge_id for c in charges}) == 1
    assert len((await one.list_charges())["data"]) == 1


# ---------------------------------------------------------------------------- faults


async def test_http_500_raises_before_anything(
    make_gateway: Callable[..., SandboxGateway],
) -> None:
    gw = make_gateway(faults="http_500")
    with pytest.raises(GatewayUnavailable):
        await gw.authorize(request("k1"))
    gw.faults = parse_faults("")
    assert await gw.retrieve_by_idempotency_key("k1") is None


async def test_slow_and_timeout_after_charge_stall(
    make_gateway: Callable[..., SandboxGateway],
) -> None:
    sleeps = Sleeps()
    gw = make_gateway(faults="slow@250ms,timeout_after_charge@7s", sleep=sleeps)
    charge = await gw.authorize(request("k1"))
    assert sleeps.calls == [0.25, 7.0]  # slow before, the stall after the charge is recorded
    await gw.authorize(request("k1"))  # a replay is no new charge: no stall after it
    assert sleeps.calls == [0.25, 7.0, 0.25]
    assert (await gw.retrieve_by_idempotency_key("k1")) == charge


async def test_crash_fault_exits_after_recording(
    make_gateway: Callable[..., SandboxGateway],
) -> None:
    exits: list[int] = []

    def fake_exit(code: int) -> Any:
        exits.append(code)
        raise SystemExit(code)

    gw = make_gateway(faults="crash_after_charge", exit_process=fake_exit)
    with pytest.raises(SystemExit):
        await gw.authorize(request("k1"))
    assert exits == [CRASH_EXIT_CODE]
    found = await gw.retrieve_by_idempotency_key("k1")
    assert found is not None
    assert found.status is ChargeStatus.AUTHORIZED


_CHILD = """
import asyncio, sys
from pathlib import Path
from hammerlock.clock import SystemClock
from hammerlock.payments.gateways.base import AuthorizeRequest, CardData
from hammerlock.vault.sandbox import SandboxGateway

async def main() -> None:
    data_dir, faults, key = sys.argv[1:4]
    gw = SandboxGateway(Path(data_dir), public_base_url="http://vault.test",
                        clock=SystemClock(), faults=faults)
    source = CardData("4242424242424242", 12, 2034)
    charge = await gw.authorize(AuthorizeRequest(key, 5000, "USD", source, capture=True))
    print("answered", charge.charge_id, flush=True)

asyncio.run(main())
"""


def _child(data_dir: Path, faults: str, key: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(data_dir), faults, key],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.processes
async def test_crash_after_charge_in_a_real_process_never_charges_twice(
    tmp_path: Path, gateway: SandboxGateway
) -> None:
    crashed = _child(tmp_path, "crash_after_charge", "pi_1:1")
    out, err = crashed.communicate(timeout=60)
    assert crashed.returncode == CRASH_EXIT_CODE, err
    assert "answered" not in out
    recorded = await gateway.retrieve_by_idempotency_key("pi_1:1")
    assert recorded is not None
    assert recorded.status is ChargeStatus.CAPTURED
    # The restarted vault, crash fault still on, answers the retry with the recorded charge.
    retry = _child(tmp_path, "crash_after_charge", "pi_1:1")
    out, err = retry.communicate(timeout=60)
    assert retry.returncode == 0, err
    assert out.split() == ["answered", recorded.charge_id]
    listing = await gateway.list_charges(gateway_key_prefix="pi_1:")
    assert [c["charge_id"] for c in listing["data"]] == [recorded.charge_id]


@pytest.mark.processes
async def test_processes_race_for_one_key(tmp_path: Path, gateway: SandboxGateway) -> None:
    children = [_child(tmp_path, "", "pi_race:1") for _ in range(4)]
    answers = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        answers.append(out.split()[1])
    assert len(set(answers)) == 1
    assert len((await gateway.list_charges())["data"]) == 1


# ---------------------------------------------------------------------------- 3-D Secure page


def _path(url: str | None) -> str:
    assert url is not None
    return httpx.URL(url).path


async def test_challenge_page_escapes_and_locks_down(
    gateway: SandboxGateway, browser: httpx.AsyncClient
) -> None:
    charge = await gateway.authorize(
        request(
            "k<1>",
            THREE_DS,
            amount=5_000,
            return_url=RETURN_URL,
            description='<script>alert("x")</script> lot 7',
        )
    )
    page = await browser.get(_path(charge.next_action_url))
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "form-action 'self' https://shop.example" in csp
    assert "script-src" not in csp
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "50.00 USD" in page.text
    assert "hammerlock" in page.text
    assert "<script>" not in page.text
    assert "&lt;script&gt;" in page.text
    assert 'value="pass"' in page.text
    assert 'value="fail"' in page.text
    assert "http" not in page.text.split("<body>", 1)[1]  # no external assets or links


async def test_form_post_redirects_and_second_completion_answers_the_first(
    gateway: SandboxGateway, browser: httpx.AsyncClient
) -> None:
    charge = await gateway.authorize(
        request("pi_3ds:1", THREE_DS, return_url=RETURN_URL, capture=True)
    )
    path = _path(charge.next_action_url)
    done = await browser.post(path, data={"result": "pass"})
    assert done.status_code == 303
    location = httpx.URL(done.headers["location"])
    assert (location.host, location.path) == ("shop.example", "/checkout/return")
    assert dict(location.params) == {
        "order": "ord_1",
        "three_d_secure": "passed",
        "gateway_key": "pi_3ds:1",
    }
    again = await browser.post(path, data={"result": "fail"})
    assert httpx.URL(again.headers["location"]).params["three_d_secure"] == "passed"
    as_json = await browser.post(path, json={"result": "fail"})
    assert as_json.status_code == 200
    assert as_json.json() == {
        "result": "passed",
        "status": "captured",
        "charge_id": charge.charge_id,
        "gateway_key": "pi_3ds:1",
    }
    after = await gateway.retrieve_by_idempotency_key("pi_3ds:1")
    assert after is not None
    assert (after.status, after.amount_captured) == (ChargeStatus.CAPTURED, 5_000)
    page = await browser.get(path)
    assert "Already completed: passed" in page.text


async def test_challenge_without_return_url_shows_the_outcome(
    gateway: SandboxGateway, browser: httpx.AsyncClient
) -> None:
    charge = await gateway.authorize(request("k1", THREE_DS))
    done = await browser.post(_path(charge.next_action_url), data={"result": "fail"})
    assert done.status_code == 200
    assert "Authentication failed" in done.text


async def test_challenge_expires_into_a_decline(
    gateway: SandboxGateway, browser: httpx.AsyncClient, clock: FixedClock
) -> None:
    charge = await gateway.authorize(request("k1", THREE_DS))
    clock.advance(1_801)
    path = _path(charge.next_action_url)
    assert (await browser.get(path)).status_code == 410
    answer = await browser.post(path, json={"result": "pass"})
    assert (answer.status_code, answer.json()["code"]) == (410, "challenge_expired")
    after = await gateway.retrieve_by_idempotency_key("k1")
    assert after is not None
    assert (after.status, after.error_code) == (ChargeStatus.DECLINED, "authentication_required")


async def test_retrieve_expires_an_abandoned_challenge(
    gateway: SandboxGateway, clock: FixedClock
) -> None:
    await gateway.authorize(request("k1", THREE_DS))
    clock.advance(1_801)
    after = await gateway.retrieve_by_idempotency_key("k1")
    assert after is not None
    assert after.status is ChargeStatus.DECLINED


async def test_challenge_errors(gateway: SandboxGateway, browser: httpx.AsyncClient) -> None:
    charge = await gateway.authorize(request("k1", THREE_DS))
    path = _path(charge.next_action_url)
    unknown = "/v1/3ds/" + "A" * 43
    assert (await browser.get(unknown)).status_code == 404
    assert (await browser.get("/v1/3ds/short")).status_code == 404
    assert (await browser.post(unknown, json={"result": "pass"})).status_code == 404
    assert (await browser.post(path, json={"result": "maybe"})).status_code == 400
    assert (await browser.post(path, json={"result": "pass", "x": 1})).status_code == 400
    assert (await browser.post(path, content=b"result=pass")).status_code == 415
    big = {"result": "pass", "pad": "x" * 5_000}
    assert (await browser.post(path, json=big)).status_code == 413
    await gateway.void("k1")
    closed = await browser.post(path, json={"result": "pass"})
    assert (closed.status_code, closed.json()["code"]) == (409, "challenge_closed")


# ---------------------------------------------------------------------------- webhooks


class Receiver:
    def __init__(self, fail_first: int = 0) -> None:
        self.requests: list[httpx.Request] = []
        self._fail_first = fail_first

    def __call__(self, req: httpx.Request) -> httpx.Response:
        self.requests.append(req)
        if len(self.requests) <= self._fail_first:
            return httpx.Response(503)
        return httpx.Response(200)


async def _webhook_gateway(
    make_gateway: Callable[..., SandboxGateway],
    receiver: Receiver,
    faults: str = "",
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> SandboxGateway:
    client = httpx.AsyncClient(transport=httpx.MockTransport(receiver))
    return make_gateway(
        webhook_url="https://hooks.example/sandbox",
        webhook_secret=SECRET,
        webhook_client=client,
        faults=faults,
        sleep=sleep or Sleeps(),
    )


async def test_webhooks_are_signed_and_parse_back(
    make_gateway: Callable[..., SandboxGateway], clock: FixedClock
) -> None:
    receiver = Receiver(fail_first=1)  # the first attempt fails and is retried
    gw = await _webhook_gateway(make_gateway, receiver)
    await gw.authorize(request("pi_w:1"))
    await gw.capture("pi_w:1", 4_000)
    await gw.refund("pi_w:1", "re_key_1", 1_000)
    await gw.flush_webhooks()
    delivered = receiver.requests[1:]
    events = [gw.parse_webhook(dict(r.headers), r.content) for r in delivered]
    assert [e.type for e in events] == ["charge.authorized", "charge.captured", "charge.refunded"]
    assert {e.gateway_key for e in events} == {"pi_w:1"}
    assert len({e.event_id for e in events}) == 3
    assert all(e.event_id.startswith("evt_") for e in events)
    body = orjson.loads(delivered[2].content)
    assert body["data"]["object"]["amount_refunded"] == 1_000
    assert await gw.flush_webhooks() == 0  # nothing left pending
    # Stale, tampered and unsigned deliveries are refused.
    headers, content = dict(delivered[0].headers), delivered[0].content
    for bad_headers, bad_body in [
        (headers, content + b" "),
        ({k: v for k, v in headers.items() if k != SIGNATURE_HEADER.lower()}, content),
    ]:
        with pytest.raises(GatewayRejected):
            gw.parse_webhook(bad_headers, bad_body)
    clock.advance(301)
    with pytest.raises(GatewayRejected) as caught:
        gw.parse_webhook(headers, content)
    assert caught.value.code == "invalid_signature"
    await gw.aclose()


async def test_duplicate_and_out_of_order_webhook_faults(
    make_gateway: Callable[..., SandboxGateway],
) -> None:
    receiver = Receiver()
    # A real sleep: the background flush holds events 0.5 s so that a burst gathers; this
    # test's own flush comes first and sends the whole burst reversed.
    gw = await _webhook_gateway(
        make_gateway, receiver, "duplicate_webhooks,out_of_order_webhooks", asyncio.sleep
    )
    await gw.authorize(request("pi_o:1"))
    await gw.capture("pi_o:1", 5_000)
    await gw.flush_webhooks()
    events = [gw.parse_webhook(dict(r.headers), r.content) for r in receiver.requests]
    assert [e.type for e in events] == [
        "charge.captured",
        "charge.captured",
        "charge.authorized",
        "charge.authorized",
    ]
    assert events[0].event_id == events[1].event_id
    await gw.aclose()


def test_parse_webhook_needs_a_secret_and_a_sandbox_event(gateway: SandboxGateway) -> None:
    with pytest.raises(GatewayRejected):
        gateway.parse_webhook({}, b"{}")


async def test_parse_webhook_refuses_signed_garbage(
    make_gateway: Callable[..., SandboxGateway], clock: FixedClock
) -> None:
    gw = make_gateway(webhook_secret=SECRET)
    now_s = clock.now_us() // 1_000_000
    for body in [b"not json", b"[]", b'{"id":"x","type":"t","created":1,"data":{"object":{}}}']:
        headers = {SIGNATURE_HEADER: sign_header(SECRET, now_s, body)}
        with pytest.raises(GatewayRejected) as caught:
            gw.parse_webhook(headers, body)
        assert caught.value.code == "invalid_request"


# ---------------------------------------------------------------------------- listing


async def test_list_charges_pages_newest_first(gateway: SandboxGateway) -> None:
    for n in range(5):
        await gateway.authorize(request(f"pi_{n}:1", amount=100 + n))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await gateway.list_charges(2, cursor)
        pages += 1
        seen += [c["gateway_key"] for c in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [f"pi_{n}:1" for n in reversed(range(5))]
    first = (await gateway.list_charges(1))["data"][0]
    assert first["card"] == {"brand": "visa", "last4": "4242"}
    assert first["amount"] == 104
    assert orjson.loads(orjson.dumps(first)) == first
    with pytest.raises(GatewayRejected):
        await gateway.list_charges(2, "not-a-cursor")
    with pytest.raises(GatewayRejected):
        await gateway.list_charges(0)


# ---------------------------------------------------------------------------- settlement


async def test_settlement_file(gateway: SandboxGateway, clock: FixedClock, tmp_path: Path) -> None:
    await gateway.authorize(request("pi_s:1", amount=10_000, capture=True))
    await gateway.authorize(request("pi_s:2", amount=7_000))  # authorized only: not settled
    clock.advance(60)
    await gateway.refund("pi_s:1", "rf_1", 2_500)
    clock.advance(60)
    await gateway.payout(PayoutRequest("po_key_1", 6_000, "USD", "acct_seller_1"))
    clock.advance(86_400)
    await gateway.capture("pi_s:2", 7_000)  # the next day
    path = await gateway.write_settlement(date(2026, 1, 1))
    assert path == settlement_path(tmp_path, date(2026, 1, 1))
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS
    assert [(r["record_type"], r["reference_key"], r["amount_minor"]) for r in rows] == [
        ("capture", "pi_s:1", "10000"),
        ("refund", "rf_1", "2500"),
        ("payout", "po_key_1", "6000"),
    ]
    assert rows[0]["occurred_at"] == "2026-01-01T00:00:00.000000Z"
    assert rows[1]["card_last4"] == "4242"
    assert rows[1]["charge_id"] == rows[0]["record_id"]
    next_day = (await gateway.write_settlement(date(2026, 1, 2))).read_text().splitlines()
    assert len(next_day) == 2
    assert next_day[1].startswith("capture,")


# ---------------------------------------------------------------------------- no card numbers


async def test_no_card_number_in_the_database_or_settlement_files(
    gateway: SandboxGateway, browser: httpx.AsyncClient, tmp_path: Path
) -> None:
    for n, number in enumerate(ALL_TEST_CARDS):
        charge = await gateway.authorize(request(f"pi_pan_{n}:1", number, capture=True))
        if charge.status is ChargeStatus.REQUIRES_ACTION:
            await browser.post(_path(charge.next_action_url), json={"result": "pass"})
            charge = await gateway.retrieve_by_idempotency_key(charge.gateway_key)  # type: ignore[assignment]
        if charge.status is ChargeStatus.CAPTURED:
            await gateway.refund(charge.gateway_key, f"rf_pan_{n}", 100)
        assert number not in repr(charge)
        assert number not in str(await gateway.list_charges())
    await gateway.write_settlement(date(2026, 1, 1))
    files = [p for p in (tmp_path / "sandbox").rglob("*") if p.is_file()]
    assert any(p.name == "charges.db" for p in files)
    assert any(p.suffix == ".csv" for p in files)
    for path in files:
        content = path.read_bytes()
        for number in ALL_TEST_CARDS:
            assert number.encode() not in content, path
            assert number.encode("utf-16-le") not in content, path


@pytest.mark.parametrize(
    "url", ["http://[::1", "https://xn--/", "https://a:b:c/", "http://[zz]/", "https://\u00ad/"]
)
def test_a_return_url_it_cannot_parse_is_refused_not_a_crash(url: str) -> None:
    with pytest.raises(GatewayRejected) as refused:
        _check_url(url, "return_url")
    assert refused.value.code == "invalid_request"

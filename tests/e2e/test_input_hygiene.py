"""Input the schema alone let through (found by fuzzing every route): text no database column can
hold, values pydantic's lax mode coerces, a body sent to a route that takes none, a client that
leaves mid-body. Each gets a problem with a stable code — never a 500, never a coerced value.

Each test runs on SQLite and PostgreSQL (the ``client`` fixture is parametrised by backend).
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
import pydantic
import pytest
import sqlalchemy as sa

from hammerlock.api.app import create_app
from hammerlock.api.schemas import Note, Reason
from hammerlock.bootstrap import Container
from hammerlock.payments.storage import payment_intents
from hammerlock.security.permissions import Role
from tests.conftest import Keys
from tests.e2e.test_platform import assert_problem
from tests.payments.fake_gateway import FakeGateway


def _post(client: httpx.AsyncClient, path: str, headers: dict[str, str], raw: bytes) -> Any:
    return client.post(
        path,
        content=raw,
        headers={
            **headers,
            "Content-Type": "application/json",
            "Idempotency-Key": str(uuid.uuid4()),
        },
    )


@pytest.mark.parametrize(
    "raw",
    [
        # an escaped unpaired surrogate: Python's JSON parser takes it, no UTF-8 encoder does
        b'{"amount": 1000, "currency": "USD", "metadata": {"k": "\\ud800"}}',
        b'{"amount": 1000, "currency": "USD", "description": "\\udfff"}',
        # NUL: PostgreSQL text cannot hold it
        b'{"amount": 1000, "currency": "USD", "description": "a\\u0000b"}',
        b'{"amount": 1000, "currency": "USD", "metadata": {"k": "a\\u0000"}}',
    ],
)
async def test_text_no_database_can_hold_is_refused_before_the_handler(
    client: httpx.AsyncClient, keys: Keys, container: Container, raw: bytes
) -> None:
    headers = await keys.headers(Role.ADMIN)
    r = await _post(client, "/v1/payment_intents", headers, raw)
    body = assert_problem(r, 422, "validation_error")
    assert "NUL" in body["detail"]
    async with container.db.read() as uow:  # nothing was created
        made = await uow.conn.execute(sa.select(sa.func.count()).select_from(payment_intents))
        assert made.scalar_one() == 0


@pytest.mark.parametrize(
    "url", ["http://[::1", "https://xn--/", "https://a:b:c/", "http://[zz]/", "https://\u00ad/"]
)
async def test_a_return_url_nothing_can_parse_is_refused_before_the_card_is_used(
    client: httpx.AsyncClient, keys: Keys, url: str
) -> None:
    """Such a URL crashed the vault's sandbox after the card was detokenized (a 500 the API
    read as an unknown outcome: the intent stayed processing)."""
    headers = await keys.headers(Role.ADMIN)
    body = {"amount": 5000, "currency": "USD", "return_url": url}
    r = await _post(client, "/v1/payment_intents", headers, orjson.dumps(body))
    problem = assert_problem(r, 422, "validation_error")
    assert "return_url" in str(problem["errors"])


async def test_a_confirm_flag_must_be_a_json_boolean(client: httpx.AsyncClient, keys: Keys) -> None:
    headers = await keys.headers(Role.ADMIN)
    for value in (b"1", b"0", b"1.0", b'"true"', b'"yes"'):
        raw = b'{"amount": 1000, "currency": "USD", "confirm": ' + value + b"}"
        r = await _post(client, "/v1/payment_intents", headers, raw)
        assert_problem(r, 422, "validation_error")


async def test_date_times_are_rfc3339_text_never_unix_numbers(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    admin = await keys.headers(Role.ADMIN)
    for since in ("-1", "1.5", "1767225600"):
        r = await client.get("/v1/audit/events", params={"since": since}, headers=admin)
        assert_problem(r, 422, "validation_error")
    ok = await client.get(
        "/v1/audit/events", params={"since": "2026-01-01T00:00:00Z"}, headers=admin
    )
    assert ok.status_code == 200, ok.text
    r = await _post(
        client,
        "/v1/keys",
        admin,
        orjson.dumps({"role": "operator", "name": "k", "expires_at": 4_102_444_800}),
    )
    assert_problem(r, 422, "validation_error")


@pytest.mark.parametrize(
    "name", ["\u202eevil.exe", "a\u200bb", "\u2066x", "   ", "tab\there", "\ufeffbom"]
)
async def test_names_that_would_display_as_something_else_are_refused(
    client: httpx.AsyncClient, keys: Keys, name: str
) -> None:
    admin = await keys.headers(Role.ADMIN)
    r = await _post(client, "/v1/keys", admin, orjson.dumps({"role": "operator", "name": name}))
    assert_problem(r, 422, "validation_error")
    r = await _post(client, "/v1/sellers", admin, orjson.dumps({"name": name}))
    assert_problem(r, 422, "validation_error")


@pytest.mark.parametrize("name", ["می‌خواهم", "family 👨‍👩‍👧", "Zoë Ødegaard"])
async def test_names_that_need_joiners_are_accepted(
    client: httpx.AsyncClient, keys: Keys, name: str
) -> None:
    """Persian spelling needs ZWNJ, emoji sequences ZWJ: only what hides or reorders text is
    refused."""
    admin = await keys.headers(Role.ADMIN)
    r = await _post(client, "/v1/sellers", admin, orjson.dumps({"name": name}))
    assert r.status_code == 201, r.text
    assert r.json()["name"] == name


async def test_a_lot_title_of_only_spaces_is_refused(client: httpx.AsyncClient, keys: Keys) -> None:
    admin = await keys.headers(Role.ADMIN)
    seller = (await _post(client, "/v1/sellers", admin, b'{"name": "S"}')).json()
    lot = {
        "seller_id": seller["id"],
        "title": "   ",
        "currency": "USD",
        "estimate": 1000,
        "starting_price": 100,
        "ends_at": "2030-01-01T00:00:00Z",
    }
    r = await _post(client, "/v1/lots", admin, orjson.dumps(lot))
    body = assert_problem(r, 422, "validation_error")
    assert "title" in {e["field"].split(".")[-1] for e in body["errors"]}
    lot["ends_at"] = 1_893_456_000  # a Unix number is not a date-time here
    lot["title"] = "A lot"
    r = await _post(client, "/v1/lots", admin, orjson.dumps(lot))
    assert_problem(r, 422, "validation_error")


@pytest.mark.parametrize("raw", [b"{", b'{"a": 1}', b"[]", b'"x"', b"0"])
async def test_a_route_without_a_body_refuses_one_instead_of_ignoring_it(
    client: httpx.AsyncClient, keys: Keys, raw: bytes
) -> None:
    admin = await keys.headers(Role.ADMIN)
    created = await keys.create(Role.OPERATOR)
    path = f"/v1/keys/{created['key'].id}/revoke"
    r = await _post(client, path, admin, raw)
    assert_problem(r, 422, "validation_error")
    # nothing happened: the key still authenticates
    still = await client.get("/v1/ledger/accounts/none", headers=created["headers"])
    assert_problem(still, 404, "account_not_found")  # authenticated, not 401
    # {} (or null, or nothing) is what such a route takes
    assert (await _post(client, path, admin, b"{ \n }")).status_code == 200
    assert (await _post(client, path, admin, b"null")).status_code == 200


async def test_a_client_leaving_mid_body_is_a_400_not_a_logged_500(
    container: Container, keys: Keys
) -> None:
    app = create_app(container)
    headers = await keys.headers(Role.ADMIN)
    raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()] + [
        (b"content-type", b"application/json"),
        (b"content-length", b"100"),
        (b"idempotency-key", str(uuid.uuid4()).encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/ledger/accounts",
        "raw_path": b"/v1/ledger/accounts",
        "query_string": b"",
        "headers": raw_headers,
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
        "state": {},
    }
    incoming = [
        {"type": "http.request", "body": b'{"accounts": [', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 400
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert orjson.loads(body)["code"] == "request_incomplete"


async def test_a_gateway_webhook_reaches_its_verifier_in_the_senders_content_type(
    container: Container, client: httpx.AsyncClient
) -> None:
    """Braintree posts its webhooks as a form (bt_signature, bt_payload): the route hands the
    raw body to the gateway's verifier instead of refusing it as not JSON."""
    container.payments.gateways["sandbox"] = FakeGateway()  # its verifier refuses every body
    # a NUL in a JSON webhook is the gateway's verifier's to judge, not a 422 it would retry
    nul = await client.post(
        "/v1/webhooks/sandbox",
        content=b'{"type": "charge.succeeded", "data": {"note": "a\\u0000b"}}',
        headers={"Content-Type": "application/json"},
    )
    assert_problem(nul, 400, "webhook_signature_invalid")
    r = await client.post(
        "/v1/webhooks/sandbox",
        content=b"bt_signature=abc%7Cdef&bt_payload=eyJ9",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_problem(r, 400, "webhook_signature_invalid")


@pytest.mark.parametrize("text", [" ", "\n", "\u200b", "\u202ereversed", "a\x1b[31mred"])
def test_a_reason_must_be_visible_text(text: str) -> None:
    """Dispute, cancel and refund reasons: the types the order routes use."""
    with pytest.raises(pydantic.ValidationError):
        pydantic.TypeAdapter(Reason).validate_python(text)


def test_notes_and_reasons_keep_lines_and_joiners() -> None:
    text = (
        "The frame is cracked.\n\tSee photo 2 — family \U0001f468\u200d\U0001f469\u200d\U0001f467"
    )
    assert pydantic.TypeAdapter(Reason).validate_python(text) == text
    assert pydantic.TypeAdapter(Note).validate_python(text) == text
    with pytest.raises(pydantic.ValidationError):
        pydantic.TypeAdapter(Note).validate_python("ok\u2066hidden")


@pytest.mark.parametrize(
    "typed",
    [
        "\uff14\uff12\uff14\uff12" * 4,  # full-width
        "\u0664\u0662\u0664\u0662" * 4,  # Arabic-Indic
        "4242\u00a04242\u00a04242\u00a04242",  # no-break spaces
    ],
)
async def test_a_card_number_in_other_digits_is_refused_like_any_other(
    client: httpx.AsyncClient, keys: Keys, typed: str
) -> None:
    headers = await keys.headers(Role.ADMIN)
    body = {"amount": 1000, "currency": "USD", "description": f"card {typed}"}
    r = await _post(client, "/v1/payment_intents", headers, orjson.dumps(body))
    assert_problem(r, 400, "pan_not_allowed")
    r = await client.get("/v1/audit/events", params={"action": typed}, headers=headers)
    assert_problem(r, 400, "pan_not_allowed")

"""The API platform end to end: health, docs, the error model, limits, the PAN guard, request
ids, keys over HTTP and the audit events that authentication writes.

Each test runs on SQLite and PostgreSQL (the ``client`` fixture is parametrised by backend).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
import structlog

from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.logs import configure_logging
from hammerlock.security import service as keys_service
from hammerlock.security.keys import hash_secret
from hammerlock.security.permissions import Permission, Role
from tests.conftest import Keys

PROBLEM = "application/problem+json"
MiB = 1024 * 1024
MAX_SAFE_INT = 2**53 - 1
PAN = "4242 4242 4242 4242"  # Visa test card, Luhn-valid
TRACKING = "1234567812345670"  # Luhn-valid, but no card brand starts with 1


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM, r.headers
    body: dict[str, Any] = r.json()
    assert {"type", "title", "status", "detail", "code"} <= body.keys(), body
    assert body["status"] == status
    assert body["code"] == code, body
    assert body["type"].endswith("/" + code)
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body


def error_fields(body: dict[str, Any]) -> set[str]:
    return {e["field"] for e in body.get("errors", [])}


async def audit_rows(container: Container) -> list[dict[str, Any]]:
    async with container.db.transaction(write=False) as uow:
        rows = await uow.conn.execute(sa.text("SELECT action, event FROM audit_outbox ORDER BY id"))
        return [{"action": a, **orjson.loads(e)} for a, e in rows]


async def account_exists(client: httpx.AsyncClient, keys: Keys, account_id: str) -> bool:
    r = await client.get(
        f"/v1/ledger/accounts/{account_id}", headers=await keys.headers(Role.ADMIN)
    )
    assert r.status_code in (200, 404), r.text
    return r.status_code == 200


def account(account_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": account_id, "currency": "USD", "code": "test", **extra}


def transfer(transfer_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": transfer_id,
        "debit_account_id": "a",
        "credit_account_id": "b",
        "amount": 100,
        "currency": "USD",
        "code": "test",
        **extra,
    }


# --- health and docs ----------------------------------------------------------------------


async def test_healthz(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"status": "ok"}


async def test_readyz_checks_the_database(
    client: httpx.AsyncClient, container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "database": "ok"}

    async def unreachable() -> None:
        raise OSError("connection refused by 10.0.0.7:5432 password=hunter2")

    monkeypatch.setattr(container.db, "ping", unreachable)
    body = assert_problem(await client.get("/readyz"), 503, "service_unavailable")
    assert "hunter2" not in str(body)
    assert "10.0.0.7" not in str(body)


async def test_openapi_is_3_1_and_every_route_declares_its_permission(
    client: httpx.AsyncClient,
) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert spec["openapi"].startswith("3.1.")
    assert spec["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
    operations = [
        (method, path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]
    assert len(operations) >= 10
    known = {p.value for p in Permission}
    for method, path, op in operations:
        policy = op.get("x-hammerlock")
        assert policy is not None, f"{method.upper()} {path} has no x-hammerlock"
        assert policy["permission"] in known
        assert isinstance(policy["money_moving"], bool)
        if policy["permission"] == "public":
            assert not op.get("security"), path
        else:
            assert op["security"] == [{"ApiKey": []}], path
    by_op = {(m, p): op["x-hammerlock"] for m, p, op in operations}
    assert by_op[("post", "/v1/ledger/transfers")]["money_moving"] is True
    assert by_op[("post", "/v1/ledger/transfers")]["permission"] == "ledger.write"
    assert by_op[("get", "/healthz")]["permission"] == "public"
    assert by_op[("post", "/v1/keys")]["permission"] == "keys.manage"


async def test_docs_use_only_local_assets(client: httpx.AsyncClient) -> None:
    r = await client.get("/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    # No absolute URL at all: no CDN, no third-party script, style, font or image.
    assert not re.search(r"(?i)(https?:)?//[a-z0-9.-]+\.[a-z]", html), html
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    assert any(ref.endswith(".js") for ref in refs)
    assert any(ref.endswith(".css") for ref in refs)
    for ref in refs:
        assert ref.startswith("/"), ref
        asset = await client.get(ref)
        assert asset.status_code == 200, ref
        assert len(asset.content) > 100, ref
    assert "/openapi.json" in html


# --- the error model ------------------------------------------------------------------------


async def test_unknown_route_is_a_404_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/nope"), 404, "not_found")
    assert_problem(await client.post("/nope", json={}), 404, "not_found")


async def test_wrong_method_is_a_405_problem(client: httpx.AsyncClient, keys: Keys) -> None:
    r = await client.delete("/healthz")
    assert_problem(r, 405, "method_not_allowed")
    assert "GET" in r.headers["allow"]
    assert_problem(
        await client.put("/v1/keys", headers=await keys.headers(Role.ADMIN), json={}),
        405,
        "method_not_allowed",
    )


async def _chunks(total: int, sent: list[int], size: int = 64 * 1024) -> AsyncIterator[bytes]:
    while sent[0] < total:
        n = min(size, total - sent[0])
        sent[0] += n
        yield b" " * n


@pytest.mark.parametrize(
    ("path", "limit"),
    [("/v1/keys", MiB), ("/v1/ledger/accounts", 8 * MiB)],
)
async def test_body_over_the_route_limit_is_413_before_it_is_read(
    client: httpx.AsyncClient, keys: Keys, path: str, limit: int
) -> None:
    headers = {**await keys.headers(Role.ADMIN), "Content-Type": "application/json"}
    total = limit + 4 * MiB
    # Declared with Content-Length: refused before a single byte of the body is read.
    sent = [0]
    r = await client.post(
        path,
        headers={**headers, "Content-Length": str(limit + 1)},
        content=_chunks(limit + 1, sent),
    )
    assert_problem(r, 413, "payload_too_large")
    assert sent[0] == 0
    # Chunked, no Content-Length: reading stops at the limit, the rest is never pulled.
    sent = [0]
    r = await client.post(path, headers=headers, content=_chunks(total, sent))
    assert "content-length" not in r.request.headers
    assert_problem(r, 413, "payload_too_large")
    assert sent[0] <= limit + 64 * 1024
    # Just under the limit is read (and then refused as the bad JSON it is, not as too large).
    sent = [0]
    r = await client.post(path, headers=headers, content=_chunks(limit - 1024, sent))
    assert r.status_code != 413
    assert sent[0] == limit - 1024


async def test_wrong_content_type_is_415(client: httpx.AsyncClient, keys: Keys) -> None:
    headers = await keys.headers(Role.ADMIN)
    payload = orjson.dumps({"accounts": [account("ct1")]})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        h = dict(headers)
        if content_type:
            h["Content-Type"] = content_type
        r = await client.post("/v1/ledger/accounts", headers=h, content=payload)
        assert_problem(r, 415, "unsupported_media_type")
    assert not await account_exists(client, keys, "ct1")
    ok = await client.post(
        "/v1/ledger/accounts",
        headers={**headers, "Content-Type": "application/json; charset=utf-8"},
        content=payload,
    )
    assert ok.status_code == 200, ok.text


async def test_malformed_json_is_a_problem(client: httpx.AsyncClient, keys: Keys) -> None:
    headers = {**await keys.headers(Role.ADMIN), "Content-Type": "application/json"}
    for raw in (b"{", b'{"accounts": [}', b"\xff\xfe", b"{'accounts': []}", b"[" * 100_000):
        r = await client.post("/v1/ledger/accounts", headers=headers, content=raw)
        assert_problem(r, 400, "malformed_json")


async def test_unknown_fields_are_422_with_the_field_listed(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    headers = await keys.headers(Role.ADMIN)
    r = await client.post(
        "/v1/ledger/accounts",
        headers=headers,
        json={"accounts": [account("uf1", colour="red")], "dry_run": True},
    )
    body = assert_problem(r, 422, "validation_error")
    assert {"accounts.0.colour", "dry_run"} <= error_fields(body)
    r = await client.post(
        "/v1/keys", headers=headers, json={"role": "bidder", "name": "x", "scopes": ["all"]}
    )
    assert "scopes" in error_fields(assert_problem(r, 422, "validation_error"))
    assert not await account_exists(client, keys, "uf1")


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/v1/keys", {"role": "bidder", "name": "n" * 201}, "name"),
        ("/v1/keys", {"role": "bidder", "name": "n", "principal_id": "p" * 129}, "principal_id"),
        ("/v1/keys", {"role": "root", "name": "n"}, "role"),
        ("/v1/ledger/accounts", {"accounts": [account("x" * 129)]}, "accounts.0.id"),
        ("/v1/ledger/accounts", {"accounts": [account("a", code="c" * 33)]}, "accounts.0.code"),
        (
            "/v1/ledger/accounts",
            {"accounts": [account("a", metadata={"note": "m" * 2000})]},
            "accounts.0.metadata",
        ),
        (
            "/v1/ledger/accounts",
            {"accounts": [account("a", currency="ZZZ")]},
            "accounts.0.currency",
        ),
        (
            "/v1/ledger/accounts",
            {"accounts": [account("a", currency="usd")]},
            "accounts.0.currency",
        ),
        (
            "/v1/ledger/transfers",
            {"transfers": [transfer("t", amount=MAX_SAFE_INT + 1)]},
            "transfers.0.amount",
        ),
        (
            "/v1/ledger/transfers",
            {"transfers": [transfer("t", amount=2**64)]},
            "transfers.0.amount",
        ),
        ("/v1/ledger/transfers", {"transfers": [transfer("t", amount=-1)]}, "transfers.0.amount"),
        ("/v1/ledger/transfers", {"transfers": [transfer("t", amount=1.5)]}, "transfers.0.amount"),
        (
            "/v1/ledger/transfers",
            {"transfers": [transfer("t", amount="100")]},
            "transfers.0.amount",
        ),
        ("/v1/ledger/transfers", {"transfers": [transfer("t", amount=True)]}, "transfers.0.amount"),
        (
            "/v1/ledger/transfers",
            {"transfers": [transfer("t", currency="ZZZ")]},
            "transfers.0.currency",
        ),
        (
            "/v1/ledger/transfers",
            {"transfers": [transfer("t", flags=["x"])]},
            "transfers.0.flags.0",
        ),
    ],
)
async def test_bad_values_are_422_with_the_field_listed(
    client: httpx.AsyncClient, keys: Keys, path: str, payload: dict[str, Any], field: str
) -> None:
    headers = {**await keys.headers(Role.ADMIN), "Idempotency-Key": "bad-values"}
    r = await client.post(path, headers=headers, json=payload)
    body = assert_problem(r, 422, "validation_error")
    assert field in error_fields(body), body


async def test_more_than_8190_items_is_422(client: httpx.AsyncClient, keys: Keys) -> None:
    headers = {**await keys.headers(Role.ADMIN), "Idempotency-Key": "too-many"}
    accounts = [account(f"n{i}") for i in range(8_191)]
    r = await client.post("/v1/ledger/accounts", headers=headers, json={"accounts": accounts})
    assert "accounts" in error_fields(assert_problem(r, 422, "validation_error"))
    assert not await account_exists(client, keys, "n0")
    transfers = [transfer(f"t{i}") for i in range(8_191)]
    r = await client.post("/v1/ledger/transfers", headers=headers, json={"transfers": transfers})
    assert "transfers" in error_fields(assert_problem(r, 422, "validation_error"))


async def test_no_input_produces_a_500(client: httpx.AsyncClient, keys: Keys) -> None:
    """Odd inputs that have broken servers before: each gets a 4xx problem, never a 500."""
    admin = await keys.headers(Role.ADMIN)
    json_headers = {**admin, "Content-Type": "application/json", "Idempotency-Key": "odd"}
    created = await client.post(
        "/v1/ledger/accounts", headers=admin, json={"accounts": [account("a")]}
    )
    assert created.status_code == 200
    huge_int = b"9" * 5_000
    raw_bodies = [
        b'{"accounts": [{"id": "a", "currency": "USD", "code": "c", "metadata": {"x": NaN}}]}',
        b'{"accounts": [{"id": "a", "currency": "USD", "code": "c", "metadata": {"x": 1e999}}]}',
        b'{"accounts": [{"id": "a", "currency": "USD", "code": "c", "metadata": {"x": '
        + huge_int
        + b"}}]}",
        b'{"transfers": [{"id": "t", "amount": ' + huge_int + b"}]}",
        b'{"accounts": ' + b"[" * 70 + b"]" * 70 + b"}",
        b'{"accounts": [{"id": "a\\u0000", "currency": "USD", "code": "c"}]}',
        b'{"accounts": [{"id": "\\ud800", "currency": "USD", "code": "c"}]}',
        b'{"accounts": [{"id": "b", "currency": "USD", "code": "c", "metadata": {"\\ud800": 1}}]}',
        b'{"accounts": [{"id": "b", "currency": "USD", "code": "c", "metadata": {"k":"\\u0000"}}]}',
        b"null",
        b"[]",
        b'"accounts"',
        b"",
    ]
    for raw in raw_bodies:
        for path in ("/v1/ledger/accounts", "/v1/ledger/transfers", "/v1/keys"):
            r = await client.post(path, headers=json_headers, content=raw)
            assert r.status_code < 500, (path, raw[:60], r.text)
            if r.status_code >= 400:
                assert r.headers["content-type"] == PROBLEM
    gets = [
        "/v1/ledger/accounts/a/transfers?cursor=99999999999999999999",
        "/v1/ledger/accounts/a/transfers?cursor=9223372036854775808",
        "/v1/ledger/accounts/a/transfers?cursor=-1",
        "/v1/ledger/accounts/a/transfers?limit=0",
        "/v1/ledger/accounts/a/transfers?limit=100000000000000000000000",
        "/v1/ledger/accounts/%00",
        "/v1/ledger/transfers/" + "x" * 500,
        "/v1/keys?limit=-5",
        "/v1/keys?cursor=" + "z" * 65,
        "/v1/keys?cursor=%00",
        "/v1/ledger/transfers/%00",
        "/v1/ledger/accounts/a%00/transfers",
    ]
    for url in gets:
        r = await client.get(url, headers=admin)
        assert 400 <= r.status_code < 500, (url, r.text)
        assert r.headers["content-type"] == PROBLEM
    for url in ("/v1/keys/%00/revoke", "/v1/ledger/accounts/%00/close"):
        assert_problem(await client.post(url, headers=admin), 422, "validation_error")
    # Expiry instants that cannot be represented, or are already past, never poison the table.
    for expires_at in (
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        "2000-01-01T00:00:00Z",
        "not a date",
    ):
        r = await client.post(
            "/v1/keys",
            headers=admin,
            json={"role": "bidder", "name": "x", "expires_at": expires_at},
        )
        assert_problem(r, 422, "validation_error")
    for i, name in enumerate((rb"nul\u0000byte", rb"\ud800", rb"tab\there", b"")):
        raw = b'{"role": "bidder", "name": "' + name + b'"}'
        r = await client.post(
            "/v1/keys", headers={**json_headers, "Idempotency-Key": f"name-{i}"}, content=raw
        )
        assert_problem(r, 422, "validation_error")
    listed = await client.get("/v1/keys", headers=admin)
    assert listed.status_code == 200, listed.text


async def test_an_unexpected_error_is_a_bare_500_problem_with_the_request_id(
    client: httpx.AsyncClient,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("SELECT secret_hash FROM api_keys -- internal detail")

    monkeypatch.setattr(keys_service, "list_keys", broken)
    admin = await keys.headers(Role.ADMIN)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("info", "json")
    try:
        r = await client.get("/v1/keys", headers={**admin, "X-Request-Id": "req-500-test"})
    finally:
        structlog.reset_defaults()
        root.handlers, root.level = handlers, level
        logging.getLogger("uvicorn.access").disabled = False
    body = assert_problem(r, 500, "internal_error")
    assert "SELECT" not in r.text
    assert "secret_hash" not in r.text
    assert "Traceback" not in r.text
    assert set(body) == {"type", "title", "status", "detail", "code"}
    assert r.headers["x-request-id"] == "req-500-test"
    logged = [orjson.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    errors = [e for e in logged if e.get("event") == "http.unhandled_error"]
    assert errors, logged
    assert errors[0]["request_id"] == "req-500-test"


# --- the PAN guard --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"accounts": [account("p1", metadata={"note": PAN})]},
        {"accounts": [account("p1", metadata={"a": [1, {"b": ["x", f"card {PAN} exp 12/29"]}]})]},
        {"accounts": [account("p1", metadata={"4242-4242-4242-4242": "as a key"})]},
        {"accounts": [account("p1", code="4242424242424242")]},
        {"accounts": [account("p1", metadata={"amex": "3782 822463 10005"})]},
    ],
)
async def test_a_card_number_in_the_body_is_refused_and_nothing_is_written(
    client: httpx.AsyncClient, keys: Keys, container: Container, payload: dict[str, Any]
) -> None:
    admin = await keys.headers(Role.ADMIN)
    before = len(await audit_rows(container))
    r = await client.post("/v1/ledger/accounts", headers=admin, json=payload)
    body = assert_problem(r, 400, "pan_not_allowed")
    assert "4242" not in r.text
    assert "3782" not in r.text
    assert "vault" in body["detail"]
    assert not await account_exists(client, keys, "p1")
    assert len(await audit_rows(container)) == before


async def test_a_card_number_in_a_key_name_creates_no_key(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    admin = await keys.headers(Role.ADMIN)
    before = (await client.get("/v1/keys", headers=admin)).json()["data"]
    r = await client.post("/v1/keys", headers=admin, json={"role": "bidder", "name": PAN})
    assert_problem(r, 400, "pan_not_allowed")
    assert (await client.get("/v1/keys", headers=admin)).json()["data"] == before


async def test_a_card_number_in_a_header_path_or_query_is_refused(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    admin = await keys.headers(Role.ADMIN)
    r = await client.post(
        "/v1/ledger/accounts",
        headers={**admin, "X-Customer-Note": "4242-4242-4242-4242"},
        json={"accounts": [account("h1")]},
    )
    assert_problem(r, 400, "pan_not_allowed")
    assert not await account_exists(client, keys, "h1")
    r = await client.post(
        "/v1/ledger/transfers",
        headers={**admin, "Idempotency-Key": "4242424242424242"},
        json={"transfers": [transfer("t1")]},
    )
    assert_problem(r, 400, "pan_not_allowed")
    assert_problem(
        await client.get("/v1/ledger/accounts/4242-4242-4242-4242", headers=admin),
        400,
        "pan_not_allowed",
    )
    assert_problem(
        await client.get("/v1/keys", headers=admin, params={"cursor": PAN}), 400, "pan_not_allowed"
    )
    # Without a key too: the guard runs before authentication.
    assert_problem(await client.get("/healthz", headers={"X-Note": PAN}), 400, "pan_not_allowed")


async def test_non_card_numbers_pass_the_guard(client: httpx.AsyncClient, keys: Keys) -> None:
    r = await client.post(
        "/v1/ledger/accounts",
        headers={**await keys.headers(Role.ADMIN), "X-Tracking": TRACKING},
        json={"accounts": [account("ok1", metadata={"tracking": TRACKING, "ref": "4242 4242"})]},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"results": [{"id": "ok1", "result": "ok"}]}


# --- request ids ----------------------------------------------------------------------------


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient, keys: Keys) -> None:
    r = await client.get("/healthz", headers={"X-Request-Id": "client-req-0001"})
    assert r.headers["x-request-id"] == "client-req-0001"
    generated = set()
    for bad in ("short", "has space in it", "x" * 65, "semi;colon-000", None):
        headers = {"X-Request-Id": bad} if bad else {}
        r = await client.get("/healthz", headers=headers)
        rid = r.headers["x-request-id"]
        assert rid != bad
        assert re.fullmatch(r"req_[0-9a-f]{24}", rid), rid
        generated.add(rid)
    assert len(generated) == 5
    # On error responses too, including those answered before any route runs.
    assert "x-request-id" in (await client.get("/nope")).headers
    assert "x-request-id" in (await client.get("/v1/keys")).headers
    r = await client.post(
        "/v1/keys",
        headers={**await keys.headers(Role.ADMIN), "Content-Length": str(9 * MiB)},
        content=b"",
    )
    assert r.status_code == 413
    assert "x-request-id" in r.headers


# --- keys over HTTP -------------------------------------------------------------------------


async def test_create_returns_the_secret_once_and_list_never_shows_it(
    client: httpx.AsyncClient, keys: Keys, container: Container
) -> None:
    admin = await keys.headers(Role.ADMIN)
    r = await client.post(
        "/v1/keys",
        headers=admin,
        json={"role": "operator", "name": "ops bot", "principal_id": "staff:7"},
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert set(created) == {
        "id", "principal_id", "role", "name", "created_at", "expires_at", "revoked_at", "secret",
    }  # fmt: skip
    assert created["role"] == "operator"
    assert created["principal_id"] == "staff:7"
    assert created["created_at"] == "2026-01-01T00:00:00.000000Z"
    secret = created["secret"]
    assert secret.startswith("hl_")
    # The new key works, with its role.
    ops = {"Authorization": f"Bearer {secret}"}
    assert (await client.get("/v1/ledger/accounts/nope", headers=ops)).status_code == 404
    assert_problem(await client.get("/v1/keys", headers=ops), 403, "forbidden")
    # Listing shows the key's metadata, never its secret or its hash.
    listed = await client.get("/v1/keys", headers=admin)
    assert listed.status_code == 200
    rows = {k["id"]: k for k in listed.json()["data"]}
    assert created["id"] in rows
    assert "secret" not in rows[created["id"]]
    assert "secret_hash" not in rows[created["id"]]
    secret_part = secret.split("_", 2)[2]  # hl_<id>_<secret>; the secret may hold "_"
    stored_hash = hash_secret(container.pepper, secret_part)
    for text in (listed.text, str(await audit_rows(container))):
        assert secret_part not in text
        assert stored_hash not in text
    # Without a principal, the key gets a fresh one of its own.
    r2 = await client.post("/v1/keys", headers=admin, json={"role": "bidder", "name": "b"})
    assert r2.json()["principal_id"].startswith("prn_")
    r3 = await client.post("/v1/keys", headers=admin, json={"role": "bidder", "name": "b"})
    assert r3.json()["principal_id"] != r2.json()["principal_id"]


async def test_keys_list_paginates(client: httpx.AsyncClient, keys: Keys) -> None:
    admin = await keys.headers(Role.ADMIN)
    for i in range(4):
        r = await client.post("/v1/keys", headers=admin, json={"role": "bidder", "name": f"k{i}"})
        assert r.status_code == 201
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/v1/keys", headers=admin, params=params)).json()
        assert len(page["data"]) <= 2
        seen += [k["id"] for k in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 == len(set(seen))  # four created + the admin's own
    assert seen == sorted(seen)


async def test_a_revoked_key_gets_401(
    client: httpx.AsyncClient, keys: Keys, container: Container
) -> None:
    admin = await keys.headers(Role.ADMIN)
    victim = await keys.create(Role.OPERATOR)
    assert (await client.get("/v1/ledger/accounts/x", headers=victim["headers"])).status_code == 404
    r = await client.post(f"/v1/keys/{victim['key'].id}/revoke", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["revoked_at"] == "2026-01-01T00:00:00.000000Z"
    assert_problem(
        await client.get("/v1/ledger/accounts/x", headers=victim["headers"]), 401, "unauthenticated"
    )
    # Revoking again is harmless; an unknown key is a 404 problem.
    assert (
        await client.post(f"/v1/keys/{victim['key'].id}/revoke", headers=admin)
    ).status_code == 200
    assert_problem(
        await client.post("/v1/keys/key_doesnotexist0000/revoke", headers=admin),
        404,
        "key_not_found",
    )
    events = [e for e in await audit_rows(container) if e["action"] == "keys.revoke"]
    assert [e["resource"]["id"] for e in events] == [victim["key"].id] * 2
    assert [e["details"]["already_revoked"] for e in events] == [False, True]


async def test_an_expired_key_gets_401(
    client: httpx.AsyncClient, keys: Keys, clock: FixedClock
) -> None:
    admin = await keys.headers(Role.ADMIN)
    r = await client.post(
        "/v1/keys",
        headers=admin,
        json={"role": "auditor", "name": "short-lived", "expires_at": "2026-01-01T00:01:00Z"},
    )
    assert r.status_code == 201, r.text
    assert r.json()["expires_at"] == "2026-01-01T00:01:00.000000Z"
    auditor = {"Authorization": f"Bearer {r.json()['secret']}"}
    assert (await client.get("/v1/ledger/accounts/x", headers=auditor)).status_code == 404
    clock.advance(59.999999)
    assert (await client.get("/v1/ledger/accounts/x", headers=auditor)).status_code == 404
    clock.advance(us=1)  # now == expires_at: no longer usable
    r = await client.get("/v1/ledger/accounts/x", headers=auditor)
    assert_problem(r, 401, "unauthenticated")


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic YWRtaW46YWRtaW4=",
        "Bearer not-a-key",
        "Bearer hl_aaaaaaaaaaaaaaaa_secret",
        "Bearer hl_AAAAAAAAAAAAAAAA_secret",
        "Bearer hl_" + "a" * 300,
    ],
)
async def test_bad_credentials_are_401_and_audited(
    client: httpx.AsyncClient, container: Container, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    r = await client.get("/v1/ledger/transfers/t1", headers=headers)
    assert_problem(r, 401, "unauthenticated")
    assert r.headers["www-authenticate"].startswith("Bearer")
    events = await audit_rows(container)
    assert [e["action"] for e in events] == ["auth.failure"]
    event = events[0]
    assert event["outcome"] == {"status": "failure", "code": "unauthenticated"}
    assert event["resource"] == {"type": "route", "id": "/v1/ledger/transfers/{transfer_id}"}
    assert event["actor"] == {"principal_id": None, "role": None, "key_id": None}
    assert event["request_id"] == r.headers["x-request-id"]
    assert event["origin"]["node"] == container.node_name
    if authorization and len(authorization) > 10:
        assert authorization.split()[-1] not in orjson.dumps(event).decode()


async def test_a_wrong_secret_for_a_real_key_is_401(
    client: httpx.AsyncClient, keys: Keys, container: Container
) -> None:
    real = await keys.create(Role.ADMIN)
    forged = real["plaintext"][:-4] + ("AAAA" if not real["plaintext"].endswith("AAAA") else "BBBB")
    r = await client.get("/v1/keys", headers={"Authorization": f"Bearer {forged}"})
    assert_problem(r, 401, "unauthenticated")
    assert [e["action"] for e in await audit_rows(container)][-1] == "auth.failure"


async def test_permission_denials_are_403_and_audited_with_the_actor(
    client: httpx.AsyncClient, keys: Keys, container: Container
) -> None:
    bidder = await keys.create(Role.BIDDER, "bidder:42")
    before = len(await audit_rows(container))
    r = await client.post(
        "/v1/keys", headers=bidder["headers"], json={"role": "admin", "name": "escalate"}
    )
    body = assert_problem(r, 403, "forbidden")
    assert "bidder" in body["detail"]
    events = (await audit_rows(container))[before:]
    assert [e["action"] for e in events] == ["auth.denied"]
    assert events[0]["actor"] == {
        "principal_id": "bidder:42",
        "role": "bidder",
        "key_id": bidder["key"].id,
    }
    assert events[0]["outcome"] == {"status": "failure", "code": "forbidden"}
    assert events[0]["resource"] == {"type": "route", "id": "/v1/keys"}
    # Nothing was created.
    admin = await keys.headers(Role.ADMIN)
    names = [k["name"] for k in (await client.get("/v1/keys", headers=admin)).json()["data"]]
    assert "escalate" not in names


async def test_key_creation_is_audited_with_the_actor(
    client: httpx.AsyncClient, keys: Keys, container: Container
) -> None:
    admin = await keys.create(Role.ADMIN, "staff:alice")
    r = await client.post(
        "/v1/keys",
        headers={**admin["headers"], "User-Agent": "ops-cli/1.0"},
        json={"role": "service", "name": "checkout", "principal_id": "svc:checkout"},
    )
    assert r.status_code == 201
    events = [e for e in await audit_rows(container) if e["action"] == "keys.create"]
    event = events[-1]
    assert event["actor"] == {
        "principal_id": "staff:alice",
        "role": "admin",
        "key_id": admin["key"].id,
    }
    assert event["resource"] == {"type": "api_key", "id": r.json()["id"]}
    assert event["details"] == {
        "role": "service",
        "principal_id": "svc:checkout",
        "name": "checkout",
    }
    assert event["outcome"] == {"status": "success", "code": None}
    assert event["origin"]["user_agent"] == "ops-cli/1.0"
    assert event["request_id"] == r.headers["x-request-id"]
    assert r.json()["secret"] not in str(event)

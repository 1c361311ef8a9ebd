"""The thinnest end-to-end path: health, a key, an account pair, a transfer, a replay."""

from __future__ import annotations

import httpx

from hammerlock.security.permissions import Role
from tests.conftest import Keys


async def test_transfer_round_trip(client: httpx.AsyncClient, keys: Keys) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200
    headers = await keys.headers(Role.OPERATOR)
    r = await client.post(
        "/v1/ledger/accounts",
        headers=headers,
        json={
            "accounts": [
                {"id": "cash", "currency": "USD", "code": "cash"},
                {"id": "wallet", "currency": "USD", "code": "wallet"},
            ]
        },
    )
    assert r.status_code == 200, r.text
    body = {
        "transfers": [
            {
                "id": "t1",
                "debit_account_id": "cash",
                "credit_account_id": "wallet",
                "amount": 1250,
                "currency": "USD",
                "code": "top_up",
            }
        ]
    }
    first = await client.post(
        "/v1/ledger/transfers", headers={**headers, "Idempotency-Key": "k-1"}, json=body
    )
    assert first.status_code == 200, first.text
    assert first.json() == {"results": [{"id": "t1", "result": "ok"}]}
    again = await client.post(
        "/v1/ledger/transfers", headers={**headers, "Idempotency-Key": "k-1"}, json=body
    )
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    wallet = (await client.get("/v1/ledger/accounts/wallet", headers=headers)).json()
    assert wallet["credits_posted"] == 1250

"""Auction tests run the real services, database and ledger against the in-memory gateway."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock, format_rfc3339
from hammerlock.payments.service import Payments, PaymentsConfig
from hammerlock.security.permissions import Role
from tests.conftest import Keys
from tests.payments.fake_gateway import FakeGateway


@pytest.fixture
def gateway(container: Container) -> FakeGateway:
    fake = FakeGateway()
    container.gateways["sandbox"] = fake
    container.payments = Payments(
        container.db, container.gateways, config=PaymentsConfig(janitor_grace_s=0)
    )
    container.auctions.payments = container.payments
    return fake


def idem() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


@dataclass
class Party:
    id: str
    headers: dict[str, str]


class Market:
    """Registers parties and lots through the HTTP API, as a marketplace's backend would."""

    def __init__(self, client: httpx.AsyncClient, keys: Keys, clock: FixedClock) -> None:
        self.client = client
        self.keys = keys
        self.clock = clock

    async def staff(self, role: Role = Role.OPERATOR) -> dict[str, str]:
        return await self.keys.headers(role)

    async def party(self, kind: str, name: str = "Ada", *, card: bool = True) -> Party:
        r = await self.client.post(
            f"/v1/{kind}s", json={"name": name}, headers=await self.staff(Role.SERVICE)
        )
        assert r.status_code == 201, r.text
        body = r.json()
        party = Party(body["id"], {"Authorization": f"Bearer {body['api_key']}"})
        if kind == "bidder" and card:
            r = await self.client.post(
                f"/v1/bidders/{party.id}/cards",
                json={"payment_method": f"tok_ok_{party.id}"},
                headers=party.headers,
            )
            assert r.status_code == 201, r.text
        return party

    async def lot(self, seller: Party, *, open_: bool = True, **terms: Any) -> dict[str, Any]:
        now = self.clock.now_us()
        body = {
            "title": "A rare coin",
            "currency": "USD",
            "estimate": 50_000,
            "starting_price": 1_000,
            "reserve_price": 0,
            "starts_at": format_rfc3339(now),
            "ends_at": format_rfc3339(now + 3_600_000_000),
            **terms,
        }
        r = await self.client.post("/v1/lots", json=body, headers=seller.headers)
        assert r.status_code == 201, r.text
        lot: dict[str, Any] = r.json()
        if open_:
            r = await self.client.post(f"/v1/lots/{lot['id']}/open", headers=seller.headers)
            assert r.status_code == 200, r.text
            lot = r.json()
        return lot

    async def bid(self, lot_id: str, bidder: Party, amount: int) -> httpx.Response:
        return await self.client.post(
            f"/v1/lots/{lot_id}/bids",
            json={"max_amount": amount},
            headers={**bidder.headers, **idem()},
        )

    async def get(self, lot_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        r = await self.client.get(f"/v1/lots/{lot_id}", headers=headers or await self.staff())
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


@pytest.fixture
def market(client: httpx.AsyncClient, keys: Keys, clock: FixedClock) -> Market:
    return Market(client, keys, clock)

"""The gateway contract, run against the sandbox (through its real challenge routes)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from hammerlock.clock import FixedClock
from hammerlock.payments.gateways.base import AuthorizeRequest, CardData, Charge, PaymentSource
from hammerlock.vault.sandbox import SandboxGateway, build_challenge_router, parse_faults
from tests.contract.gateway_contract import GatewayContract, GatewayHarness, Scenario

BASE_URL = "http://vault.test"

CARDS = {
    Scenario.SUCCESS: "4242424242424242",
    Scenario.DECLINE: "4000000000000002",
    Scenario.INSUFFICIENT_FUNDS: "4000000000009995",
    Scenario.THREE_D_SECURE: "4000002760003184",
    Scenario.PROCESSING_ERROR: "4000000000000119",
}


class SandboxHarness:
    payout_destination = "acct_seller_1"

    def __init__(self, gateway: SandboxGateway, browser: httpx.AsyncClient) -> None:
        self.gateway = gateway
        self._browser = browser

    def source(self, scenario: Scenario) -> PaymentSource:
        return CardData(number=CARDS[scenario], exp_month=12, exp_year=2034, cvc="123")

    async def complete_challenge(self, charge: Charge, *, passed: bool) -> None:
        assert charge.next_action_url is not None
        result = "pass" if passed else "fail"
        response = await self._browser.post(charge.next_action_url, json={"result": result})
        assert response.status_code == 200, response.text

    async def authorize_unanswered(self, request: AuthorizeRequest) -> None:
        plan = self.gateway.faults
        self.gateway.faults = parse_faults("timeout_after_charge@60s")
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gateway.authorize(request), timeout=0.5)
                pytest.fail("the stalled authorize answered")
        finally:
            self.gateway.faults = plan

    async def charges_under(self, gateway_key: str) -> int:
        page = await self.gateway.list_charges(1_000, gateway_key_prefix=gateway_key)
        return sum(1 for c in page["data"] if c["gateway_key"] == gateway_key)


@pytest.fixture
async def sandbox_harness(tmp_path: Path) -> AsyncIterator[SandboxHarness]:
    gateway = SandboxGateway(tmp_path, public_base_url=BASE_URL, clock=FixedClock())
    app = FastAPI()
    app.include_router(build_challenge_router(gateway))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as browser:
        yield SandboxHarness(gateway, browser)
    await gateway.aclose()


class TestSandboxContract(GatewayContract):
    @pytest.fixture
    def harness(self, sandbox_harness: SandboxHarness) -> GatewayHarness:
        return sandbox_harness

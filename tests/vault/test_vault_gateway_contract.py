"""The gateway contract, run against the sandbox as the API reaches it: :class:`VaultGateway`
with vault tokens, over signed HTTP, through the vault's detokenization, to the real sandbox."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

import pytest

from hammerlock.payments.gateways.base import AuthorizeRequest, Charge, VaultToken
from hammerlock.vault.client import VaultGateway
from hammerlock.vault.sandbox import SandboxGateway, parse_faults
from tests.contract.gateway_contract import GatewayContract, GatewayHarness, Scenario
from tests.vault.conftest import VAULT_URL, Vault

CARDS = {
    Scenario.SUCCESS: "4242424242424242",
    Scenario.DECLINE: "4000000000000002",
    Scenario.INSUFFICIENT_FUNDS: "4000000000009995",
    Scenario.THREE_D_SECURE: "4000002760003184",
    Scenario.PROCESSING_ERROR: "4000000000000119",
}


class VaultHarness:
    """The sandbox, reached as the API reaches it: tokens in, signed HTTP, the vault between."""

    payout_destination = "acct_seller_1"

    def __init__(self, vault: Vault, tokens: Mapping[Scenario, str]) -> None:
        self.vault = vault
        self.gateway = VaultGateway(vault.client, "sandbox")
        self._tokens = tokens

    def source(self, scenario: Scenario) -> VaultToken:
        return VaultToken(self._tokens[scenario])

    async def complete_challenge(self, charge: Charge, *, passed: bool) -> None:
        assert charge.next_action_url is not None
        assert charge.next_action_url.startswith(VAULT_URL + "/")  # absolute, on the vault
        result = "pass" if passed else "fail"
        response = await self.vault.browser.post(charge.next_action_url, json={"result": result})
        assert response.status_code == 200, response.text

    async def authorize_unanswered(self, request: AuthorizeRequest) -> None:
        sandbox = self.vault.container.gateways["sandbox"]
        assert isinstance(sandbox, SandboxGateway)
        plan = sandbox.faults
        sandbox.faults = parse_faults("timeout_after_charge@60s")
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gateway.authorize(request), timeout=0.5)
                pytest.fail("the stalled authorize answered")
        finally:
            sandbox.faults = plan

    async def charges_under(self, gateway_key: str) -> int:
        page = await self.vault.client.sandbox_charges(limit=1_000, gateway_key_prefix=gateway_key)
        return sum(1 for c in page["data"] if c["gateway_key"] == gateway_key)


@pytest.fixture
def backend() -> str:
    return "sqlite"


class TestVaultGatewayContract(GatewayContract):
    @pytest.fixture
    async def harness(self, vault: Vault) -> GatewayHarness:
        tokens = {s: str((await vault.tokenize(n))["id"]) for s, n in CARDS.items()}
        return VaultHarness(vault, tokens)

"""The API and the vault agree on which card gateways exist."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.settings import Settings
from hammerlock.vault.container import default_gateways

STRIPE = {"stripe_api_key": SecretStr("sk_test_x"), "stripe_webhook_secret": SecretStr("whsec_x")}
BRAINTREE = {
    "braintree_merchant_id": "merchant",
    "braintree_public_key": "public",
    "braintree_private_key": SecretStr("private"),
}


@pytest.mark.parametrize(
    "extra",
    [
        {},
        STRIPE,
        BRAINTREE,
        {**STRIPE, **BRAINTREE},
        {"stripe_api_key": SecretStr("sk_test_x")},  # no webhook secret
        {"braintree_merchant_id": "merchant"},  # no keys
        {k: v for k, v in BRAINTREE.items() if k != "braintree_public_key"},
    ],
)
async def test_the_api_routes_to_exactly_the_gateways_the_vault_serves(
    vault_settings: Settings, extra: dict[str, Any]
) -> None:
    settings = vault_settings.model_copy(update=extra)
    served, _ = default_gateways(settings, FixedClock())
    try:
        assert sorted(Container._gateway_names(settings)) == sorted(served)
    finally:
        for gateway in served.values():
            aclose = getattr(gateway, "aclose", None)
            if aclose is not None:
                await aclose()

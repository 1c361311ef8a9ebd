"""An in-memory gateway for the payments service's own tests (the sandbox, Stripe and Braintree
adapters pass the shared contract suite in tests/contract/).

Scenario by token: ``tok_ok…`` succeeds, ``tok_decline…`` declines ``card_declined``,
``tok_funds…`` declines ``insufficient_funds``, ``tok_3ds…`` asks for a challenge. Faults:
``timeout_after_charge`` makes the next authorize record the charge and then raise
:class:`GatewayTimeout` (the caller never learns the outcome); ``down`` raises
:class:`GatewayUnavailable` before anything happens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from hammerlock.payments.gateways.base import (
    AuthorizeRequest,
    CardSummary,
    Charge,
    ChargeStatus,
    GatewayRejected,
    GatewayTimeout,
    GatewayUnavailable,
    Payout,
    PayoutRequest,
    Refund,
    VaultToken,
    WebhookEvent,
)


class FakeGateway:
    name = "sandbox"

    def __init__(self) -> None:
        self.charges: dict[str, Charge] = {}
        self.refunds: dict[str, Refund] = {}
        self.calls: list[str] = []
        self.faults: set[str] = set()
        self.country = "US"  # Braintree reports alpha-3 ("USA"): the service must cope
        self.poisoned: set[str] = set()  # intent ids whose calls raise an unforeseen error
        self.down_for = 0  # the next N calls find the gateway unreachable
        self.refuse_payouts = False  # while set, every payout comes back failed
        # Payouts made, by key; find_payout shows them only while lookups is set (off: a
        # gateway that cannot look a payout up by its key, as Stripe for old transfers).
        self.made_payouts: dict[str, Payout] = {}
        self.lookups = False

    def _down(self) -> bool:
        if self.down_for > 0:
            self.down_for -= 1
            return True
        return self._fault("down")

    def _fault(self, name: str) -> bool:
        if name in self.faults:
            self.faults.discard(name)
            return True
        return False

    async def authorize(self, request: AuthorizeRequest) -> Charge:
        self.calls.append("authorize")
        if request.gateway_key.split(".")[0] in self.poisoned:
            raise RuntimeError("an answer nobody foresaw")
        if self._down():
            raise GatewayUnavailable("fake gateway down")
        existing = self.charges.get(request.gateway_key)
        if existing is None:
            assert isinstance(request.source, VaultToken)
            token = request.source.token_id
            card = CardSummary(
                brand="visa", last4="4242", country=self.country, fingerprint="fp_" + token
            )
            status, code = ChargeStatus.AUTHORIZED, None
            if token.startswith("tok_decline"):
                status, code = ChargeStatus.DECLINED, "card_declined"
            elif token.startswith("tok_funds"):
                status, code = ChargeStatus.DECLINED, "insufficient_funds"
            elif token.startswith("tok_3ds") or request.force_three_d_secure:
                status = ChargeStatus.REQUIRES_ACTION
            existing = Charge(
                gateway="sandbox",
                gateway_key=request.gateway_key,
                charge_id=f"ch_{len(self.charges)}",
                status=status,
                amount=request.amount,
                currency=request.currency,
                error_code=code,
                decline_code="generic_decline" if code == "card_declined" else None,
                message="declined" if code else None,
                next_action_url=(
                    f"http://vault.test/v1/3ds/{request.gateway_key}"
                    if status is ChargeStatus.REQUIRES_ACTION
                    else None
                ),
                card=card,
            )
            self.charges[request.gateway_key] = existing
        if self._fault("timeout_after_charge"):
            raise GatewayTimeout("fake gateway: no answer")
        return existing

    def complete_challenge(self, gateway_key: str, *, passed: bool) -> None:
        charge = self.charges[gateway_key]
        assert charge.status is ChargeStatus.REQUIRES_ACTION
        if passed:
            self.charges[gateway_key] = replace(charge, status=ChargeStatus.AUTHORIZED)
        else:
            self.charges[gateway_key] = replace(
                charge, status=ChargeStatus.DECLINED, error_code="authentication_required"
            )

    def _get(self, key: str) -> Charge:
        charge = self.charges.get(key)
        if charge is None:
            raise GatewayRejected(f"no charge {key}")
        return charge

    async def capture(self, gateway_key: str, amount: int) -> Charge:
        self.calls.append("capture")
        if self._down():
            raise GatewayUnavailable("fake gateway down")
        charge = self._get(gateway_key)
        if charge.status is ChargeStatus.AUTHORIZED:
            assert amount <= charge.amount
            charge = replace(charge, status=ChargeStatus.CAPTURED, amount_captured=amount)
            self.charges[gateway_key] = charge
        if self._fault("timeout_after_capture"):
            raise GatewayTimeout("fake gateway: no answer")
        return charge

    async def void(self, gateway_key: str) -> Charge:
        self.calls.append("void")
        charge = self._get(gateway_key)
        if charge.status is ChargeStatus.DECLINED:  # as the sandbox does
            raise GatewayRejected(f"charge {gateway_key} is declined; nothing to void")
        if charge.status in {ChargeStatus.AUTHORIZED, ChargeStatus.REQUIRES_ACTION}:
            charge = replace(charge, status=ChargeStatus.VOIDED)
            self.charges[gateway_key] = charge
        return charge

    async def refund(self, gateway_key: str, refund_key: str, amount: int) -> Refund:
        self.calls.append("refund")
        if refund_key in self.refunds:
            return self.refunds[refund_key]
        if self._fault("refund_pending"):  # Stripe: a refund may answer "pending" first
            charge = self._get(gateway_key)
            return Refund(
                "sandbox",
                refund_key,
                "rf_pending",
                charge.charge_id,
                amount,
                charge.currency,
                "pending",
            )
        charge = self._get(gateway_key)
        if charge.amount_refunded + amount > charge.amount_captured:
            raise GatewayRejected("refund beyond captured")
        self.charges[gateway_key] = replace(charge, amount_refunded=charge.amount_refunded + amount)
        refund = Refund(
            "sandbox",
            refund_key,
            f"rf_{len(self.refunds)}",
            charge.charge_id,
            amount,
            charge.currency,
            "succeeded",
        )
        self.refunds[refund_key] = refund
        return refund

    async def payout(self, request: PayoutRequest) -> Payout:
        status = "failed" if self.refuse_payouts else "paid"
        made = Payout(
            "sandbox", request.payout_key, "po_1", request.amount, request.currency, status
        )
        self.made_payouts.setdefault(request.payout_key, made)
        return made

    async def find_payout(self, payout_key: str) -> Payout | None:
        self.calls.append("find_payout")
        return self.made_payouts.get(payout_key) if self.lookups else None

    async def retrieve_by_idempotency_key(self, gateway_key: str) -> Charge | None:
        self.calls.append("retrieve")
        return self.charges.get(gateway_key)

    async def release_from_escrow(self, gateway_key: str) -> Charge:
        raise GatewayRejected(f"no escrow for {gateway_key}")

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:  # noqa: ARG002
        raise GatewayRejected("fake gateway sends no webhooks")

    def authorizations(self) -> int:
        """Charges that took money or hold it (what a bank statement would show)."""
        return sum(
            1
            for c in self.charges.values()
            if c.status in {ChargeStatus.AUTHORIZED, ChargeStatus.CAPTURED}
        )

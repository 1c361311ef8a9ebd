"""The rules-based assessor: gathers what the rules need from the database, then asks the pure
model (``risk.model.evaluate``) whether a person must look at this payment or refund."""

from __future__ import annotations

from hammerlock.db.uow import UnitOfWork
from hammerlock.payments import storage as payments_storage
from hammerlock.payments.gateways.base import Charge
from hammerlock.payments.model import PaymentIntent, Purpose, country_alpha2
from hammerlock.payments.service import ReviewNeed
from hammerlock.risk.model import RiskDecision, RiskInput, RiskRules, evaluate

__all__ = ["RulesAssessor"]


def _need(decision: RiskDecision) -> ReviewNeed | None:
    if not decision.review_required:
        return None
    return ReviewNeed(
        approvals_required=max(1, decision.approvals_required),
        score=decision.score,
        reasons=tuple(
            {"code": r.code.value, "points": r.points, "detail": r.detail} for r in decision.reasons
        ),
    )


class RulesAssessor:
    """Implements ``payments.service.RiskAssessor`` with the declarative rules."""

    def __init__(self, rules: RiskRules) -> None:
        self.rules = rules

    async def for_payment(
        self, uow: UnitOfWork, intent: PaymentIntent, charge: Charge
    ) -> ReviewNeed | None:
        now = uow.clock.now_us()
        since = now - self.rules.velocity_window_s * 1_000_000
        fingerprint = charge.card.fingerprint if charge.card else intent.card_fingerprint
        rules = self.rules
        # Only what an enabled rule reads (three queries per payment otherwise, for nothing).
        by_card, by_customer = await payments_storage.count_recent(
            uow,
            fingerprint=fingerprint if rules.card_velocity.enabled else None,
            customer=intent.customer if rules.customer_velocity.enabled else None,
            since_us=since,
            excluding=intent.id,
        )
        is_new = (
            rules.new_customer.enabled
            and intent.customer is not None
            and not await payments_storage.customer_has_history(
                uow, intent.customer, intent.created_us
            )
        )
        decision = evaluate(
            RiskInput(
                amount_minor=intent.amount,
                currency=intent.currency,
                is_deposit=intent.purpose is Purpose.DEPOSIT,
                customer_id=intent.customer,
                customer_is_new=is_new,
                card_fingerprint=fingerprint,
                card_country=country_alpha2(charge.card.country if charge.card else None),
                billing_country=None,
                fingerprint_payments_in_window=by_card,
                customer_payments_in_window=by_customer,
            ),
            self.rules,
        )
        return _need(decision)

    async def for_refund(
        self,
        uow: UnitOfWork,  # noqa: ARG002 - the protocol's signature
        intent: PaymentIntent,
        amount: int,
    ) -> ReviewNeed | None:
        decision = evaluate(
            RiskInput(amount_minor=amount, currency=intent.currency, is_refund=True), self.rules
        )
        return _need(decision)

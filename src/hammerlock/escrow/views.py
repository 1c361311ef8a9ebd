"""The public JSON shape of an order: one place, used by ``GET /v1/orders/{id}``, the action
routes and the outbound ``order.*`` webhooks (whose ``data`` carries no timeline or balance).

What a reader sees depends on how it relates to the order (:class:`Reader`; docs/escrow.md "Who
sees what"): bidders never see another bidder's maximum, and only the buyer and staff see the
buyer's payment in full.
"""

from __future__ import annotations

import enum
from typing import Any, Final

from hammerlock.clock import format_rfc3339
from hammerlock.escrow.model import Order, refund_intent, refund_kind

__all__ = ["Reader", "intent_for", "order_for", "order_json"]


class Reader(enum.StrEnum):
    """How the reader of an order relates to it (the escrow service decides; views render)."""

    STAFF = "staff"  # operator, service, admin (and the webhooks): everything
    SELLER = "seller"  # the lot's seller: the offer's amount, the charge's status only
    BUYER = "buyer"  # the order's buyer: never the runner-up's maximum nor a review's internals
    RUNNER_UP = "runner_up"  # a defaulted order's runner-up, once offered: the offer, no payment


# What a party sees of the buyer's payment intent and of its risk review: the seller only how the
# charge stands (no card, payment method or customer), the buyer not why it is reviewed nor who
# decides (score, rules that fired, approvals, reviewers and their note are the reviewers' own).
_SELLER_INTENT: Final = ("id", "status", "amount", "currency")
_PARTY_REVIEW: Final = ("id", "status", "expires_at")
_RUNNER_UP_ORDER: Final = (
    "id",
    "object",
    "lot_id",
    "seller_id",
    "status",
    "currency",
    "second_chance",
    "parent_order",
    "created",
    "updated",
)


def _ts(us: int | None) -> str | None:
    return None if us is None else format_rfc3339(us)


def order_for(reader: Reader, order: Order) -> dict[str, Any]:
    """``order`` as ``reader`` may see it. The buyer gets no ``second_chance.amount`` (the
    runner-up's maximum); the runner-up gets only the offer made to it: no amounts, deposit,
    payment, refunds or shipping of the buyer's."""
    body = order_json(order)
    if reader is Reader.BUYER:
        body["second_chance"]["amount"] = None
    elif reader is Reader.RUNNER_UP:
        body = {key: body[key] for key in _RUNNER_UP_ORDER}
    return body


def intent_for(reader: Reader, intent: dict[str, Any]) -> dict[str, Any] | None:
    """The order's payment intent (``intent_json``'s shape) as ``reader`` may see it."""
    if reader is Reader.STAFF:
        return intent
    if reader is Reader.SELLER:
        return {key: intent[key] for key in _SELLER_INTENT}
    if reader is Reader.BUYER:
        review = intent["review"]
        party_review = None if review is None else {key: review[key] for key in _PARTY_REVIEW}
        return {**intent, "review": party_review}
    return None  # the runner-up: nothing of the buyer's payment


def order_json(order: Order) -> dict[str, Any]:
    """The whole order, as staff and the ``order.*`` webhooks see it."""
    fees = order.fees
    return {
        "id": order.id,
        "object": "order",
        "lot_id": order.lot_id,
        "seller_id": order.seller_id,
        "buyer_id": order.buyer_id,
        "status": order.status.value,
        "currency": order.currency,
        "amounts": {
            "hammer_price": fees.hammer,
            "buyer_premium": fees.premium,
            "buyer_premium_bps": order.buyer_premium_bps,
            "seller_commission": fees.commission,
            "seller_commission_bps": order.seller_commission_bps,
            "total": fees.total,
            "seller_net": fees.seller_net,
        },
        "pay_by": format_rfc3339(order.pay_by_us),
        "deposit": {
            "payment_intent": order.deposit_intent_id,
            "in_escrow": order.deposit_in_escrow,
        },
        "payment_intent_id": order.payment_intent_id,
        "paid_at": _ts(order.paid_us),
        "shipping": {
            "carrier": order.carrier,
            "tracking_number": order.tracking_number,
            "shipped_at": _ts(order.shipped_us),
        },
        "delivered_at": _ts(order.delivered_us),
        "inspection_ends_at": _ts(order.inspection_ends_us),
        "dispute_reason": order.dispute_reason,
        "chargebacks": {
            "amount": order.chargeback_amount,
            "covered": order.chargeback_covered,
            "by_payment_intent": dict(sorted(order.chargebacks.items())),
        },
        "refunded_amount": order.refunded_amount,
        "refunds": [
            {
                "payment_intent": refund_intent(key),
                "kind": refund_kind(key).value,
                "amount": amount,
                "refund": order.refund_ids.get(key),
            }
            for key, amount in sorted(order.refund_plan.items())
        ],
        "released": {
            "to_seller": order.released_to_seller,
            "to_revenue": order.released_to_revenue,
        },
        "payout": {
            "status": order.payout_status.value,
            "id": order.payout_id,
            "amount": order.payout_amount,
            "paid_out": order.paid_out,
        },
        "second_chance": {
            "status": order.offer_status.value,
            "amount": order.runner_up_amount,
            "expires_at": _ts(order.offer_expires_us),
            "order": order.offer_order_id,
        },
        "parent_order": order.parent_order_id,
        "created": format_rfc3339(order.created_us),
        "updated": format_rfc3339(order.updated_us),
    }

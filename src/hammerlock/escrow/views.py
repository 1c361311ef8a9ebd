"""The public JSON shape of an order: one place, used by ``GET /v1/orders/{id}``, the action
routes and the outbound ``order.*`` webhooks (whose ``data`` carries no timeline or balance)."""

from __future__ import annotations

from typing import Any

from hammerlock.clock import format_rfc3339
from hammerlock.escrow.model import Order, refund_intent, refund_kind

__all__ = ["order_json"]


def _ts(us: int | None) -> str | None:
    return None if us is None else format_rfc3339(us)


def order_json(order: Order) -> dict[str, Any]:
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

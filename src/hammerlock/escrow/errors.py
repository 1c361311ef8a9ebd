"""Escrow errors, each with a stable code (docs/errors.md).

EscrowError
 ├── OrderNotFound           order_not_found           404  (also another party's order)
 ├── InvalidTransition       invalid_state_transition  409
 ├── InvalidTrackingNumber   invalid_tracking_number   422
 ├── RefundTooLarge          refund_exceeds_total      422
 ├── RefundOutOfRange        refund_out_of_range       422  (a re-resolution's refund_amount)
 ├── PaymentMethodRequired   payment_method_required   422  (no card on file and none given)
 ├── InvalidPayoutAction     invalid_payout_action     422  (payout_id with mark_paid only)
 └── OfferNotOpen            second_chance_not_open    409
"""

from __future__ import annotations

from hammerlock.errors import DomainError

__all__ = [
    "EscrowError",
    "InvalidPayoutAction",
    "InvalidTrackingNumber",
    "InvalidTransition",
    "OfferNotOpen",
    "OrderNotFound",
    "PaymentMethodRequired",
    "PayoutLookupFailed",
    "RefundOutOfRange",
    "RefundTooLarge",
]


class EscrowError(DomainError):
    code = "escrow_error"


class OrderNotFound(EscrowError):
    code = "order_not_found"
    title = "No such order"


class InvalidTransition(EscrowError):
    code = "invalid_state_transition"
    title = "Not allowed in the current state"


class InvalidTrackingNumber(EscrowError):
    code = "invalid_tracking_number"
    title = "Tracking number does not match the carrier's format"


class RefundTooLarge(EscrowError):
    code = "refund_exceeds_total"
    title = "Refund beyond what the buyer paid"


class RefundOutOfRange(EscrowError):
    code = "refund_out_of_range"
    title = "Refund outside what a re-resolution may ask"


class PaymentMethodRequired(EscrowError):
    code = "payment_method_required"
    title = "A payment method is needed"


class InvalidPayoutAction(EscrowError):
    code = "invalid_payout_action"
    title = "payout_id goes with mark_paid, and only with it"


class PayoutLookupFailed(EscrowError):
    code = "payout_lookup_failed"
    title = "The gateway could not be asked about the payout"


class OfferNotOpen(EscrowError):
    code = "second_chance_not_open"
    title = "No open second-chance offer"

"""Payment errors, each with a stable code (docs/errors.md).

PaymentError
 ├── IntentNotFound          payment_intent_not_found  404
 ├── RefundNotFound          refund_not_found          404
 ├── InvalidTransition       invalid_state_transition  409
 ├── PaymentMethodRequired   payment_method_required   422
 ├── AmountTooLarge          amount_too_large          422  (capture or refund beyond what is left)
 ├── AlreadyRefunded         charge_already_refunded   409
 ├── UnknownGateway          unknown_gateway           422
 └── PaymentMethodInvalid    payment_method_invalid    422
"""

from __future__ import annotations

from hammerlock.errors import DomainError

__all__ = [
    "AlreadyRefunded",
    "AmountTooLarge",
    "IntentNotFound",
    "InvalidTransition",
    "PaymentError",
    "PaymentMethodInvalid",
    "PaymentMethodRequired",
    "RefundNotFound",
    "UnknownGateway",
]


class PaymentError(DomainError):
    code = "payment_error"


class IntentNotFound(PaymentError):
    code = "payment_intent_not_found"
    title = "No such payment intent"


class RefundNotFound(PaymentError):
    code = "refund_not_found"
    title = "No such refund"


class InvalidTransition(PaymentError):
    code = "invalid_state_transition"
    title = "Not allowed in the current state"


class PaymentMethodRequired(PaymentError):
    code = "payment_method_required"
    title = "A payment method is needed"


class PaymentMethodInvalid(PaymentError):
    code = "payment_method_invalid"
    title = "The payment method is not usable"


class AmountTooLarge(PaymentError):
    code = "amount_too_large"
    title = "Amount beyond what is left"


class AlreadyRefunded(PaymentError):
    code = "charge_already_refunded"
    title = "Nothing left to refund"


class UnknownGateway(PaymentError):
    code = "unknown_gateway"
    title = "No such gateway configured"

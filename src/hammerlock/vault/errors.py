"""The vault's errors, each with a stable code (HTTP statuses: ``hammerlock.api.problems``).

DomainError
 └── VaultError
      ├── CardRejected                      the card data itself is not acceptable (422)
      │    ├── InvalidNumber                invalid_number: not 12-19 digits, or Luhn fails
      │    ├── UnsupportedBrand             unsupported_brand: no brand we accept has that prefix
      │    ├── InvalidExpiry                invalid_expiry: month out of range, or expired
      │    └── InvalidCvc                   invalid_cvc: not 3 digits (4 for amex)
      ├── RateLimited                       rate_limited (429, ``retry_after_s``)
      ├── TokenNotFound                     token_not_found (404)
      ├── GatewayNotFound                   gateway_not_found (404)
      ├── ChargeNotFound                    charge_not_found (404)
      ├── PayoutNotFound                    payout_not_found (404)
      └── InternalAuthFailed                unauthenticated (401): an internal call not signed by
                                            a current key, stale, or replayed
"""

from __future__ import annotations

from hammerlock.errors import DomainError

__all__ = [
    "CardRejected",
    "ChargeNotFound",
    "GatewayNotFound",
    "InternalAuthFailed",
    "InvalidCvc",
    "InvalidExpiry",
    "InvalidNumber",
    "PayoutNotFound",
    "RateLimited",
    "TokenNotFound",
    "UnsupportedBrand",
    "VaultError",
]


class VaultError(DomainError):
    code = "vault_error"


class CardRejected(VaultError):
    code = "card_rejected"
    title = "Card data not accepted"


class InvalidNumber(CardRejected):
    code = "invalid_number"


class UnsupportedBrand(CardRejected):
    code = "unsupported_brand"


class InvalidExpiry(CardRejected):
    code = "invalid_expiry"


class InvalidCvc(CardRejected):
    code = "invalid_cvc"


class RateLimited(VaultError):
    code = "rate_limited"
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail, retry_after_s=retry_after_s)
        self.retry_after_s = retry_after_s


class TokenNotFound(VaultError):
    code = "token_not_found"
    title = "No such token"


class GatewayNotFound(VaultError):
    code = "gateway_not_found"
    title = "No such gateway"


class ChargeNotFound(VaultError):
    code = "charge_not_found"
    title = "No such charge"


class PayoutNotFound(VaultError):
    code = "payout_not_found"
    title = "No such payout"


class InternalAuthFailed(VaultError):
    code = "unauthenticated"
    title = "Authentication required"

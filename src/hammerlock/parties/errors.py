"""Party errors, each with a stable code (docs/errors.md).

PartyError
 ├── PartyNotFound      party_not_found         404  (also: another party's object)
 └── CardInvalid        payment_method_invalid  422  (the vault knows no such token)
"""

from __future__ import annotations

from hammerlock.errors import DomainError

__all__ = ["CardInvalid", "PartyError", "PartyNotFound"]


class PartyError(DomainError):
    code = "party_error"


class PartyNotFound(PartyError):
    code = "party_not_found"
    title = "No such party"


class CardInvalid(PartyError):
    code = "payment_method_invalid"
    title = "The payment method is not usable"

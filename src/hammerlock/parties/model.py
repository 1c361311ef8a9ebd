"""Parties and cards on file, as values. No I/O."""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass
from typing import Final

from hammerlock.security.pan import contains_pan

__all__ = ["Card", "Party", "PartyKind", "new_card_id", "new_party_id"]


class PartyKind(enum.StrEnum):
    BIDDER = "bidder"
    SELLER = "seller"


_PREFIX = {PartyKind.BIDDER: "bdr", PartyKind.SELLER: "slr"}


# No 0/1/i/l/o, and mostly letters: an id never holds the long digit run of a card number, which
# the API's PAN guard would refuse in a path (hex ids do, about 3 in 10,000).
_ID_ALPHABET: Final = "abcdefghjkmnpqrstuvwxyz23456789"


def _random_part() -> str:
    while True:
        candidate = "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))
        if not contains_pan(candidate):
            return candidate


def new_party_id(kind: PartyKind) -> str:
    return f"{_PREFIX[kind]}_{_random_part()}"


def new_card_id() -> str:
    return f"card_{_random_part()}"


@dataclass(frozen=True, slots=True)
class Party:
    id: str
    kind: PartyKind
    name: str
    email: str | None
    created_us: int


@dataclass(frozen=True, slots=True)
class Card:
    """A card on file: the vault's token and what may be shown of it (never the number)."""

    id: str
    bidder_id: str
    payment_method: str
    brand: str | None
    last4: str | None
    created_us: int

"""Parties and cards on file, as values. No I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hammerlock.ids import random_id

__all__ = ["Card", "Party", "PartyKind", "new_card_id", "new_party_id"]


class PartyKind(enum.StrEnum):
    BIDDER = "bidder"
    SELLER = "seller"


_PREFIX = {PartyKind.BIDDER: "bdr", PartyKind.SELLER: "slr"}


def new_party_id(kind: PartyKind) -> str:
    return random_id(_PREFIX[kind])


def new_card_id() -> str:
    return random_id("card")


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

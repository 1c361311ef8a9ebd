"""The public JSON shape of parties and cards."""

from __future__ import annotations

from typing import Any

from hammerlock.clock import format_rfc3339
from hammerlock.parties.model import Card, Party

__all__ = ["card_json", "party_json"]


def party_json(party: Party) -> dict[str, Any]:
    return {
        "id": party.id,
        "object": party.kind.value,
        "name": party.name,
        "email": party.email,
        "created": format_rfc3339(party.created_us),
    }


def card_json(card: Card) -> dict[str, Any]:
    return {
        "id": card.id,
        "object": "card",
        "bidder_id": card.bidder_id,
        "payment_method": card.payment_method,
        "brand": card.brand,
        "last4": card.last4,
        "created": format_rfc3339(card.created_us),
    }

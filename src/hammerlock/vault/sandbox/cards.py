"""What the sandbox's bank decides for a card: Stripe's published test cards, as data.

Pure: no clock (the caller passes today's year and month), no I/O. Any other valid card is
approved. The table is in docs/payments.md ("Sandbox gateway").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from hammerlock.payments.gateways.base import DeclineCode
from hammerlock.security.pan import card_brand, luhn_valid

__all__ = ["TEST_CARDS", "Decision", "Outcome", "decide", "is_valid_number"]


class Outcome(enum.Enum):
    APPROVE = "approve"
    CHALLENGE = "challenge"  # 3-D Secure
    DECLINE = "decline"


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    error_code: str | None = None
    decline_code: str | None = None
    message: str | None = None


APPROVED: Final = Decision(Outcome.APPROVE)
CHALLENGED: Final = Decision(Outcome.CHALLENGE)

TEST_CARDS: Final = MappingProxyType(
    {
        "4242424242424242": APPROVED,
        "4000000000000002": Decision(
            Outcome.DECLINE, DeclineCode.CARD_DECLINED, "generic_decline", "Your card was declined."
        ),
        "4000000000009995": Decision(
            Outcome.DECLINE,
            DeclineCode.INSUFFICIENT_FUNDS,
            "insufficient_funds",
            "Your card has insufficient funds.",
        ),
        "4000000000000069": Decision(
            Outcome.DECLINE, DeclineCode.EXPIRED_CARD, "expired_card", "Your card has expired."
        ),
        "4000000000000127": Decision(
            Outcome.DECLINE,
            DeclineCode.INCORRECT_CVC,
            "incorrect_cvc",
            "Your card's security code is incorrect.",
        ),
        "4000000000000119": Decision(
            Outcome.DECLINE,
            DeclineCode.PROCESSING_ERROR,
            None,
            "An error occurred while processing your card. Try again in a little bit.",
        ),
        "4000002760003184": CHALLENGED,
        "4000000000003220": CHALLENGED,
    }
)

_EXPIRED: Final = Decision(
    Outcome.DECLINE, DeclineCode.EXPIRED_CARD, "expired_card", "Your card has expired."
)


def is_valid_number(number: str) -> bool:
    """ASCII digits, Luhn-valid, with a known brand's prefix and length."""
    return luhn_valid(number) and card_brand(number) is not None


def decide(number: str, exp_year: int, exp_month: int, *, today: tuple[int, int]) -> Decision:
    """The bank's answer for a valid card; ``today`` is (year, month) in UTC. A card is good
    through the last day of its expiry month."""
    if (exp_year, exp_month) < today:
        return _EXPIRED
    return TEST_CARDS.get(number, APPROVED)

"""Auction errors, each with a stable code (docs/errors.md).

AuctionError
 ├── LotNotFound        lot_not_found             404  (also: another seller's lot, a draft)
 ├── BidNotFound        bid_not_found             404
 ├── LotNotOpen         lot_not_open              409
 ├── InvalidTransition  invalid_state_transition  409
 ├── BidsBusy           bids_busy                 503  (the bid queue is full or timed out)
 ├── BidTooLow          bid_too_low               422  (with ``ask``)
 ├── BidTooHigh         bid_too_high              422  (with ``max_amount_allowed``)
 ├── OwnLot             own_lot_bid               403  (a seller bidding on its own lot)
 ├── CardRequired       card_required             409
 ├── DepositRequired    deposit_required          409
 ├── DepositNotNeeded   deposit_not_required      409
 ├── BuyNowUnavailable  buy_now_unavailable       409
 └── InvalidLot         invalid_lot               422
"""

from __future__ import annotations

from hammerlock.errors import DomainError

__all__ = [
    "AuctionError",
    "BidNotFound",
    "BidTooHigh",
    "BidTooLow",
    "BidsBusy",
    "BuyNowUnavailable",
    "CardRequired",
    "DepositNotNeeded",
    "DepositRequired",
    "InvalidLot",
    "InvalidTransition",
    "LotNotFound",
    "LotNotOpen",
    "OwnLot",
]


class AuctionError(DomainError):
    code = "auction_error"


class LotNotFound(AuctionError):
    code = "lot_not_found"
    title = "No such lot"


class BidNotFound(AuctionError):
    code = "bid_not_found"
    title = "No such bid"


class LotNotOpen(AuctionError):
    code = "lot_not_open"
    title = "The lot is not open for bidding"


class InvalidTransition(AuctionError):
    code = "invalid_state_transition"
    title = "Not allowed in the current state"


class BidTooLow(AuctionError):
    code = "bid_too_low"
    title = "The bid is below the current ask"


class BidTooHigh(AuctionError):
    code = "bid_too_high"
    title = "The bid is above the largest amount this lot can sell for"


class OwnLot(AuctionError):
    code = "own_lot_bid"
    title = "A seller cannot bid on its own lot"


class CardRequired(AuctionError):
    code = "card_required"
    title = "A card on file is needed"


class DepositRequired(AuctionError):
    code = "deposit_required"
    title = "An authorized deposit is needed"


class DepositNotNeeded(AuctionError):
    code = "deposit_not_required"
    title = "This lot asks for no deposit"


class BuyNowUnavailable(AuctionError):
    code = "buy_now_unavailable"
    title = "Buy-now is not offered now"


class InvalidLot(AuctionError):
    code = "invalid_lot"
    title = "The lot's terms are not valid"


class BidsBusy(AuctionError):
    code = "bids_busy"
    title = "Too many bids in flight; retry with the same Idempotency-Key"

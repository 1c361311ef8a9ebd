"""The public JSON shape of lots, bids and deposits: one place, used by the routes and by the
outbound webhooks. What a bidder may not see (the reserve, other bidders' maximums) is left out
here, by flag, never by the caller deleting keys."""

from __future__ import annotations

from typing import Any

from hammerlock.auctions.model import FINISHED, Bid, Deposit, Lot, LotStatus, ask_for
from hammerlock.clock import format_rfc3339

__all__ = ["bid_json", "deposit_json", "lot_json"]


def _ts(us: int | None) -> str | None:
    return None if us is None else format_rfc3339(us)


def lot_json(lot: Lot, *, show_reserve: bool) -> dict[str, Any]:
    s = lot.standing
    open_now = lot.status in {LotStatus.OPEN, LotStatus.SCHEDULED}
    body: dict[str, Any] = {
        "id": lot.id,
        "object": "lot",
        "status": lot.status.value,
        "seller_id": lot.seller_id,
        "title": lot.title,
        "description": lot.description,
        "currency": lot.currency,
        "estimate": lot.estimate,
        "starting_price": lot.starting_price,
        "current_price": s.price,
        "ask": ask_for(lot.terms, s) if open_now else None,
        "leading_bidder_id": s.leader_id,
        "bid_count": s.bid_count,
        "last_seq": s.last_seq,
        "reserve_met": lot.reserve_met,
        "buy_now_price": lot.buy_now_price if lot.buy_now_offered and open_now else None,
        "increments": [{"from": b.start, "step": b.step} for b in lot.increments],
        "starts_at": format_rfc3339(lot.starts_at_us),
        "ends_at": format_rfc3339(lot.ends_at_us),
        "latest_end_at": format_rfc3339(lot.latest_end_us),
        "soft_close_s": lot.soft_close_s,
        "soft_close_cap_s": lot.soft_close_cap_s,
        "extensions": lot.extensions,
        "buyer_premium_bps": lot.buyer_premium_bps,
        "seller_commission_bps": lot.seller_commission_bps,
        "deposit_bps": lot.deposit_bps,
        "deposit_amount": lot.deposit_amount,
        "deposit_required": lot.deposit_amount > 0,
        "payment_window_s": lot.payment_window_s,
        "inspection_period_s": lot.inspection_period_s,
        "hammer_price": lot.hammer_price,
        "winner_id": lot.winner_id,
        "close_reason": lot.close_reason,
        "closed_at": _ts(lot.closed_us) if lot.status in FINISHED else None,
        "created": format_rfc3339(lot.created_us),
        "updated": format_rfc3339(lot.updated_us),
    }
    if show_reserve:
        body["reserve_price"] = lot.reserve_price
    return body


def bid_json(bid: Bid, *, show_max: bool) -> dict[str, Any]:
    return {
        "id": bid.id,
        "object": "bid",
        "lot_id": bid.lot_id,
        "seq": bid.seq,
        "bidder_id": bid.bidder_id if show_max else None,
        "kind": bid.kind.value,
        "status": bid.status,
        "max_amount": bid.max_amount if show_max else None,
        "price_after": bid.price_after,
        "leading_after": bid.leader_after == bid.bidder_id,
        "placed_at": format_rfc3339(bid.placed_us),
        "retracted_at": _ts(bid.retracted_us),
        "retraction_reason": bid.retraction_reason if show_max else None,
    }


def deposit_json(deposit: Deposit, intent: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": deposit.id,
        "object": "deposit",
        "lot_id": deposit.lot_id,
        "bidder_id": deposit.bidder_id,
        "amount": deposit.amount,
        "currency": deposit.currency,
        "account": deposit.account,
        "status": deposit.status.value,
        "payment_intent": intent,
        "created": format_rfc3339(deposit.created_us),
        "updated": format_rfc3339(deposit.updated_us),
    }

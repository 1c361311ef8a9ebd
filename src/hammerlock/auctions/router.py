"""Auction routes: lots, bids, buy-now, deposits, retraction, close.

A bidder's key bids as itself (``bidder_id`` implied; another bidder's id answers 404); the
service and admins bid on a bidder's behalf and name it. A seller's key creates and opens only
its own lots (``seller_id`` implied). Bidders never see a lot's reserve nor another bidder's
maximum.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Request
from pydantic import Field, StringConstraints
from starlette.responses import Response

from hammerlock.api.deps import get_container, get_ctx
from hammerlock.api.idempotency import replay, stored_headers
from hammerlock.api.policy import policy
from hammerlock.api.problems import ApiError
from hammerlock.api.route import HammerlockRoute, domain_problem
from hammerlock.api.schemas import MAX_SAFE_INT, VISIBLE_TEXT, ApiModel, DateTime
from hammerlock.auctions.bidding import Answer, BidRequest
from hammerlock.auctions.model import Band, Bid, Lot
from hammerlock.auctions.service import Auctions, NewLot
from hammerlock.auctions.views import bid_json, deposit_json, lot_json
from hammerlock.audit.model import Context
from hammerlock.clock import to_us
from hammerlock.db.receipts import ReceiptConflict, Stored
from hammerlock.errors import DomainError
from hammerlock.parties import service as parties
from hammerlock.security.permissions import Permission

__all__ = ["router"]

router = APIRouter(route_class=HammerlockRoute, tags=["auctions"])

_PRINTABLE = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
Amount = Annotated[int, Field(ge=1, le=MAX_SAFE_INT, strict=True)]
Amount0 = Annotated[int, Field(ge=0, le=MAX_SAFE_INT, strict=True)]
Bps = Annotated[int, Field(ge=0, le=10_000, strict=True)]
Seconds = Annotated[int, Field(ge=0, le=366 * 86_400, strict=True)]
SellerId = Annotated[str, StringConstraints(pattern=r"^slr_[a-z0-9]{4,40}$")]
BidderId = Annotated[str, StringConstraints(pattern=r"^bdr_[a-z0-9]{4,40}$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Title = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, strip_whitespace=True, pattern=VISIBLE_TEXT),
]
Description = Annotated[str, StringConstraints(max_length=5_000, pattern=_PRINTABLE)]
Reason = Annotated[
    str, StringConstraints(min_length=3, max_length=500, pattern=r"^[^\x00-\x1f\x7f]+$")
]
LotId = Annotated[str, Path(pattern=r"^lot_[a-z0-9]{8,40}$")]
BidId = Annotated[str, Path(pattern=r"^bid_[a-z0-9]{8,40}$")]


class BandIn(ApiModel):
    from_: Amount0 = Field(alias="from")
    step: Amount


class LotIn(ApiModel):
    seller_id: SellerId | None = None
    title: Title
    description: Description = ""
    currency: Currency
    estimate: Amount0
    starting_price: Amount
    reserve_price: Amount0 = 0
    buy_now_price: Amount | None = None
    increments: list[BandIn] | None = Field(default=None, max_length=32)
    starts_at: DateTime | None = None
    ends_at: DateTime
    soft_close_s: Annotated[int, Field(ge=0, le=86_400, strict=True)] = 120
    soft_close_cap_s: Annotated[int, Field(ge=0, le=7 * 86_400, strict=True)] = 3_600
    buyer_premium_bps: Bps = 0
    seller_commission_bps: Bps = 0
    deposit_bps: Bps | None = None
    payment_window_s: Seconds = 48 * 3_600
    inspection_period_s: Seconds = 3 * 86_400


class BidIn(ApiModel):
    max_amount: Amount
    bidder_id: BidderId | None = None


class OnBehalfIn(ApiModel):
    bidder_id: BidderId | None = None


def _on_behalf_of(body: OnBehalfIn | None) -> str | None:
    """The bidder a buy-now or deposit names; no body at all counts as ``{}``."""
    return None if body is None else body.bidder_id


class RetractIn(ApiModel):
    reason: Reason


def _json(body: Any, status: int = 200) -> Response:
    return Response(content=orjson.dumps(body), status_code=status, media_type="application/json")


def _auctions(request: Request) -> Auctions:
    return get_container(request).auctions


def _shows_reserve(ctx: Context) -> bool:
    return ctx.actor.role != "bidder"


def _lot(ctx: Context, lot: Lot) -> dict[str, Any]:
    return lot_json(lot, show_reserve=_shows_reserve(ctx))


def _us(value: datetime) -> int:
    return to_us(value)


def _party_id(ctx: Context, given: str | None, role: str, field: str) -> str:
    """The party a call acts for: a party key's own principal (naming another is a 404);
    staff and the service must name it."""
    if ctx.actor.role == role and ctx.actor.principal_id is not None:
        if given is not None:
            parties.check_owner(ctx, given, f"{role} {given}")
        return ctx.actor.principal_id
    if given is None:
        raise ApiError("validation_error", f"`{field}` is required for this key's role")
    return given


@router.post(
    "/v1/lots",
    openapi_extra=policy(Permission.LOTS_WRITE),
    summary="Create a lot (draft); a seller's key creates its own",
)
async def create_lot(request: Request, body: LotIn) -> Response:
    ctx = get_ctx(request)
    container = get_container(request)
    seller_id = _party_id(ctx, body.seller_id, "seller", "seller_id")
    now_us = container.clock.now_us()
    lot = await container.auctions.create_lot(
        ctx,
        NewLot(
            seller_id=seller_id,
            title=body.title,
            description=body.description,
            currency=body.currency,
            estimate=body.estimate,
            starting_price=body.starting_price,
            reserve_price=body.reserve_price,
            buy_now_price=body.buy_now_price,
            increments=None
            if body.increments is None
            else tuple(Band(b.from_, b.step) for b in body.increments),
            starts_at_us=now_us if body.starts_at is None else _us(body.starts_at),
            ends_at_us=_us(body.ends_at),
            soft_close_s=body.soft_close_s,
            soft_close_cap_s=body.soft_close_cap_s,
            buyer_premium_bps=body.buyer_premium_bps,
            seller_commission_bps=body.seller_commission_bps,
            deposit_bps=body.deposit_bps,
            payment_window_s=body.payment_window_s,
            inspection_period_s=body.inspection_period_s,
        ),
    )
    return _json(_lot(ctx, lot), 201)


@router.post(
    "/v1/lots/{lot_id}/open",
    openapi_extra=policy(Permission.LOTS_WRITE),
    summary="Open a draft lot for bidding (scheduled until starts_at)",
)
async def open_lot(request: Request, lot_id: LotId) -> Response:
    ctx = get_ctx(request)
    return _json(_lot(ctx, await _auctions(request).open_lot(ctx, lot_id)))


@router.get(
    "/v1/lots/{lot_id}",
    openapi_extra=policy(Permission.LOTS_READ),
    summary="Retrieve a lot: status, current price, leader, ask, end (soft-close aware)",
)
async def get_lot(request: Request, lot_id: LotId) -> Response:
    ctx = get_ctx(request)
    lot = _lot(ctx, await _auctions(request).get_lot(ctx, lot_id))
    # Additive: the orders this lot led to, those the caller may see (a bidder: their own).
    lot["orders"] = await get_container(request).escrow.orders_of_lot(ctx, lot_id)
    return _json(lot)


@router.post(
    "/v1/lots/{lot_id}/bids",
    openapi_extra=policy(Permission.BIDS_CREATE, money_moving=True, receipt_in_transaction=True),
    summary="Place a proxy bid (your maximum); answers with its seq and the lot's new state",
)
async def place_bid(request: Request, lot_id: LotId, body: BidIn) -> Response:
    """Group-committed with concurrent bids; the answer (accepted or refused) is stored for
    Idempotency-Key replays in the bid's own transaction (ADR 0013)."""
    ctx = get_ctx(request)
    bidder_id = _party_id(ctx, body.bidder_id, "bidder", "bidder_id")

    def render(outcome: tuple[Bid, Lot] | DomainError) -> Answer:
        if isinstance(outcome, DomainError):
            response = domain_problem(outcome)
        else:
            bid, lot = outcome
            response = _json({**bid_json(bid, show_max=True), "lot": _lot(ctx, lot)}, 201)
        return Answer(response.status_code, stored_headers(response), bytes(response.body))

    outcome = await _auctions(request).submit_bid(
        BidRequest(
            ctx=ctx,
            lot_id=lot_id,
            bidder_id=bidder_id,
            max_amount=body.max_amount,
            idempotency_key=request.headers.get("idempotency-key"),
            receipt=getattr(request.state, "receipt", None),
            render=render,
        )
    )
    if isinstance(outcome, ReceiptConflict):
        raise ApiError(outcome.code, outcome.detail)
    if not isinstance(outcome, Answer):  # pragma: no cover - a rendered request gets one
        raise TypeError(f"unexpected bid outcome {type(outcome).__name__}")
    if outcome.replayed:
        return replay(Stored(outcome.status_code, outcome.headers, outcome.body))
    return Response(outcome.body, outcome.status_code, headers=outcome.headers)


@router.get(
    "/v1/lots/{lot_id}/bids",
    openapi_extra=policy(Permission.LOTS_READ),
    summary="A lot's bids in sequence order (others' maximums hidden from bidders)",
)
async def list_bids(
    request: Request,
    lot_id: LotId,
    limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,15}$")] = None,
) -> Response:
    ctx = get_ctx(request)
    after = int(cursor) if cursor else 0
    _, bids = await _auctions(request).list_bids(ctx, lot_id, after_seq=after, limit=limit)
    staff = ctx.actor.role not in parties.PARTY_ROLES

    def own(bidder_id: str) -> bool:
        return staff or bidder_id == ctx.actor.principal_id

    data = [bid_json(b, show_max=own(b.bidder_id)) for b in bids]
    next_cursor = str(bids[-1].seq) if len(bids) == limit else None
    return _json({"data": data, "next_cursor": next_cursor})


@router.post(
    "/v1/lots/{lot_id}/bids/{bid_id}/retract",
    openapi_extra=policy(Permission.BIDS_RETRACT, money_moving=True),
    summary="Retract a bid (admin, with a reason); the price is recomputed",
)
async def retract_bid(request: Request, lot_id: LotId, bid_id: BidId, body: RetractIn) -> Response:
    ctx = get_ctx(request)
    lot = await _auctions(request).retract_bid(ctx, lot_id, bid_id, reason=body.reason)
    return _json(_lot(ctx, lot))


@router.post(
    "/v1/lots/{lot_id}/buy_now",
    openapi_extra=policy(Permission.BIDS_CREATE, money_moving=True),
    summary="Buy now: closes the lot at the buy-now price (offered until a bid meets the reserve)",
)
async def buy_now(request: Request, lot_id: LotId, body: OnBehalfIn | None = None) -> Response:
    ctx = get_ctx(request)
    bidder_id = _party_id(ctx, _on_behalf_of(body), "bidder", "bidder_id")
    bid, lot = await _auctions(request).buy_now(
        ctx, lot_id, bidder_id=bidder_id, idempotency_key=request.headers.get("idempotency-key")
    )
    return _json({**bid_json(bid, show_max=True), "lot": _lot(ctx, lot)})


@router.post(
    "/v1/lots/{lot_id}/close",
    openapi_extra=policy(Permission.LOTS_CLOSE, money_moving=True),
    summary="Close a lot now (idempotent); a winner at or above the reserve gets an order",
)
async def close_lot(request: Request, lot_id: LotId) -> Response:
    ctx = get_ctx(request)
    return _json(_lot(ctx, await _auctions(request).close(ctx, lot_id)))


@router.post(
    "/v1/lots/{lot_id}/deposits",
    openapi_extra=policy(Permission.BIDS_CREATE, money_moving=True),
    summary="Authorize a bidder's deposit for a lot (a manual-capture payment intent)",
)
async def create_deposit(
    request: Request, lot_id: LotId, body: OnBehalfIn | None = None
) -> Response:
    ctx = get_ctx(request)
    container = get_container(request)
    bidder_id = _party_id(ctx, _on_behalf_of(body), "bidder", "bidder_id")
    deposit, intent = await container.auctions.create_deposit(
        ctx, lot_id, bidder_id=bidder_id, idempotency_key=request.headers.get("idempotency-key")
    )
    intent_body = None if intent is None else await container.payments.view(intent)
    return _json(deposit_json(deposit, intent_body))

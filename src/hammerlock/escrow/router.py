"""Order HTTP routes (docs/escrow.md).

``GET /v1/orders/{id}`` answers the order with its escrow balance (from the ledger) and its
timeline. Every action is a POST with an ``Idempotency-Key``: ``pay`` (the buyer), ``ship`` (the
seller), ``confirm_delivery``, ``accept``, ``dispute`` (the buyer), ``resolve`` (an operator;
again after risk review rejected its refund), ``refund`` (an operator, after release),
``cancel`` (an operator, a paid order not shipped), ``payout`` (an operator: retry a failed
payout, mark a pending one paid or failed), ``second_chance/accept`` (the runner-up of a
defaulted order). A bidder or seller who is not the order's party gets 404 (but the runner-up
of a defaulted order reads the offer made to it); each reader sees what its relation to the
order allows (``escrow.views.Reader``). ``pay`` answers
``202`` with ``Hammerlock-Outcome: pending`` while its payment intent is ``processing`` (not
stored for replay: a retry resumes).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Path, Request
from pydantic import Field, StringConstraints
from starlette.responses import Response

from hammerlock.api.deps import get_container, get_ctx
from hammerlock.api.policy import policy
from hammerlock.api.route import HammerlockRoute
from hammerlock.api.schemas import MAX_SAFE_INT, ApiModel, Note, Reason
from hammerlock.escrow.model import CARRIERS, Order, PayoutAction
from hammerlock.escrow.service import OrderView
from hammerlock.escrow.views import Reader, intent_for, order_for
from hammerlock.payments.model import IntentStatus, PaymentIntent
from hammerlock.security.permissions import Permission

__all__ = ["router"]

router = APIRouter(route_class=HammerlockRoute, tags=["orders"])

OUTCOME_HEADER = "Hammerlock-Outcome"
OrderId = Annotated[str, Path(pattern=r"^ord_[a-f0-9]{14,40}$")]
PaymentMethod = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{3,128}$")]
Carrier = Literal["ups", "fedex", "usps", "dhl"]

if set(CARRIERS) != {"ups", "fedex", "usps", "dhl"}:  # pragma: no cover - kept in step by hand
    raise RuntimeError("escrow.router's Carrier literal lags behind escrow.model.CARRIERS")


class PayIn(ApiModel):
    payment_method: PaymentMethod | None = None


class ShipIn(ApiModel):
    carrier: Carrier
    tracking_number: Annotated[str, StringConstraints(min_length=1, max_length=40)]


class EmptyIn(ApiModel):
    """``{}``: a body may be left out (an optional body, here and in ``pay``, counts as ``{}``);
    one that is sent is still checked (unknown fields refused)."""


class DisputeIn(ApiModel):
    reason: Reason


class ResolveIn(ApiModel):
    refund_amount: Annotated[int, Field(ge=0, le=MAX_SAFE_INT, strict=True)]
    note: Note | None = None


class RefundIn(ApiModel):
    amount: Annotated[int, Field(ge=1, le=MAX_SAFE_INT, strict=True)]
    reason: Reason


class CancelIn(ApiModel):
    reason: Reason


class PayoutIn(ApiModel):
    action: Literal["retry", "mark_paid", "mark_failed"]
    reason: Reason
    # the gateway's id of the payout (mark_paid): what the operator found at the gateway
    payout_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")] | None = None


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        content=orjson.dumps(body),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


async def _view(request: Request, view: OrderView) -> dict[str, Any]:
    """The order as its reader may see it (docs/escrow.md "Who sees what")."""
    body = order_for(view.reader, view.order)
    if view.reader is Reader.RUNNER_UP:
        return body
    body["escrow_balance"] = view.escrow_balance
    body["timeline"] = view.timeline
    body["payment_intent"] = None
    if view.payment_intent is not None:
        intent = await get_container(request).payments.view(view.payment_intent)
        body["payment_intent"] = intent_for(view.reader, intent)
    return body


async def _order_response(
    request: Request, order: Order, intent: PaymentIntent | None = None
) -> Response:
    """The order as the action just left it (not read again), with its escrow balance and
    timeline (read) and its payment intent (``intent``, when the action returned it)."""
    view = await get_container(request).escrow.get(
        get_ctx(request), order.id, order=order, intent=intent
    )
    return _json(await _view(request, view))


_READ = policy(Permission.ORDERS_READ)
_BUYER = policy(Permission.ORDERS_BUY, money_moving=True)


@router.get("/v1/orders/{order_id}", openapi_extra=_READ, summary="Retrieve an order")
async def get_order(request: Request, order_id: OrderId) -> Response:
    view = await get_container(request).escrow.get(get_ctx(request), order_id)
    return _json(await _view(request, view))


@router.post(
    "/v1/orders/{order_id}/pay",
    openapi_extra=_BUYER,
    summary="Pay: capture the deposit into escrow, charge the rest (card on file by default)",
)
async def pay(request: Request, order_id: OrderId, body: PayIn | None = None) -> Response:
    method = None if body is None else body.payment_method  # no body: `{}`
    escrow = get_container(request).escrow
    order, intent = await escrow.pay(get_ctx(request), order_id, payment_method=method)
    response = await _order_response(request, order, intent)
    if _pending(intent):
        response.status_code = 202
        response.headers[OUTCOME_HEADER] = "pending"
        response.headers["Retry-After"] = "1"
    return response


def _pending(intent: PaymentIntent | None) -> bool:
    return intent is not None and intent.status is IntentStatus.PROCESSING


@router.post(
    "/v1/orders/{order_id}/ship",
    openapi_extra=policy(Permission.ORDERS_SHIP, money_moving=True),
    summary="The seller marks the order shipped (carrier and tracking number)",
)
async def ship(request: Request, order_id: OrderId, body: ShipIn) -> Response:
    order = await get_container(request).escrow.ship(
        get_ctx(request), order_id, carrier=body.carrier, tracking=body.tracking_number
    )
    return await _order_response(request, order)


@router.post(
    "/v1/orders/{order_id}/confirm_delivery",
    openapi_extra=_BUYER,
    summary="The buyer confirms delivery: the inspection period starts",
)
async def confirm_delivery(
    request: Request, order_id: OrderId, body: EmptyIn | None = None
) -> Response:
    del body
    order = await get_container(request).escrow.confirm_delivery(get_ctx(request), order_id)
    return await _order_response(request, order)


@router.post(
    "/v1/orders/{order_id}/accept",
    openapi_extra=_BUYER,
    summary="The buyer accepts the item: escrow is released to the seller and the house",
)
async def accept(request: Request, order_id: OrderId, body: EmptyIn | None = None) -> Response:
    del body
    order = await get_container(request).escrow.accept(get_ctx(request), order_id)
    return await _order_response(request, order)


@router.post(
    "/v1/orders/{order_id}/dispute",
    openapi_extra=_BUYER,
    summary="The buyer disputes during the inspection period: release is frozen",
)
async def dispute(request: Request, order_id: OrderId, body: DisputeIn) -> Response:
    order = await get_container(request).escrow.dispute(
        get_ctx(request), order_id, reason=body.reason
    )
    return await _order_response(request, order)


@router.post(
    "/v1/orders/{order_id}/resolve",
    openapi_extra=policy(Permission.ORDERS_RESOLVE, money_moving=True),
    summary="An operator resolves a dispute (or again, after risk review rejected its refund): "
    "refund_amount back to the buyer, the rest released",
)
async def resolve(request: Request, order_id: OrderId, body: ResolveIn) -> Response:
    order = await get_container(request).escrow.resolve(
        get_ctx(request), order_id, refund_amount=body.refund_amount, note=body.note
    )
    return await _order_response(request, order)


@router.post(
    "/v1/orders/{order_id}/refund",
    openapi_extra=policy(Permission.ORDERS_RESOLVE, money_moving=True),
    summary="An operator refunds (part of) a released order from platform:refunds",
)
async def refund(request: Request, order_id: OrderId, body: RefundIn) -> Response:
    order = await get_container(request).escrow.refund_after_release(
        get_ctx(request),
        order_id,
        amount=body.amount,
        reason=body.reason,
        request_key=request.headers.get("idempotency-key"),
    )
    return await _order_response(request, order)


@router.post(
    "/v1/orders/{order_id}/cancel",
    openapi_extra=policy(Permission.ORDERS_RESOLVE, money_moving=True),
    summary="An operator cancels a paid order never shipped: the buyer is refunded in full",
)
async def cancel(request: Request, order_id: OrderId, body: CancelIn) -> Response:
    order = await get_container(request).escrow.cancel(
        get_ctx(request), order_id, reason=body.reason
    )
    return await _order_response(request, order)


@router.post(
    "/v1/orders/{order_id}/payout",
    openapi_extra=policy(Permission.ORDERS_RESOLVE, money_moving=True),
    summary="An operator settles a payout the sweeper cannot: retry a failed one, or mark a "
    "pending (ambiguous) one paid or failed as the gateway shows it",
)
async def settle_payout(request: Request, order_id: OrderId, body: PayoutIn) -> Response:
    order = await get_container(request).escrow.settle_payout(
        get_ctx(request),
        order_id,
        action=PayoutAction(body.action),
        reason=body.reason,
        payout_id=body.payout_id,
    )
    return await _order_response(request, order)


@router.post(
    "/v1/orders/{order_id}/second_chance/accept",
    openapi_extra=_BUYER,
    summary="The runner-up accepts a defaulted order's second-chance offer: a new order",
)
async def accept_second_chance(
    request: Request, order_id: OrderId, body: EmptyIn | None = None
) -> Response:
    del body
    new = await get_container(request).escrow.accept_offer(get_ctx(request), order_id)
    response = await _order_response(request, new)
    response.status_code = 201
    return response

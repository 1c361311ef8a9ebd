"""Party routes: register bidders and sellers, add a bidder's card on file, set a seller's payout
destination."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request
from pydantic import StringConstraints
from starlette.responses import Response

from hammerlock.api.deps import get_container, get_ctx
from hammerlock.api.policy import policy
from hammerlock.api.route import HammerlockRoute
from hammerlock.api.schemas import ApiModel, Name
from hammerlock.parties import service
from hammerlock.parties.errors import CardInvalid
from hammerlock.parties.model import PartyKind
from hammerlock.parties.views import card_json
from hammerlock.security.permissions import Permission
from hammerlock.vault.errors import TokenNotFound

__all__ = ["router"]

router = APIRouter(route_class=HammerlockRoute, tags=["parties"])

Email = Annotated[
    str, StringConstraints(max_length=320, pattern=r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$")
]
PaymentMethod = Annotated[str, StringConstraints(pattern=r"^tok_[A-Za-z0-9_-]{1,124}$")]
BidderId = Annotated[str, Path(pattern=r"^bdr_[a-z0-9]{4,40}$")]
SellerId = Annotated[str, Path(pattern=r"^slr_[a-z0-9]{4,40}$")]
# An account id at the gateway (Stripe acct_…, a Braintree merchant account id, the sandbox's
# any): letters, digits and ``_ . : -``; the card-number guard has already run on the body.
GatewayAccount = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
]


class PartyIn(ApiModel):
    name: Name
    email: Email | None = None


class CardIn(ApiModel):
    payment_method: PaymentMethod


class PayoutDestinationIn(ApiModel):
    gateway_account: GatewayAccount


def _json(body: Any, status: int = 200) -> Response:
    return Response(content=orjson.dumps(body), status_code=status, media_type="application/json")


async def _register(request: Request, body: PartyIn, kind: PartyKind) -> Response:
    container = get_container(request)
    async with container.db.transaction() as uow:
        party, created = await service.register(
            uow,
            get_ctx(request),
            kind=kind,
            name=body.name,
            email=body.email,
            pepper=container.pepper,
        )
    return _json(
        {
            "id": party.id,
            "object": kind.value,
            "name": party.name,
            "email": party.email,
            "api_key": created.plaintext,
            "key_id": created.key.id,
        },
        201,
    )


@router.post(
    "/v1/bidders",
    openapi_extra=policy(Permission.PARTIES_CREATE),
    summary="Register a bidder (answers with its API key, shown once)",
)
async def create_bidder(request: Request, body: PartyIn) -> Response:
    return await _register(request, body, PartyKind.BIDDER)


@router.post(
    "/v1/sellers",
    openapi_extra=policy(Permission.PARTIES_CREATE),
    summary="Register a seller (answers with its API key, shown once)",
)
async def create_seller(request: Request, body: PartyIn) -> Response:
    return await _register(request, body, PartyKind.SELLER)


@router.put(
    "/v1/sellers/{seller_id}/payout_destination",
    openapi_extra=policy(Permission.PAYOUT_DESTINATIONS_WRITE),
    summary="Set where the gateway pays a seller out (its account id there, never a card)",
)
async def put_payout_destination(
    request: Request, seller_id: SellerId, body: PayoutDestinationIn
) -> Response:
    container = get_container(request)
    ctx = get_ctx(request)
    async with container.db.transaction() as uow:
        await service.set_payout_destination(
            uow, ctx, seller_id, gateway_account=body.gateway_account
        )
    return _json(
        {
            "object": "payout_destination",
            "seller_id": seller_id,
            "gateway_account": body.gateway_account,
        }
    )


@router.post(
    "/v1/bidders/{bidder_id}/cards",
    openapi_extra=policy(Permission.CARDS_WRITE),
    summary="Add a card on file (a vault token) for a bidder",
)
async def add_card(request: Request, bidder_id: BidderId, body: CardIn) -> Response:
    container = get_container(request)
    ctx = get_ctx(request)
    service.check_owner(ctx, bidder_id, f"bidder {bidder_id}")
    brand = last4 = None
    if container.vault is not None:  # outside any transaction: the vault is another process
        try:
            info = await container.vault.tokens(body.payment_method)
        except TokenNotFound:
            raise CardInvalid(
                f"the card vault knows no token {body.payment_method}", param="payment_method"
            ) from None
        brand, last4 = info.brand, info.last4
    async with container.db.transaction() as uow:
        card = await service.add_card(
            uow, ctx, bidder_id, payment_method=body.payment_method, brand=brand, last4=last4
        )
    return _json(card_json(card), 201)

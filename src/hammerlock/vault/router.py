"""The vault's HTTP routes: public tokenization, and the signed internal API the API calls.

Public (no key; CORS for the configured origins): ``POST /v1/tokens``, ``GET /healthz`` (and the
sandbox's 3-D Secure challenge pages, mounted by the app factory). Everything under
``/internal/`` passes :class:`hammerlock.vault.app.InternalAuthMiddleware` first.

Internal contract (JSON; errors are RFC 9457 problems):

* ``GET  /internal/v1/tokens/{id}``                        token metadata (never the number)
* ``POST /internal/v1/gateways/{name}/authorize``          detokenize here, authorize there
* ``POST /internal/v1/gateways/{name}/charges/{key}/capture|void|refund|release_from_escrow``
* ``GET  /internal/v1/gateways/{name}/charges/{key}``      404 ``charge_not_found`` if unknown
* ``POST /internal/v1/gateways/{name}/payouts``
* ``GET  /internal/v1/gateways/{name}/payouts/{key}``      404 ``payout_not_found`` if none shown
* ``GET  /internal/v1/sandbox/charges``                    the sandbox's records (list envelope)
* ``GET  /internal/v1/audit/events?after=N&limit=M``       the vault's audit outbox, by id
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any, Protocol, runtime_checkable

import orjson
from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from hammerlock.audit.model import Actor, Context, Origin
from hammerlock.payments.gateways.base import (
    AuthorizeRequest,
    Gateway,
    GatewayToken,
    PayoutRequest,
)
from hammerlock.vault import wire
from hammerlock.vault.errors import ChargeNotFound, GatewayNotFound, PayoutNotFound
from hammerlock.vault.model import CardInput

if TYPE_CHECKING:
    from hammerlock.vault.container import VaultContainer

__all__ = ["ChargeListing", "internal_router", "public_router"]

MAX_LIST = 1_000
_MAX_INT = 2**53 - 1
GatewayName = Annotated[str, Path(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
PathKey = Annotated[str, Path(min_length=1, max_length=255)]

public_router = APIRouter(tags=["vault"])
internal_router = APIRouter(prefix="/internal/v1", tags=["vault-internal"])


@runtime_checkable
class ChargeListing(Protocol):
    """What the sandbox gateway offers for ``GET /internal/v1/sandbox/charges``: the list
    envelope ``{"data": [charge…], "next_cursor"}``, newest first, never a card number."""

    async def list_charges(
        self, limit: int = 100, cursor: str | None = None, *, gateway_key_prefix: str | None = None
    ) -> dict[str, Any]: ...


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenBody(_Strict):
    number: str = Field(min_length=1, max_length=40)
    exp_month: int = Field(ge=-_MAX_INT, le=_MAX_INT, strict=True)  # a JSON integer, not "1_2"
    exp_year: int = Field(ge=-_MAX_INT, le=_MAX_INT, strict=True)
    cvc: str | None = Field(default=None, max_length=8)
    name: str | None = Field(default=None, max_length=200)
    address_country: str | None = Field(default=None, pattern=r"^[A-Za-z]{2}$")


class TokenOut(BaseModel):
    id: str
    brand: str
    last4: str
    bin: str
    exp_month: int
    exp_year: int
    fingerprint: str


class AuthorizeBody(_Strict):
    gateway_key: str = Field(min_length=1, max_length=255)
    amount: int = Field(ge=1, le=_MAX_INT)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    token_id: str | None = Field(default=None, max_length=64)
    gateway_token: str | None = Field(default=None, max_length=512)
    capture: StrictBool = False
    return_url: str | None = Field(default=None, max_length=2048)
    force_three_d_secure: StrictBool = False
    description: str | None = Field(default=None, max_length=1000)
    metadata: dict[str, Annotated[str, Field(max_length=500)]] = Field(
        default_factory=dict, max_length=50
    )
    hold_in_escrow: StrictBool = False
    service_fee_amount: int | None = Field(default=None, ge=0, le=_MAX_INT)

    @model_validator(mode="after")
    def _one_source(self) -> AuthorizeBody:
        if (self.token_id is None) == (self.gateway_token is None):
            raise ValueError("give exactly one of token_id and gateway_token")
        return self


class CaptureBody(_Strict):
    amount: int = Field(ge=1, le=_MAX_INT)


class RefundBody(_Strict):
    refund_key: str = Field(min_length=1, max_length=255)
    amount: int = Field(ge=1, le=_MAX_INT)


class PayoutBody(_Strict):
    payout_key: str = Field(min_length=1, max_length=255)
    amount: int = Field(ge=1, le=_MAX_INT)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    destination: str = Field(min_length=1, max_length=255)


def _container(request: Request) -> VaultContainer:
    container: VaultContainer = request.app.state.container
    return container


def _origin(request: Request, node: str) -> Origin:
    return Origin(
        ip=request.client.host if request.client else None,
        user_agent=(request.headers.get("user-agent") or "")[:256] or None,
        node=node,
    )


def _public_context(request: Request, node: str) -> Context:
    """Tokenization has no key: the actor is the client address (``client:<ip>``), so the
    ``card_data_burst`` alert counts per address, as card testing shows up."""
    origin = _origin(request, node)
    return Context(
        actor=Actor(principal_id=f"client:{origin.ip or 'unknown'}", role="public", key_id=None),
        origin=origin,
        request_id=getattr(request.state, "request_id", None),
    )


def _internal_context(request: Request, node: str) -> Context:
    return Context(
        actor=Actor(
            principal_id="hammerlock-api",
            role="service",
            key_id=getattr(request.state, "internal_key_id", None),
        ),
        origin=_origin(request, node),
        request_id=getattr(request.state, "request_id", None),
    )


# -- public -------------------------------------------------------------------------------------


@public_router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@public_router.post("/v1/tokens", response_model=TokenOut)
async def create_token(body: TokenBody, request: Request) -> dict[str, object]:
    """Tokenize a card (no API key: checkout pages post here directly)."""
    container = _container(request)
    card = CardInput(
        number=body.number,
        exp_month=body.exp_month,
        exp_year=body.exp_year,
        cvc=body.cvc,
        name=body.name,
        address_country=body.address_country,
    )
    client = request.client.host if request.client else "unknown"
    info = await container.vault.tokenize(
        card, _public_context(request, container.node_name), client=client
    )
    return info.as_json()


# -- internal -----------------------------------------------------------------------------------


@internal_router.get("/tokens/{token_id}")
async def get_token(request: Request, token_id: PathKey) -> dict[str, object]:
    info = await _container(request).vault.token(token_id)
    return {**info.as_json(), "address_country": info.address_country}


def _gateway(request: Request, name: str) -> Gateway:
    gateway = _container(request).gateways.get(name)
    if gateway is None:
        raise GatewayNotFound(f"no gateway {name!r} in this vault")
    return gateway


@internal_router.post("/gateways/{name}/authorize")
async def authorize(request: Request, body: AuthorizeBody, name: GatewayName) -> dict[str, Any]:
    container = _container(request)
    gateway = _gateway(request, name)
    if body.token_id is not None:
        ctx = _internal_context(request, container.node_name)
        principal = body.metadata.get("on_behalf_of")
        if principal:
            # Card data is accessed for a payment someone made: record whose (PCI DSS 10.2.1.1
            # asks for the individual), through which internal key.
            ctx = replace(ctx, actor=replace(ctx.actor, principal_id=principal[:128]))
        source: Any = await container.vault.detokenize(
            body.token_id,
            ctx,
            purpose={
                "gateway": name,
                "gateway_key": body.gateway_key,
                "amount": body.amount,
                "currency": body.currency,
            },
        )
    else:
        source = GatewayToken(body.gateway_token or "")
    charge = await gateway.authorize(
        AuthorizeRequest(
            gateway_key=body.gateway_key,
            amount=body.amount,
            currency=body.currency,
            source=source,
            capture=body.capture,
            return_url=body.return_url,
            force_three_d_secure=body.force_three_d_secure,
            description=body.description,
            metadata=body.metadata,
            hold_in_escrow=body.hold_in_escrow,
            service_fee_amount=body.service_fee_amount,
        )
    )
    return wire.charge_to_json(charge)


@internal_router.post("/gateways/{name}/charges/{gateway_key}/capture")
async def capture(
    request: Request, body: CaptureBody, name: GatewayName, gateway_key: PathKey
) -> dict[str, Any]:
    return wire.charge_to_json(await _gateway(request, name).capture(gateway_key, body.amount))


@internal_router.post("/gateways/{name}/charges/{gateway_key}/void")
async def void(request: Request, name: GatewayName, gateway_key: PathKey) -> dict[str, Any]:
    return wire.charge_to_json(await _gateway(request, name).void(gateway_key))


@internal_router.post("/gateways/{name}/charges/{gateway_key}/release_from_escrow")
async def release_from_escrow(
    request: Request, name: GatewayName, gateway_key: PathKey
) -> dict[str, Any]:
    return wire.charge_to_json(await _gateway(request, name).release_from_escrow(gateway_key))


@internal_router.post("/gateways/{name}/charges/{gateway_key}/refund")
async def refund(
    request: Request, body: RefundBody, name: GatewayName, gateway_key: PathKey
) -> dict[str, Any]:
    result = await _gateway(request, name).refund(gateway_key, body.refund_key, body.amount)
    return wire.refund_to_json(result)


@internal_router.get("/gateways/{name}/charges/{gateway_key}")
async def retrieve(request: Request, name: GatewayName, gateway_key: PathKey) -> dict[str, Any]:
    charge = await _gateway(request, name).retrieve_by_idempotency_key(gateway_key)
    if charge is None:
        raise ChargeNotFound(f"gateway {name} has no charge under that key")
    return wire.charge_to_json(charge)


@internal_router.post("/gateways/{name}/payouts")
async def payout(request: Request, body: PayoutBody, name: GatewayName) -> dict[str, Any]:
    result = await _gateway(request, name).payout(
        PayoutRequest(
            payout_key=body.payout_key,
            amount=body.amount,
            currency=body.currency,
            destination=body.destination,
        )
    )
    return wire.payout_to_json(result)


@internal_router.get("/gateways/{name}/payouts/{payout_key}")
async def find_payout(request: Request, name: GatewayName, payout_key: PathKey) -> dict[str, Any]:
    found = await _gateway(request, name).find_payout(payout_key)
    if found is None:
        raise PayoutNotFound(f"gateway {name} shows no payout under that key")
    return wire.payout_to_json(found)


@internal_router.get("/sandbox/charges")
async def sandbox_charges(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100,
    cursor: Annotated[str | None, Query(max_length=255)] = None,
    gateway_key_prefix: Annotated[str | None, Query(max_length=255)] = None,
) -> dict[str, Any]:
    sandbox: object = _container(request).gateways.get("sandbox")
    if not isinstance(sandbox, ChargeListing):
        raise GatewayNotFound("this vault runs no sandbox gateway that lists its charges")
    page = await sandbox.list_charges(limit, cursor, gateway_key_prefix=gateway_key_prefix)
    return {"data": list(page["data"]), "next_cursor": page.get("next_cursor")}


@internal_router.get("/audit/events")
async def audit_events(
    request: Request,
    after: Annotated[int, Query(ge=0, le=_MAX_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 500,
) -> dict[str, Any]:
    rows = await _container(request).vault.audit_events(after=after, limit=limit)
    return {
        "data": [{"id": r.id, "event": orjson.loads(r.event)} for r in rows],
        "next_after": rows[-1].id if rows else after,
    }

"""The API's side of the vault: a signed HTTP client, and a :class:`Gateway` that goes through it.

:class:`VaultClient` signs every internal call (:mod:`hammerlock.vault.signing`) and refuses any
response the vault did not sign over that call's nonce. Timeouts are bounded: 2 s to connect,
``timeout_s`` (``HAMMERLOCK_VAULT_TIMEOUT_S``) to read, since a read may wait on a gateway.

:class:`VaultGateway` is what the payments service holds for ``sandbox`` (and ``stripe`` /
``braintree`` when the vault forwards cards to them). It sends a token id, never a card; the
vault detokenizes. Transport trouble maps to the gateway error tree by what the caller must do:

==========================================  =======================  =========================
what happened                               raises                   the charge
==========================================  =======================  =========================
connect error / connect timeout / 502, 503  GatewayUnavailable       never reached the vault
read timeout, dropped connection, 500, 504  GatewayTimeout           unknown: retrieve by key
response not signed by a current key        GatewayTimeout           unknown: retrieve by key
401 from the vault (our signature refused)  GatewayUnavailable       not executed
422 ``gateway_rejected`` / other 4xx        GatewayRejected          refused (``code`` kept)
==========================================  =======================  =========================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import structlog

from hammerlock.audit.model import AuditEvent
from hammerlock.clock import Clock
from hammerlock.payments.gateways.base import (
    AuthorizeRequest,
    CardData,
    Charge,
    GatewayRejected,
    GatewayTimeout,
    GatewayToken,
    GatewayUnavailable,
    Payout,
    PayoutRequest,
    Refund,
    VaultToken,
    WebhookEvent,
)
from hammerlock.vault import wire
from hammerlock.vault.errors import InternalAuthFailed, TokenNotFound
from hammerlock.vault.model import TokenInfo
from hammerlock.vault.signing import NONCE_HEADER, InternalKeyring, RequestSigner

__all__ = ["VaultCallFailed", "VaultClient", "VaultGateway"]

CONNECT_TIMEOUT_S = 2.0
MAX_RESPONSE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class VaultCallFailed(Exception):
    """The vault answered with a problem document (authenticated, so it is the vault's word)."""

    status: int
    code: str
    detail: str
    body: Mapping[str, Any]

    def __str__(self) -> str:
        return f"vault answered {self.status} {self.code}: {self.detail}"


class VaultClient:
    def __init__(
        self,
        base_url: str,
        keyring: InternalKeyring,
        *,
        clock: Clock,
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._signer = RequestSigner(keyring, clock)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
            transport=transport,
            follow_redirects=False,
            headers={"user-agent": "hammerlock-api"},
        )

    def __repr__(self) -> str:
        return f"VaultClient({self.base_url})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(
        self, method: str, path: str, *, body: Any = None, params: Mapping[str, Any] | None = None
    ) -> Any:
        """One signed call; the parsed JSON of an authenticated 2xx answer.

        Raises :class:`InternalAuthFailed` when the response is not the vault's,
        :class:`VaultCallFailed` for an authenticated error answer, ``httpx`` transport errors
        as they come.
        """
        content = b"" if body is None else orjson.dumps(body)
        request = self._http.build_request(
            method,
            path,
            params={k: v for k, v in (params or {}).items() if v is not None},
            content=content,
            headers={"content-type": "application/json"} if content else None,
        )
        signed = self._signer.sign(method, request.url.raw_path.decode("latin-1"), content)
        request.headers.update(signed)
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        if isinstance(request_id, str):
            request.headers["x-request-id"] = request_id
        response = await self._http.send(request)
        payload = await response.aread()
        if len(payload) > MAX_RESPONSE_BYTES:
            raise InternalAuthFailed("the vault's response is too large")
        self._signer.verify_response(
            signed[NONCE_HEADER], response.status_code, response.headers, payload
        )
        parsed = orjson.loads(payload) if payload else None
        if response.status_code >= 400:
            problem = parsed if isinstance(parsed, dict) else {}
            raise VaultCallFailed(
                status=response.status_code,
                code=str(problem.get("code", "http_error")),
                detail=str(problem.get("detail", "")),
                body=problem,
            )
        return parsed

    async def healthy(self) -> bool:
        try:
            response = await self._http.get("/healthz", timeout=CONNECT_TIMEOUT_S)
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def tokens(self, token_id: str) -> TokenInfo:
        """A token's metadata (brand, last4, bin, expiry, fingerprint); never the number."""
        try:
            body = await self.call("GET", f"/internal/v1/tokens/{_segment(token_id)}")
        except VaultCallFailed as exc:
            if exc.code == TokenNotFound.code:
                raise TokenNotFound(f"no token {token_id}") from None
            raise
        return TokenInfo(
            id=body["id"],
            brand=body["brand"],
            last4=body["last4"],
            bin=body["bin"],
            exp_month=int(body["exp_month"]),
            exp_year=int(body["exp_year"]),
            fingerprint=body["fingerprint"],
            created_us=0,
            address_country=body.get("address_country"),
        )

    async def sandbox_charges(
        self, *, limit: int = 100, cursor: str | None = None, gateway_key_prefix: str | None = None
    ) -> dict[str, Any]:
        """The sandbox gateway's charge records: ``{"data": [...], "next_cursor"}``."""
        body: dict[str, Any] = await self.call(
            "GET",
            "/internal/v1/sandbox/charges",
            params={"limit": limit, "cursor": cursor, "gateway_key_prefix": gateway_key_prefix},
        )
        return body

    async def audit_events(self, *, after: int, limit: int) -> tuple[list[AuditEvent], int]:
        """The vault's audit events with outbox id > ``after``; and the id to ask after next."""
        body = await self.call(
            "GET", "/internal/v1/audit/events", params={"after": after, "limit": limit}
        )
        events = [wire.event_from_json(item["event"]) for item in body["data"]]
        return events, int(body["next_after"])


def _segment(value: str) -> str:
    if not value or "/" in value or len(value) > 255:
        raise GatewayRejected("not a valid key or token id", code="invalid_request")
    return quote(value, safe="")


_UNAVAILABLE_STATUSES = frozenset({502, 503})
_UNKNOWN_STATUSES = frozenset({500, 504})


class VaultGateway:
    """The :class:`~hammerlock.payments.gateways.base.Gateway` protocol, served by the vault."""

    def __init__(
        self,
        client: VaultClient,
        name: str,
        *,
        webhooks: Callable[[Mapping[str, str], bytes], WebhookEvent] | None = None,
    ) -> None:
        self.client = client
        self.name = name
        self._base = f"/internal/v1/gateways/{name}"
        self._webhooks = webhooks

    def __repr__(self) -> str:
        return f"VaultGateway({self.name!r} via {self.client.base_url})"

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            return await self.client.call(method, self._base + path, body=body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise GatewayUnavailable(f"vault not reachable: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise GatewayTimeout(
                f"no complete answer from the vault: {type(exc).__name__}"
            ) from None
        except InternalAuthFailed as exc:
            raise GatewayTimeout(
                f"vault response refused ({exc.detail}); outcome unknown"
            ) from None
        except VaultCallFailed as exc:
            raise _gateway_error(exc) from None

    async def authorize(self, request: AuthorizeRequest) -> Charge:
        body: dict[str, Any] = {
            "gateway_key": request.gateway_key,
            "amount": request.amount,
            "currency": request.currency,
            "capture": request.capture,
            "return_url": request.return_url,
            "force_three_d_secure": request.force_three_d_secure,
            "description": request.description,
            "metadata": dict(request.metadata),
            "hold_in_escrow": request.hold_in_escrow,
            "service_fee_amount": request.service_fee_amount,
        }
        source = request.source
        if isinstance(source, VaultToken):
            body["token_id"] = source.token_id
        elif isinstance(source, GatewayToken):
            body["gateway_token"] = source.value
        elif isinstance(source, CardData):
            raise GatewayRejected(
                "card data never leaves the vault: pay with a vault token", code="invalid_request"
            )
        return wire.charge_from_json(await self._call("POST", "/authorize", body))

    async def capture(self, gateway_key: str, amount: int) -> Charge:
        path = f"/charges/{_segment(gateway_key)}/capture"
        return wire.charge_from_json(await self._call("POST", path, {"amount": amount}))

    async def void(self, gateway_key: str) -> Charge:
        path = f"/charges/{_segment(gateway_key)}/void"
        return wire.charge_from_json(await self._call("POST", path))

    async def release_from_escrow(self, gateway_key: str) -> Charge:
        path = f"/charges/{_segment(gateway_key)}/release_from_escrow"
        return wire.charge_from_json(await self._call("POST", path))

    async def refund(self, gateway_key: str, refund_key: str, amount: int) -> Refund:
        path = f"/charges/{_segment(gateway_key)}/refund"
        body = {"refund_key": refund_key, "amount": amount}
        return wire.refund_from_json(await self._call("POST", path, body))

    async def payout(self, request: PayoutRequest) -> Payout:
        body = {
            "payout_key": request.payout_key,
            "amount": request.amount,
            "currency": request.currency,
            "destination": request.destination,
        }
        return wire.payout_from_json(await self._call("POST", "/payouts", body))

    async def find_payout(self, payout_key: str) -> Payout | None:
        try:
            body = await self._call("GET", f"/payouts/{_segment(payout_key)}")
        except GatewayRejected as exc:
            if exc.code == "payout_not_found":
                return None
            raise
        return wire.payout_from_json(body)

    async def retrieve_by_idempotency_key(self, gateway_key: str) -> Charge | None:
        try:
            body = await self._call("GET", f"/charges/{_segment(gateway_key)}")
        except GatewayRejected as exc:
            if exc.code == "charge_not_found":
                return None
            raise
        return wire.charge_from_json(body)

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        """Verified on the API side by the gateway's own verifier (the webhook carries no card
        data, so it never needs the vault)."""
        if self._webhooks is not None:
            event: WebhookEvent = self._webhooks(headers, body)
            return event
        raise GatewayRejected(
            f"webhooks of {self.name} are verified by its own adapter, not through the vault",
            code="webhook_not_supported",
        )


def _gateway_error(exc: VaultCallFailed) -> Exception:
    gateway_code = str(exc.body.get("gateway_code") or exc.code)
    message = exc.detail or exc.code
    if exc.code == "gateway_timeout" or exc.status in _UNKNOWN_STATUSES:
        return GatewayTimeout(message)
    if exc.code == "gateway_unavailable" or exc.status in _UNAVAILABLE_STATUSES:
        return GatewayUnavailable(message)
    if exc.status == 401:
        return GatewayUnavailable(f"the vault refused our signature: {message}")
    return GatewayRejected(message, code=gateway_code)


def sandbox_webhook_verifier(
    secret: bytes, clock: Clock
) -> Callable[[Mapping[str, str], bytes], WebhookEvent]:
    """The API's check of the sandbox's signed webhooks (``POST /v1/webhooks/sandbox``)."""
    from hammerlock.vault.sandbox import verify_webhook  # noqa: PLC0415 - keep the API light

    def verify(headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        return verify_webhook(secret, headers, body, now_s=clock.now_us() // 1_000_000)

    return verify

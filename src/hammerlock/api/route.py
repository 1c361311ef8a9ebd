"""The request path every hammerlock route walks, in this order (docs/architecture.md):

1. body size limit (413, before the body is read into memory) and content type (415);
2. request firewall: the PAN guard refuses any card number in a string field or header (400),
   and any body string holding NUL or an unpaired surrogate (422); a route without a body
   model refuses a body other than ``{}`` (422);
3. authentication (401) and the route's declared permission (403), both audited on failure;
4. idempotency: lease, replay, reuse and in-flight checks for POSTs (400/409/422) — or, for a
   route whose policy says ``receipt_in_transaction``, a receipt the handler checks and stores
   in the transaction that makes its change (ADR 0013);
5. FastAPI: schema validation (422, unknown fields rejected), then the handler.

Domain errors raised by a handler become problem responses *inside* step 4, so an idempotent
retry replays them like any other answer the handler chose.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

import orjson
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from hammerlock.api.idempotency import fingerprint, validate_key
from hammerlock.api.policy import Policy
from hammerlock.api.problems import ApiError, problem_response, status_for
from hammerlock.audit.model import Actor, Context, Origin
from hammerlock.errors import DomainError
from hammerlock.security import service as keys_service
from hammerlock.security.errors import Forbidden, Unauthenticated
from hammerlock.security.pan import contains_pan, fold_digits
from hammerlock.security.permissions import Permission, allows

if TYPE_CHECKING:
    from hammerlock.bootstrap import Container

__all__ = ["HammerlockRoute", "domain_problem"]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_JSON_TYPES = ("application/json",)
_MAX_SCAN_DEPTH = 64


def domain_problem(exc: DomainError) -> Response:
    return problem_response(
        code=exc.code, detail=exc.detail, title=exc.title, status=status_for(exc.code), **exc.extra
    )


class HammerlockRoute(APIRoute):
    """An APIRoute that enforces its :class:`Policy` before FastAPI sees the request."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()
        route_policy = Policy.from_openapi_extra(self.openapi_extra)
        if route_policy is None:
            raise RuntimeError(f"route {self.path} declares no policy (see api/policy.py)")
        route_path = self.path

        # A body sent to a route that takes none is refused, never ignored.
        no_body = self.body_field is None and not route_policy.raw_body

        async def handler(request: Request) -> Response:
            container: Container = request.app.state.container
            body = b""
            if request.method in _BODY_METHODS:
                limit = route_policy.max_body_bytes or container.settings.max_body_bytes
                body = await _read_body(request, limit)
                if not route_policy.raw_body:  # a gateway's webhook comes as it sends it
                    _check_content_type(request, body)
            _pan_guard(request, body, text_checked=not route_policy.raw_body)
            if body and no_body and not _empty_json(body):
                raise ApiError(
                    "validation_error", "this route takes no request body: send none, or {}"
                )
            ctx = await _authorize(request, container, route_policy.permission, route_path)

            async def run() -> Response:
                try:
                    return await original(request)
                except DomainError as exc:
                    return domain_problem(exc)

            if request.method != "POST":
                return await run()
            raw_key = request.headers.get("idempotency-key")
            if raw_key is None:
                if route_policy.money_moving:
                    raise ApiError(
                        "idempotency_key_required",
                        "this route moves money: send an Idempotency-Key header "
                        "(a fresh UUID per logical request)",
                    )
                return await run()
            scope = ctx.actor.key_id or "public"
            key = validate_key(raw_key)
            fp = fingerprint(request.method, request.url.path, scope, body)
            if route_policy.receipt_in_transaction:
                # The handler checks and stores the key in its own transaction (ADR 0013).
                request.state.receipt = container.idempotency.receipt(
                    scope=scope, key=key, fingerprint=fp
                )
                return await run()
            return await container.idempotency.run(
                scope=scope, key=key, fingerprint=fp, handler=run
            )

        return handler


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError("validation_error", "Content-Length is not a number")
        if int(declared) > limit:
            raise ApiError(
                "payload_too_large", f"request body over this route's limit of {limit} bytes"
            )
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(
                    "payload_too_large", f"request body over this route's limit of {limit} bytes"
                )
            chunks.append(chunk)
    except ClientDisconnect:
        # The client went away mid-body: nothing to do, and not a server error (logged as a
        # 400 in the access log, not as an unhandled exception with its traceback).
        raise ApiError(
            "request_incomplete", "the client closed before sending its whole body"
        ) from None
    body = b"".join(chunks)
    request._body = body  # FastAPI reads the cached body; the stream is consumed
    return body


def _check_content_type(request: Request, body: bytes) -> None:
    if not body:
        return
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type not in _JSON_TYPES:
        raise ApiError("unsupported_media_type", "send the request body as application/json")


def _strings(value: Any, depth: int = 0) -> Iterator[str]:
    if depth > _MAX_SCAN_DEPTH:
        raise ApiError("validation_error", "JSON nested too deeply")
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v, depth + 1)


def _body_strings(body: bytes) -> Iterator[str] | None:
    """Every key and string value of a JSON body; None when it is not JSON (FastAPI then says
    so). orjson first (fast, and it refuses unpaired surrogates); the standard library's parser
    — the one FastAPI validates with — for what orjson refuses but it accepts (an escaped
    unpaired surrogate, an integer beyond 64 bits), so nothing reaches a handler unscanned."""
    try:
        return _strings(orjson.loads(body))
    except orjson.JSONDecodeError:
        pass
    try:
        return iter(list(_strings(json.loads(body))))
    except (ValueError, RecursionError):
        return None


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _has_pan(text: str) -> bool:
    """A card number in ``text``, in ASCII digits or any other (full-width, Arabic-Indic…):
    folded first (ASCII text, nearly all of it, at no cost)."""
    return contains_pan(fold_digits(text))


def _empty_json(body: bytes) -> bool:
    """``{}`` or ``null``, however spaced: what a client sends for "no arguments"."""
    try:
        return orjson.loads(body) in ({}, None)
    except orjson.JSONDecodeError:
        return False


def _pan_guard(request: Request, body: bytes, *, text_checked: bool = True) -> None:
    """Card numbers never enter the API: refuse them in headers, path, query and JSON strings.
    With ``text_checked``, body strings must also be text a database can hold (no NUL, no
    unpaired surrogate) — not for a gateway's webhook, whose body is the gateway's to judge
    (refusing it would only make the gateway retry it until it gives up)."""
    found = (
        any(contains_pan(v) for v in request.headers.values())
        or _has_pan(request.scope["path"])  # percent-decoded, unlike the raw query string
        or any(_has_pan(k) or _has_pan(v) for k, v in request.query_params.multi_items())
    )
    if not found and body:
        strings = _body_strings(body)
        if strings is None:
            found = _has_pan(body.decode("utf-8", errors="replace"))
        else:
            for text in strings:
                if _has_pan(text):
                    found = True
                    break
                if text_checked and ("\x00" in text or not _encodable(text)):
                    raise ApiError(
                        "validation_error",
                        "a string in the body holds a NUL character or an unpaired UTF-16 "
                        "surrogate: send text as valid Unicode without NUL",
                    )
    if found:
        raise ApiError(
            "pan_not_allowed",
            "the request carries what looks like a card number; card data goes to the card "
            "vault (POST /v1/tokens), and the API takes the token it returns",
        )


def _origin(request: Request, container: Container) -> Origin:
    return Origin(
        ip=request.client.host if request.client else None,
        user_agent=(request.headers.get("user-agent") or "")[:256] or None,
        node=container.node_name,
    )


async def _authorize(
    request: Request, container: Container, permission: Permission, route: str
) -> Context:
    request_id = getattr(request.state, "request_id", None)
    origin = _origin(request, container)
    if permission is Permission.PUBLIC:
        ctx = Context(actor=Actor(), origin=origin, request_id=request_id)
        request.state.ctx = ctx
        return ctx
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    anonymous = Context(actor=Actor(), origin=origin, request_id=request_id)
    try:
        if scheme.lower() != "bearer" or not presented.strip():
            raise Unauthenticated("send your API key as `Authorization: Bearer hl_…`")
        key = await container.keys.authenticate(presented.strip())
    except Unauthenticated as exc:
        await _audit_denial(container, anonymous, "auth.failure", exc.code, route)
        raise
    ctx = Context(
        actor=Actor(principal_id=key.principal_id, role=key.role.value, key_id=key.id),
        origin=origin,
        request_id=request_id,
    )
    if not allows(key.role, permission):
        await _audit_denial(container, ctx, "auth.denied", Forbidden.code, route)
        raise Forbidden(f"the {key.role.value} role may not call {request.method} {route}")
    request.state.key = key
    request.state.ctx = ctx
    return ctx


async def _audit_denial(
    container: Container, ctx: Context, action: str, code: str, route: str
) -> None:
    async with container.db.transaction() as uow:
        await keys_service.record_auth_failure(uow, ctx, action=action, code=code, route=route)

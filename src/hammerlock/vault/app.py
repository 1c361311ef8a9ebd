"""The vault's FastAPI application: a separate app, in a separate process, on its own port.

Order of a request: request id + body cap (the API's :class:`RequestContextMiddleware`) → CORS
(configured origins, ``POST /v1/tokens`` only matters) → :class:`InternalAuthMiddleware` (every
``/internal/`` path: signed request, signed response) → routes. No OpenAPI document or docs page
is served: the vault's surface is small on purpose. Errors are RFC 9457 problems from the API's
code table; a validation error never echoes the submitted value (it may be a card number).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, cast

import structlog
from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import hammerlock
from hammerlock.api.middleware import RequestContextMiddleware
from hammerlock.api.problems import problem_response, status_for
from hammerlock.errors import DomainError
from hammerlock.payments.gateways.base import GatewayError, GatewayRejected
from hammerlock.vault.errors import InternalAuthFailed, RateLimited
from hammerlock.vault.router import internal_router, public_router
from hammerlock.vault.signing import NONCE_HEADER, RequestVerifier

if TYPE_CHECKING:
    from hammerlock.vault.container import VaultContainer

__all__ = ["InternalAuthMiddleware", "create_vault_app"]

log = structlog.get_logger("hammerlock.vault")

INTERNAL_PREFIX = "/internal/"
MAX_INTERNAL_BODY_BYTES = 256 * 1024
MAX_PUBLIC_BODY_BYTES = 16 * 1024  # a card is a few hundred bytes; challenge forms are small
_MAX_REPORTED_ERRORS = 50
_HTTP_CODES = {400: "malformed_json", 404: "not_found", 405: "method_not_allowed"}


def create_vault_app(
    container: VaultContainer, *, extra_routers: Sequence[APIRouter] = ()
) -> FastAPI:
    """The vault app. ``extra_routers`` are public (the sandbox's 3-D Secure challenge pages);
    the gateways it forwards to are ``container.gateways``."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await container.start()
        try:
            yield
        finally:
            await container.stop()

    app = FastAPI(
        title="hammerlock card vault",
        version=hammerlock.__version__,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.container = container
    _install_error_handlers(app)
    app.add_middleware(InternalAuthMiddleware, verifier=container.verifier)
    app.add_middleware(
        _ProblemCors,
        allow_origins=container.settings.vault_cors_origin_list,
        allow_methods=["POST"],
        allow_headers=["Content-Type"],
        allow_credentials=False,
        max_age=600,
    )
    app.add_middleware(RequestContextMiddleware)
    app.include_router(public_router)
    app.include_router(internal_router)
    for router in [*container.extra_routers, *extra_routers]:
        app.include_router(router)
    return app


class _ProblemCors(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered as a problem (``cors_rejected``)
    rather than plain text, and the internal routes left out (no browser calls them: a
    preflight there is answered like any unsigned call, 401)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(INTERNAL_PREFIX):
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        if answer.status_code < 400:
            return answer
        detail = bytes(answer.body).decode("utf-8", "replace") or "CORS preflight refused"
        return problem_response(code="cors_rejected", detail=detail, status=answer.status_code)


class InternalAuthMiddleware:
    """Authenticates every ``/internal/`` request and signs every response to one.

    Every request body is read first, bounded (public routes 16 KiB, internal 256 KiB, chunked
    bodies counted as they stream). An internal request is verified before the app sees it, and
    its response buffered (internal responses are small JSON) and signed over its nonce.
    """

    def __init__(self, app: ASGIApp, *, verifier: RequestVerifier) -> None:
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        internal = scope["path"].startswith(INTERNAL_PREFIX)
        limit = MAX_INTERNAL_BODY_BYTES if internal else MAX_PUBLIC_BODY_BYTES
        body = await _read_body(receive, limit)
        if body is None:
            await problem_response(
                code="payload_too_large", detail=f"request body over {limit} bytes", status=413
            )(scope, receive, send)
            return
        if not internal:  # public: only the size limit applies here
            await self.app(scope, _replay(body, receive), send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            key = self.verifier.verify(scope["method"], _target(scope), headers, body)
        except InternalAuthFailed as exc:
            log.warning("vault.internal_auth_failed", path=scope["path"], reason=exc.detail)
            await problem_response(code=exc.code, detail="internal call not authenticated")(
                scope, receive, send
            )
            return
        scope.setdefault("state", {})["internal_key_id"] = key.key_id
        nonce = headers[NONCE_HEADER]
        start: Message = {}
        chunks: list[bytes] = []

        async def buffer(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            payload = b"".join(chunks)
            signed = self.verifier.sign_response(key, nonce, int(start["status"]), payload)
            raw = [
                (k, v) for k, v in start.get("headers", []) if k.lower() not in {b"content-length"}
            ]
            raw += [(k.encode(), v.encode()) for k, v in signed.items()]
            raw.append((b"content-length", str(len(payload)).encode()))
            await send({**start, "headers": raw})
            await send({"type": "http.response.body", "body": payload, "more_body": False})

        try:
            await self.app(scope, _replay(body, receive), buffer)
        except Exception as exc:
            # Answered here, signed, rather than by Starlette's error middleware outside this
            # one: an unsigned 500 would read to the API as a forged answer. (A 500 still
            # leaves the call's outcome unknown to the caller: nothing here says what was done.)
            if chunks:
                raise  # the answer was being sent: nothing sound can follow it
            log.error("http.unhandled_error", path=scope["path"], exc_info=exc)
            start = {}
            await problem_response(
                code="internal_error",
                detail="an unexpected error occurred in the vault; it has been logged",
            )(scope, receive, buffer)


def _target(scope: Scope) -> str:
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string", b"")
    return (raw + (b"?" + query if query else b"")).decode("latin-1")


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then waits on the real one
    (which reports the client's disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _install_error_handlers(app: FastAPI) -> None:
    async def on_domain_error(_request: Request, exc: Exception) -> Response:
        exc = cast("DomainError", exc)
        headers = None
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(exc.retry_after_s)}
        return problem_response(
            code=exc.code,
            detail=exc.detail,
            title=exc.title,
            status=status_for(exc.code),
            headers=headers,
            **exc.extra,
        )

    async def on_gateway_error(_request: Request, exc: Exception) -> Response:
        exc = cast("GatewayError", exc)
        code = exc.code if exc.code in {"gateway_timeout", "gateway_unavailable"} else None
        if code is None:
            code = "gateway_rejected" if isinstance(exc, GatewayRejected) else "gateway_unavailable"
        return problem_response(
            code=code, detail=exc.message, gateway_code=exc.code, retryable=exc.retryable
        )

    async def on_validation_error(_request: Request, exc: Exception) -> Response:
        exc = cast("RequestValidationError", exc)
        errors = [
            {
                "field": ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body",
                "message": str(err.get("msg", "invalid")),
                "type": str(err.get("type", "invalid")),
            }
            for err in exc.errors()[:_MAX_REPORTED_ERRORS]
        ]
        malformed = any(e["type"] == "json_invalid" for e in errors)
        return problem_response(
            code="malformed_json" if malformed else "validation_error",
            detail="the request body is not valid JSON"
            if malformed
            else f"{len(exc.errors())} invalid field(s); see `errors`",
            status=400 if malformed else 422,
            errors=errors,
        )

    async def on_http_error(_request: Request, exc: Exception) -> Response:
        exc = cast("StarletteHTTPException", exc)
        return problem_response(
            code=_HTTP_CODES.get(exc.status_code, "http_error"),
            detail=exc.detail if isinstance(exc.detail, str) else "request failed",
            status=exc.status_code,
        )

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("http.unhandled_error", path=request.url.path, exc_info=exc)
        return problem_response(
            code="internal_error",
            detail="an unexpected error occurred; it has been logged with this request's id",
        )

    app.add_exception_handler(DomainError, on_domain_error)
    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)

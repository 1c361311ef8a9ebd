"""The FastAPI application factory. It builds; the composition root (bootstrap.py) wires."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, cast

import structlog
import swagger_ui_bundle
from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

import hammerlock
from hammerlock.api.middleware import RequestContextMiddleware
from hammerlock.api.problems import ApiError, problem_response
from hammerlock.api.route import domain_problem
from hammerlock.api.routers import health, keys
from hammerlock.auctions import router as auctions_router
from hammerlock.audit import router as audit_router
from hammerlock.errors import DomainError
from hammerlock.escrow import router as escrow_router
from hammerlock.ledger import router as ledger_router
from hammerlock.parties import router as parties_router
from hammerlock.payments import router as payments_router
from hammerlock.risk import router as risk_router
from hammerlock.security.errors import Unauthenticated
from hammerlock.webhooks import router as webhooks_router

if TYPE_CHECKING:
    from hammerlock.bootstrap import Container

__all__ = ["create_app"]

log = structlog.get_logger("hammerlock.api")

# FastAPI raises a bare 400 only when json.loads fails with something other than a syntax
# error (an integer of over 4,300 digits, nesting too deep for the parser): still bad JSON.
_HTTP_CODES = {
    400: "malformed_json",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}
# RFC 9110 §11.6.1: a 401 response must say which authentication scheme to use.
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="hammerlock"'}
_MAX_REPORTED_ERRORS = 50


def create_app(
    container: Container, *, freeze_gc: bool = False, gc_gen0_threshold: int | None = None
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await container.start()
        if freeze_gc:
            # What start-up built (routes, SQLAlchemy's compiled statements, settings, keys)
            # lives as long as the process: frozen, the collector stops walking it on every
            # full collection — those pauses were most of the bids' p99 (124 → 45 ms on one
            # hot lot, docs/benchmarks.md). Only for a served process: a test making many apps
            # would keep each one's objects for good.
            gc.collect()
            gc.freeze()
        if gc_gen0_threshold is not None:
            # A request makes thousands of short-lived objects; at CPython's 700 the youngest
            # generation is collected several times per request (ADR 0024).
            gc.set_threshold(gc_gen0_threshold, *gc.get_threshold()[1:])
        try:
            yield
        finally:
            await container.stop()

    app = FastAPI(
        title="hammerlock",
        version=hammerlock.__version__,
        summary="Payments and trust backbone for online auction marketplaces.",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.container = container
    _install_docs(app)
    _install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    # FastAPI tries the included routers' routes one by one (a regular expression and some
    # bookkeeping each, ~1.5 µs) until one matches: a bid went through the ~40 routes of the
    # routers included before the auctions router first, ~75 µs of its CPU. So the auctions
    # router (bids) is tried first. No path can match routes of two routers (each router has
    # its own path prefixes; tests/unit/test_hot_path_equivalence.py checks), so the order
    # changes no answer, 404, 405 or redirect; the published spec keeps the documented order.
    documented = (
        health.router,
        keys.router,
        ledger_router.router,
        audit_router.router,
        webhooks_router.router,
        payments_router.router,
        risk_router.router,
        parties_router.router,
        auctions_router.router,
        escrow_router.router,
    )
    for router in (
        auctions_router.router,
        *(r for r in documented if r is not auctions_router.router),
    ):
        app.include_router(router)
    _declare_security_scheme(app, documented)
    return app


def _install_docs(app: FastAPI) -> None:
    """Swagger UI from the installed package: no CDN, no third-party script."""
    assets = str(swagger_ui_bundle.swagger_ui_path)
    app.mount("/docs/assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="hammerlock API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )


def _declare_security_scheme(app: FastAPI, documented: Sequence[APIRouter]) -> None:
    original = app.openapi
    # The spec lists paths in the documented order, whatever order the routers are tried in.
    paths_in_order = [
        route.path_format
        for router in documented
        for route in router.routes
        if isinstance(route, APIRoute)
    ]
    order = {path: n for n, path in reversed(list(enumerate(paths_in_order)))}

    def openapi() -> dict[str, object]:
        if app.openapi_schema is None:
            schema = original()
            paths = schema.get("paths")
            if isinstance(paths, dict):
                schema["paths"] = dict(
                    sorted(paths.items(), key=lambda item: order.get(item[0], len(order)))
                )
            components = schema.setdefault("components", {})
            components.setdefault("securitySchemes", {})["ApiKey"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key: `Authorization: Bearer hl_…` (hammerlock keys create)",
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_request: Request, exc: Exception) -> Response:
        exc = cast("ApiError", exc)
        return problem_response(
            code=exc.code, detail=exc.detail, title=exc.title, status=exc.status, **exc.extra
        )

    async def on_domain_error(_request: Request, exc: Exception) -> Response:
        exc = cast("DomainError", exc)
        response = domain_problem(exc)
        if isinstance(exc, Unauthenticated):
            response.headers.update(_CHALLENGE)
        return response

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
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        return problem_response(
            code=code,
            detail=detail,
            status=exc.status_code,
            headers=dict(exc.headers) if exc.headers else None,
        )

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.error("http.unhandled_error", path=request.url.path, exc_info=exc)
        return problem_response(
            code="internal_error",
            detail="an unexpected error occurred; it has been logged with this request's id",
        )

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(DomainError, on_domain_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)

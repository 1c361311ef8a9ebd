"""Outermost middleware: request id, structured access log, and a hard cap on body size.

Pure ASGI (no BaseHTTPMiddleware): it never buffers a body. Per-route limits are enforced later,
in :mod:`hammerlock.api.route`, before the body is read.
"""

from __future__ import annotations

import re
import secrets
import time

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hammerlock.api.policy import BATCH_MAX_BODY_BYTES
from hammerlock.api.problems import problem_response

__all__ = ["RequestContextMiddleware"]

log = structlog.get_logger("hammerlock.http")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
# Only polls: the vault's other internal routes move money and keep their info line.
_ROUTINE_PATHS = ("/internal/v1/audit/events", "/healthz", "/readyz")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else "req_" + secrets.token_hex(12)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                MutableHeaders(scope=message)["X-Request-Id"] = request_id
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            declared = headers.get(b"content-length", b"0")
            if declared.isdigit() and int(declared) > BATCH_MAX_BODY_BYTES:
                response = problem_response(
                    code="payload_too_large",
                    detail=f"request body over the hard limit of {BATCH_MAX_BODY_BYTES} bytes",
                )
                await response(scope, receive, send_with_id)
            else:
                try:
                    await self.app(scope, receive, send_with_id)
                except Exception as exc:
                    # Answer here rather than in Starlette's ServerErrorMiddleware (which sits
                    # outside this one): the log line and the 500 then carry the request id.
                    if response_started:
                        raise
                    log.error("http.unhandled_error", path=scope["path"], exc_info=exc)
                    response = problem_response(
                        code="internal_error",
                        detail="an unexpected error occurred; it has been logged with this "
                        "request's id",
                    )
                    await response(scope, receive, send_with_id)
            # Routine machine-to-machine polls (the API reading the vault's audit events every
            # second, health probes) log at debug: at info they would bury everything else.
            routine = status < 400 and scope["path"].startswith(_ROUTINE_PATHS)
            (log.debug if routine else log.info)(
                "http.request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )

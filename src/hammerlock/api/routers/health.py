"""Liveness and readiness. Both public, both cheap."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from hammerlock.api.policy import policy
from hammerlock.api.problems import problem_response
from hammerlock.api.route import HammerlockRoute
from hammerlock.audit import service as audit_service
from hammerlock.security.permissions import Permission

router = APIRouter(route_class=HammerlockRoute, tags=["health"])


@router.get("/healthz", openapi_extra=policy(Permission.PUBLIC))
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", openapi_extra=policy(Permission.PUBLIC), response_model=None)
async def readyz(request: Request) -> Response:
    """The process can reach its database. ``degraded`` (still 200: business writes go on)
    when the audit outbox holds more than its high-water mark of unsequenced events."""
    container = request.app.state.container
    try:
        await container.db.ping()
        backlog_high = await audit_service.outbox_over(
            container.db, container.settings.audit_outbox_high_water
        )
    except Exception:  # noqa: BLE001 - any failure means not ready; details stay in the log
        return problem_response(code="service_unavailable", detail="database unreachable")
    if backlog_high:
        return JSONResponse(
            {"status": "degraded", "database": "ok", "audit_outbox": "over high-water mark"}
        )
    return JSONResponse({"status": "ok", "database": "ok"})

"""Liveness and readiness. Both public, both cheap."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from hammerlock.api.policy import policy
from hammerlock.api.problems import problem_response
from hammerlock.api.route import HammerlockRoute
from hammerlock.security.permissions import Permission

router = APIRouter(route_class=HammerlockRoute, tags=["health"])


@router.get("/healthz", openapi_extra=policy(Permission.PUBLIC))
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", openapi_extra=policy(Permission.PUBLIC), response_model=None)
async def readyz(request: Request) -> Response:
    """The process can reach its database."""
    try:
        await request.app.state.container.db.ping()
    except Exception:  # noqa: BLE001 - any failure means not ready; details stay in the log
        return problem_response(code="service_unavailable", detail="database unreachable")
    return JSONResponse({"status": "ok", "database": "ok"})

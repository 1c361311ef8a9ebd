"""Small accessors handlers use to reach the composition root and the caller's context."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request

from hammerlock.audit.model import Context
from hammerlock.security.keys import ApiKey

if TYPE_CHECKING:
    from hammerlock.bootstrap import Container

__all__ = ["get_container", "get_ctx", "get_key"]


def get_container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


def get_ctx(request: Request) -> Context:
    ctx: Context = request.state.ctx
    return ctx


def get_key(request: Request) -> ApiKey:
    key: ApiKey = request.state.key
    return key

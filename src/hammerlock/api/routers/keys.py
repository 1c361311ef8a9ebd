"""API keys over HTTP, for admins: list, create (the secret is shown once), revoke."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field, StringConstraints

from hammerlock.api.deps import get_container, get_ctx
from hammerlock.api.policy import policy
from hammerlock.api.problems import ApiError
from hammerlock.api.route import HammerlockRoute
from hammerlock.api.schemas import ApiModel, DateTime, ListEnvelope, Name
from hammerlock.clock import format_rfc3339, to_us
from hammerlock.security import service
from hammerlock.security.keys import ApiKey
from hammerlock.security.permissions import Permission, Role

router = APIRouter(route_class=HammerlockRoute, tags=["keys"], prefix="/v1/keys")

_LATEST_EXPIRY_US = to_us(datetime(9999, 1, 1, tzinfo=UTC))

_KEY_ID = r"^[a-z0-9_]{1,64}$"  # key ids are "key_" + 16 of [a-z0-9] (security/keys.py)
PrincipalId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9:_.-]{1,128}$")]


class KeyOut(BaseModel):
    id: str
    principal_id: str
    role: Role
    name: str
    created_at: str
    expires_at: str | None
    revoked_at: str | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls(
            id=key.id,
            principal_id=key.principal_id,
            role=key.role,
            name=key.name,
            created_at=format_rfc3339(key.created_us),
            expires_at=None if key.expires_us is None else format_rfc3339(key.expires_us),
            revoked_at=None if key.revoked_us is None else format_rfc3339(key.revoked_us),
        )


class CreatedKeyOut(KeyOut):
    secret: str = Field(description="The API key itself. Shown once; store it now.")


class KeyCreate(ApiModel):
    role: Role
    name: Name
    principal_id: PrincipalId | None = None
    expires_at: DateTime | None = Field(default=None, description="RFC 3339, with a timezone")


@router.get("", openapi_extra=policy(Permission.KEYS_MANAGE))
async def list_keys(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(pattern=_KEY_ID)] = None,
) -> ListEnvelope[KeyOut]:
    container = get_container(request)
    async with container.db.transaction(write=False) as uow:
        keys = await service.list_keys(uow, after=cursor, limit=limit + 1)
    page = keys[:limit]
    next_cursor = page[-1].id if len(keys) > limit else None
    return ListEnvelope[KeyOut](data=[KeyOut.of(k) for k in page], next_cursor=next_cursor)


@router.post("", status_code=201, openapi_extra=policy(Permission.KEYS_MANAGE))
async def create_key(request: Request, body: KeyCreate) -> CreatedKeyOut:
    container = get_container(request)
    expires_us = None
    if body.expires_at is not None:
        if body.expires_at.tzinfo is None:
            raise ApiError("validation_error", "expires_at needs a timezone (e.g. Z)")
        expires_us = to_us(body.expires_at)
        # Checked before the write: an instant that cannot be formatted back (before year 1 or
        # after 9999 in UTC) would otherwise be stored and break every later listing.
        if not container.clock.now_us() < expires_us <= _LATEST_EXPIRY_US:
            raise ApiError(
                "validation_error", "expires_at must be in the future and before year 9999"
            )
    async with container.db.transaction() as uow:
        created = await service.create_key(
            uow,
            get_ctx(request),
            pepper=container.pepper,
            role=body.role,
            name=body.name,
            principal_id=body.principal_id,
            expires_us=expires_us,
        )
    return CreatedKeyOut(**KeyOut.of(created.key).model_dump(), secret=created.plaintext)


@router.post("/{key_id}/revoke", openapi_extra=policy(Permission.KEYS_MANAGE))
async def revoke_key(
    request: Request, key_id: Annotated[str, StringConstraints(pattern=_KEY_ID)]
) -> KeyOut:
    container = get_container(request)
    async with container.db.transaction() as uow:
        key = await service.revoke_key(uow, get_ctx(request), key_id)
    container.keys.forget(key_id)  # at once here; other processes within auth_cache_ttl_s
    return KeyOut.of(key)

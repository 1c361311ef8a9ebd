"""Audit trail HTTP routes under ``/v1/audit`` (the only module here that knows HTTP).

Auditors and admins only (``audit.read``); every call is itself audited by the service, refused
ones included. Formats (docs/audit.md): hashes lowercase hex, keys and signatures standard base64
(RFC 4648 §4) of the raw bytes, times RFC 3339 UTC. An event is served as the JSON object whose
RFC 8785 canonical form is the stored leaf (``seq`` included), plus its ``leaf_hash``.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, StringConstraints
from starlette.responses import Response

from hammerlock.api.deps import get_container, get_ctx
from hammerlock.api.policy import policy
from hammerlock.api.route import HammerlockRoute
from hammerlock.api.schemas import MAX_SAFE_INT, DateTime, ListEnvelope
from hammerlock.audit import service
from hammerlock.audit.errors import AuditError
from hammerlock.audit.model import EventFilter, TreeHead
from hammerlock.clock import to_us
from hammerlock.security.permissions import Permission

__all__ = ["router"]

router = APIRouter(route_class=HammerlockRoute, tags=["audit"], prefix="/v1/audit")

T = TypeVar("T")
_POLICY = policy(Permission.AUDIT_READ)

Seq = Annotated[int, Query(ge=0, le=MAX_SAFE_INT)]
Limit = Annotated[int, Query(ge=1, le=1000)]
_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"  # the columns' lengths; no control characters
ActorId = Annotated[str, StringConstraints(max_length=128, pattern=_PRINTABLE)]
Action = Annotated[str, StringConstraints(max_length=128, pattern=_PRINTABLE)]
ResourceType = Annotated[str, StringConstraints(max_length=64, pattern=_PRINTABLE)]
ResourceId = Annotated[str, StringConstraints(max_length=256, pattern=_PRINTABLE)]


class ActorOut(BaseModel):
    principal_id: str | None
    role: str | None
    key_id: str | None


class ResourceOut(BaseModel):
    type: str | None
    id: str | None


class OutcomeOut(BaseModel):
    status: str
    code: str | None


class OriginOut(BaseModel):
    ip: str | None
    user_agent: str | None
    node: str | None


class AuditEventOut(BaseModel):
    """An event of schema v1 as stored, plus ``leaf_hash`` = SHA-256(0x00 ‖ JCS(event minus
    leaf_hash)), lowercase hex."""

    seq: int
    event_id: str
    ts: str
    actor: ActorOut
    action: str
    resource: ResourceOut
    outcome: OutcomeOut
    origin: OriginOut
    request_id: str | None
    details: dict[str, Any]
    leaf_hash: str


class TreeHeadOut(BaseModel):
    size: int
    root_hash: str
    timestamp: str
    key_id: str
    signature: str

    @classmethod
    def of(cls, head: TreeHead) -> TreeHeadOut:
        return cls(**head.as_json())


class InclusionProofOut(BaseModel):
    leaf_index: int
    tree_size: int
    path: list[str]


class ConsistencyProofOut(BaseModel):
    first: int
    second: int
    path: list[str]


class PublicKeyOut(BaseModel):
    key_id: str
    algorithm: str
    public_key: str


class PublicKeysOut(BaseModel):
    keys: list[PublicKeyOut]


def _answer(result: T | AuditError) -> T:
    """The service recorded a refused read and committed; now refuse it."""
    if isinstance(result, AuditError):
        raise result
    return result


@router.get("/events", openapi_extra=_POLICY, response_model=ListEnvelope[AuditEventOut])
async def list_events(
    request: Request,
    *,
    after_seq: Seq | None = None,
    limit: Limit = 100,
    since: Annotated[DateTime | None, Query(description="RFC 3339; inclusive")] = None,
    until: Annotated[DateTime | None, Query(description="RFC 3339; exclusive")] = None,
    actor_id: Annotated[ActorId | None, Query()] = None,
    action: Annotated[Action | None, Query()] = None,
    resource_type: Annotated[ResourceType | None, Query()] = None,
    resource_id: Annotated[ResourceId | None, Query()] = None,
) -> Response:
    """Events ascending by `seq`, after `after_seq` (exclusive; omitted: from seq 0). Pass
    `next_cursor` as `after_seq` for the next page; it is null after the last match."""
    where = EventFilter(
        since_us=None if since is None else to_us(since),
        until_us=None if until is None else to_us(until),
        actor_id=actor_id,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
    )
    async with get_container(request).db.transaction() as uow:
        result = await service.list_events(
            uow, get_ctx(request), after_seq=after_seq, limit=limit, where=where
        )
    page = _answer(result)
    # Served as parsed from the stored canonical text, so that JCS(item minus leaf_hash) is
    # byte for byte the leaf; no model round trip that could reorder, drop or retype a field.
    body = {
        "data": [{**orjson.loads(e.canonical), "leaf_hash": e.leaf_hash} for e in page.items],
        "next_cursor": str(page.items[-1].seq) if page.more else None,
    }
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/tree_head", openapi_extra=_POLICY)
async def tree_head(request: Request) -> TreeHeadOut:
    """The latest signed tree head."""
    async with get_container(request).db.transaction() as uow:
        result = await service.latest_tree_head(uow, get_ctx(request))
    return TreeHeadOut.of(_answer(result))


@router.get("/tree_heads", openapi_extra=_POLICY)
async def tree_heads(
    request: Request, after_size: Seq | None = None, limit: Limit = 100
) -> ListEnvelope[TreeHeadOut]:
    """Signed tree heads ascending by `size`, after `after_size` (exclusive)."""
    async with get_container(request).db.transaction() as uow:
        page = await service.list_tree_heads(
            uow, get_ctx(request), after_size=after_size, limit=limit
        )
    return ListEnvelope[TreeHeadOut](
        data=[TreeHeadOut.of(h) for h in page.items],
        next_cursor=str(page.items[-1].size) if page.more else None,
    )


@router.get("/proof/inclusion", openapi_extra=_POLICY)
async def inclusion_proof(
    request: Request,
    seq: Seq,
    tree_size: Annotated[
        int | None,
        Query(ge=1, le=MAX_SAFE_INT, description="A signed tree head's size (default: latest)"),
    ] = None,
) -> InclusionProofOut:
    """RFC 9162 §2.1.3 audit path of the event `seq` in the signed tree of `tree_size` leaves."""
    async with get_container(request).db.transaction() as uow:
        result = await service.inclusion_proof(uow, get_ctx(request), seq=seq, tree_size=tree_size)
    proof = _answer(result)
    return InclusionProofOut(
        leaf_index=proof.leaf_index, tree_size=proof.tree_size, path=[h.hex() for h in proof.path]
    )


@router.get("/proof/consistency", openapi_extra=_POLICY)
async def consistency_proof(
    request: Request,
    first: Annotated[int, Query(ge=1, le=MAX_SAFE_INT, description="A signed tree head's size")],
    second: Annotated[int, Query(ge=1, le=MAX_SAFE_INT, description="A signed tree head's size")],
) -> ConsistencyProofOut:
    """RFC 9162 §2.1.4 proof that the signed tree of `first` leaves is a prefix of `second`'s."""
    async with get_container(request).db.transaction() as uow:
        result = await service.consistency_proof(uow, get_ctx(request), first=first, second=second)
    proof = _answer(result)
    return ConsistencyProofOut(
        first=proof.first, second=proof.second, path=[h.hex() for h in proof.path]
    )


@router.get("/public_keys", openapi_extra=_POLICY)
async def public_keys(request: Request) -> PublicKeysOut:
    """The Ed25519 keys that sign tree heads (hold the current one out of band too)."""
    async with get_container(request).db.transaction() as uow:
        keys = await service.public_keys(uow, get_ctx(request))
    return PublicKeysOut(
        keys=[
            PublicKeyOut(key_id=k.key_id, algorithm=k.algorithm, public_key=k.public_key)
            for k in keys
        ]
    )

"""A route's security policy, declared next to its definition.

    @router.post("/v1/ledger/transfers", openapi_extra=policy(Permission.LEDGER_WRITE,
                 money_moving=True, max_body_bytes=8 * MiB))

The policy travels in the route's OpenAPI extension ``x-hammerlock`` (so the published spec shows
every route's permission) and is read back by :class:`hammerlock.api.route.HammerlockRoute`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hammerlock.security.permissions import Permission

__all__ = ["BATCH_MAX_BODY_BYTES", "EXTENSION", "Policy", "policy"]

EXTENSION = "x-hammerlock"
BATCH_MAX_BODY_BYTES = 8 * 1024 * 1024  # the most any route may allow


@dataclass(frozen=True, slots=True)
class Policy:
    permission: Permission
    money_moving: bool = False
    max_body_bytes: int | None = None  # None: the configured default (1 MiB)
    # The handler stores its answer in its own transaction (request.state.receipt; ADR 0013)
    # instead of the idempotency store's lease before and completion after.
    receipt_in_transaction: bool = False
    # The handler reads the raw body itself (a gateway's signed webhook): no body model, yet
    # a body is expected — not refused as sent to a route that takes none — in whatever
    # content type the sender uses (Braintree posts a form, Stripe JSON).
    raw_body: bool = False

    @classmethod
    def from_openapi_extra(cls, extra: dict[str, Any] | None) -> Policy | None:
        raw = (extra or {}).get(EXTENSION)
        if raw is None:
            return None
        return cls(
            permission=Permission(raw["permission"]),
            money_moving=bool(raw.get("money_moving", False)),
            max_body_bytes=raw.get("max_body_bytes"),
            receipt_in_transaction=bool(raw.get("receipt_in_transaction", False)),
            raw_body=bool(raw.get("raw_body", False)),
        )


def policy(
    permission: Permission,
    *,
    money_moving: bool = False,
    max_body_bytes: int | None = None,
    receipt_in_transaction: bool = False,
    raw_body: bool = False,
) -> dict[str, Any]:
    if max_body_bytes is not None and not 0 < max_body_bytes <= BATCH_MAX_BODY_BYTES:
        raise ValueError("max_body_bytes must be within (0, 8 MiB]")
    body: dict[str, Any] = {"permission": permission.value, "money_moving": money_moving}
    if max_body_bytes is not None:
        body["max_body_bytes"] = max_body_bytes
    if receipt_in_transaction:
        body["receipt_in_transaction"] = True
    if raw_body:
        body["raw_body"] = True
    extra: dict[str, Any] = {EXTENSION: body}
    if permission is not Permission.PUBLIC:
        extra["security"] = [{"ApiKey": []}]
    return extra

"""The JSON shapes of the internal API, both ways: one codec the vault and its client share.

Gateway values (:class:`Charge`, :class:`Refund`, :class:`Payout`) travel as flat objects with
the dataclass field names; enums as their values. Audit events travel as schema v1
(:meth:`AuditEvent.to_json_object`) plus ``ts_us``, so the API rebuilds the identical event and
hashes the identical canonical bytes. No card number has a field here.
"""

from __future__ import annotations

from typing import Any

from hammerlock.audit.model import Actor, AuditEvent, Origin, Outcome
from hammerlock.payments.gateways.base import CardSummary, Charge, ChargeStatus, Payout, Refund

__all__ = [
    "charge_from_json",
    "charge_to_json",
    "event_from_json",
    "event_to_json",
    "payout_from_json",
    "payout_to_json",
    "refund_from_json",
    "refund_to_json",
]


def charge_to_json(charge: Charge) -> dict[str, Any]:
    card = charge.card
    return {
        "gateway": charge.gateway,
        "gateway_key": charge.gateway_key,
        "charge_id": charge.charge_id,
        "status": charge.status.value,
        "amount": charge.amount,
        "currency": charge.currency,
        "amount_captured": charge.amount_captured,
        "amount_refunded": charge.amount_refunded,
        "error_code": charge.error_code,
        "decline_code": charge.decline_code,
        "message": charge.message,
        "next_action_url": charge.next_action_url,
        "card": None
        if card is None
        else {
            "brand": card.brand,
            "last4": card.last4,
            "country": card.country,
            "fingerprint": card.fingerprint,
        },
    }


def charge_from_json(body: dict[str, Any]) -> Charge:
    card = body.get("card")
    return Charge(
        gateway=str(body["gateway"]),
        gateway_key=str(body["gateway_key"]),
        charge_id=str(body["charge_id"]),
        status=ChargeStatus(body["status"]),
        amount=int(body["amount"]),
        currency=str(body["currency"]),
        amount_captured=int(body.get("amount_captured", 0)),
        amount_refunded=int(body.get("amount_refunded", 0)),
        error_code=body.get("error_code"),
        decline_code=body.get("decline_code"),
        message=body.get("message"),
        next_action_url=body.get("next_action_url"),
        card=None if card is None else CardSummary(**card),
    )


def refund_to_json(refund: Refund) -> dict[str, Any]:
    return {
        "gateway": refund.gateway,
        "refund_key": refund.refund_key,
        "refund_id": refund.refund_id,
        "charge_id": refund.charge_id,
        "amount": refund.amount,
        "currency": refund.currency,
        "status": refund.status,
    }


def refund_from_json(body: dict[str, Any]) -> Refund:
    return Refund(
        gateway=str(body["gateway"]),
        refund_key=str(body["refund_key"]),
        refund_id=str(body["refund_id"]),
        charge_id=str(body["charge_id"]),
        amount=int(body["amount"]),
        currency=str(body["currency"]),
        status=str(body["status"]),
    )


def payout_to_json(payout: Payout) -> dict[str, Any]:
    return {
        "gateway": payout.gateway,
        "payout_key": payout.payout_key,
        "payout_id": payout.payout_id,
        "amount": payout.amount,
        "currency": payout.currency,
        "status": payout.status,
    }


def payout_from_json(body: dict[str, Any]) -> Payout:
    return Payout(
        gateway=str(body["gateway"]),
        payout_key=str(body["payout_key"]),
        payout_id=str(body["payout_id"]),
        amount=int(body["amount"]),
        currency=str(body["currency"]),
        status=str(body["status"]),
    )


def event_to_json(event: AuditEvent) -> dict[str, Any]:
    return {**event.to_json_object(), "ts_us": event.ts_us}


def event_from_json(body: dict[str, Any]) -> AuditEvent:
    actor, origin, resource, outcome = (
        body["actor"],
        body["origin"],
        body["resource"],
        body["outcome"],
    )
    return AuditEvent(
        action=str(body["action"]),
        resource_type=str(resource["type"]),
        resource_id=resource["id"],
        actor=Actor(principal_id=actor["principal_id"], role=actor["role"], key_id=actor["key_id"]),
        origin=Origin(ip=origin["ip"], user_agent=origin["user_agent"], node=origin["node"]),
        ts_us=int(body["ts_us"]),
        outcome=Outcome(outcome["status"]),
        outcome_code=outcome["code"],
        request_id=body["request_id"],
        details=dict(body["details"]),
        event_id=str(body["event_id"]),
    )

"""Roles and what each may do (../DESIGN.md "Who may do what").

Every route declares one :class:`Permission` next to its definition; this table is the only place
that says which role holds it. The role-matrix test checks the table against a matrix written out
by hand, so a change here must be a deliberate one.
"""

from __future__ import annotations

import enum

__all__ = ["ROLE_PERMISSIONS", "STAFF_ROLES", "Permission", "Role", "allows"]


class Role(enum.StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    REVIEWER = "reviewer"
    AUDITOR = "auditor"
    SELLER = "seller"
    BIDDER = "bidder"
    SERVICE = "service"


STAFF_ROLES = frozenset({Role.ADMIN, Role.OPERATOR, Role.REVIEWER, Role.AUDITOR})


class Permission(enum.StrEnum):
    PUBLIC = "public"  # no key needed (health, docs)
    AUTHENTICATED = "authenticated"  # any valid key (whoami)
    KEYS_MANAGE = "keys.manage"
    LEDGER_READ = "ledger.read"
    LEDGER_WRITE = "ledger.write"
    LEDGER_ACCOUNTS_CLOSE = "ledger.accounts.close"
    AUDIT_READ = "audit.read"  # the audit trail, tree heads, proofs, signing keys
    WEBHOOKS_READ = "webhooks.read"  # outbound webhook events and their delivery attempts
    PAYMENTS_READ = "payments.read"  # payment intents and refunds
    PAYMENTS_WRITE = "payments.write"  # create, confirm, capture, cancel payment intents
    REFUNDS_CREATE = "refunds.create"
    REVIEWS_READ = "reviews.read"  # the risk review queue
    REVIEWS_DECIDE = "reviews.decide"  # approve or reject a review (never one's own payment)
    SANDBOX_READ = "sandbox.read"  # the sandbox gateway's charge records (no card data)
    PARTIES_CREATE = "parties.create"  # register bidders and sellers (each gets its own key)
    CARDS_WRITE = "cards.write"  # a bidder's cards on file (a bidder: only its own)
    LOTS_WRITE = "lots.write"  # create and open lots (a seller: only its own)
    LOTS_READ = "lots.read"  # lots and their bids (a seller: its own lots; reserve hidden)
    BIDS_CREATE = "bids.create"  # bids, buy-now, deposits (a bidder: as itself)
    LOTS_CLOSE = "lots.close"  # close a lot now
    BIDS_RETRACT = "bids.retract"  # retract a bid (admin only, with a reason)
    ORDERS_READ = "orders.read"  # orders (a bidder or seller: only its own)
    ORDERS_BUY = "orders.buy"  # pay, confirm delivery, accept, dispute (a bidder: own orders)
    ORDERS_SHIP = "orders.ship"  # mark shipped (a seller: own orders)
    ORDERS_RESOLVE = "orders.resolve"  # resolve a dispute: refund and/or release
    PAYOUT_DESTINATIONS_WRITE = "payouts.destination"  # a seller's (a seller: its own)


_ALL = frozenset(Permission) - {Permission.PUBLIC}
_ANY_KEY = frozenset({Permission.AUTHENTICATED})

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: _ALL,
    Role.OPERATOR: _ANY_KEY
    | {
        Permission.LEDGER_READ,
        Permission.LEDGER_WRITE,
        Permission.LEDGER_ACCOUNTS_CLOSE,
        Permission.WEBHOOKS_READ,
        Permission.PAYMENTS_READ,
        Permission.REFUNDS_CREATE,
        Permission.REVIEWS_READ,
        Permission.PARTIES_CREATE,
        Permission.CARDS_WRITE,
        Permission.LOTS_WRITE,
        Permission.LOTS_READ,
        Permission.LOTS_CLOSE,
        Permission.ORDERS_READ,
        Permission.ORDERS_RESOLVE,
        Permission.PAYOUT_DESTINATIONS_WRITE,
    },
    Role.REVIEWER: _ANY_KEY
    | {Permission.PAYMENTS_READ, Permission.REVIEWS_READ, Permission.REVIEWS_DECIDE},
    Role.AUDITOR: _ANY_KEY | {Permission.LEDGER_READ, Permission.AUDIT_READ},
    Role.SELLER: _ANY_KEY
    | {
        Permission.LOTS_WRITE,
        Permission.LOTS_READ,
        Permission.ORDERS_READ,
        Permission.ORDERS_SHIP,
        Permission.PAYOUT_DESTINATIONS_WRITE,
    },
    Role.BIDDER: _ANY_KEY
    | {
        Permission.CARDS_WRITE,
        Permission.LOTS_READ,
        Permission.BIDS_CREATE,
        Permission.ORDERS_READ,
        Permission.ORDERS_BUY,
    },
    Role.SERVICE: _ANY_KEY
    | {
        Permission.LEDGER_READ,
        Permission.LEDGER_WRITE,
        Permission.PAYMENTS_READ,
        Permission.PAYMENTS_WRITE,
        Permission.REFUNDS_CREATE,
        Permission.PARTIES_CREATE,
        Permission.CARDS_WRITE,
        Permission.LOTS_WRITE,
        Permission.LOTS_READ,
        Permission.BIDS_CREATE,
        Permission.ORDERS_READ,
        Permission.ORDERS_BUY,
        Permission.ORDERS_SHIP,
        Permission.PAYOUT_DESTINATIONS_WRITE,
    },
}


def allows(role: Role, permission: Permission) -> bool:
    return permission is Permission.PUBLIC or permission in ROLE_PERMISSIONS[role]

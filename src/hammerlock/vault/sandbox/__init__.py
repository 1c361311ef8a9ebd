"""The ``sandbox`` card gateway: a simulated bank that lives inside the vault process.

It needs the card number to behave like a bank (Stripe's test cards), so only the vault, which
detokenizes, calls it. Public surface:

- :class:`SandboxGateway` — the :class:`~hammerlock.payments.gateways.base.Gateway` adapter,
  plus ``list_charges``, ``write_settlement``, ``flush_webhooks`` and the 3-D Secure challenge;
- :func:`build_challenge_router` — the public ``/v1/3ds/{token}`` routes for the vault's app;
- :func:`parse_faults` — ``HAMMERLOCK_SANDBOX_FAULTS``;
- :func:`write_settlement` — the daily settlement CSV, callable without a running gateway.

docs/payments.md ("Sandbox gateway") documents test cards, faults, webhooks and settlement files.
"""

from hammerlock.vault.sandbox.challenge import build_challenge_router
from hammerlock.vault.sandbox.errors import (
    ChallengeClosed,
    ChallengeError,
    ChallengeExpired,
    ChallengeNotFound,
)
from hammerlock.vault.sandbox.faults import Fault, FaultName, FaultPlan, Faults, parse_faults
from hammerlock.vault.sandbox.gateway import (
    CRASH_EXIT_CODE,
    ChallengeResult,
    ChallengeView,
    SandboxGateway,
    verify_webhook,
)
from hammerlock.vault.sandbox.settlement import settlement_path, write_settlement

__all__ = [
    "CRASH_EXIT_CODE",
    "ChallengeClosed",
    "ChallengeError",
    "ChallengeExpired",
    "ChallengeNotFound",
    "ChallengeResult",
    "ChallengeView",
    "Fault",
    "FaultName",
    "FaultPlan",
    "Faults",
    "SandboxGateway",
    "build_challenge_router",
    "parse_faults",
    "settlement_path",
    "verify_webhook",
    "write_settlement",
]

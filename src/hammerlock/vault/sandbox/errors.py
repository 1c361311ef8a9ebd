"""Errors of the sandbox's 3-D Secure challenge (gateway calls raise the protocol's errors).

Error tree::

    ChallengeError (code)
     ├── ChallengeNotFound   challenge_not_found   no challenge has this token      → 404
     ├── ChallengeExpired    challenge_expired     past its deadline (now declined) → 410
     └── ChallengeClosed     challenge_closed      the charge was voided first      → 409
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["ChallengeClosed", "ChallengeError", "ChallengeExpired", "ChallengeNotFound"]


class ChallengeError(Exception):
    code: ClassVar[str] = "challenge_error"
    status: ClassVar[int] = 400


class ChallengeNotFound(ChallengeError):
    code = "challenge_not_found"
    status = 404


class ChallengeExpired(ChallengeError):
    code = "challenge_expired"
    status = 410


class ChallengeClosed(ChallengeError):
    code = "challenge_closed"
    status = 409

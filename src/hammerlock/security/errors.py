"""Security errors.

DomainError
 └── SecurityError
      ├── Unauthenticated   (401 unauthenticated: no key, unknown, revoked or expired key)
      ├── Forbidden         (403 forbidden: the role lacks the route's permission)
      ├── KeyNotFound       (404 key_not_found)
      └── InvalidRole       (422 invalid_role)
"""

from __future__ import annotations

from hammerlock.errors import DomainError

__all__ = ["Forbidden", "InvalidRole", "KeyNotFound", "SecurityError", "Unauthenticated"]


class SecurityError(DomainError):
    code = "security_error"


class Unauthenticated(SecurityError):
    code = "unauthenticated"
    title = "Authentication required"


class Forbidden(SecurityError):
    code = "forbidden"
    title = "Not allowed for this key's role"


class KeyNotFound(SecurityError):
    code = "key_not_found"
    title = "No such API key"


class InvalidRole(SecurityError):
    code = "invalid_role"
    title = "Unknown role"

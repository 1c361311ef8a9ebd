"""Webhook errors: what a reader of the webhook log asked for that it does not hold.

DomainError
 └── WebhookError
      └── WebhookEventNotFound   (404 not_found: no event with that id)
"""

from __future__ import annotations

from hammerlock.errors import DomainError

__all__ = ["WebhookError", "WebhookEventNotFound"]


class WebhookError(DomainError):
    code = "webhook_error"


class WebhookEventNotFound(WebhookError):
    code = "not_found"
    title = "No such webhook event"

"""The HTTP API: the app factory, the error model, idempotency and the request path."""

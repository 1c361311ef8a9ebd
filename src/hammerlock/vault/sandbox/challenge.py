"""The sandbox's 3-D Secure challenge: public routes on the vault, ``/v1/3ds/{token}``.

* ``GET`` serves a small self-contained page (amount, merchant, Approve / Fail): no scripts, no
  external assets, everything escaped, a strict Content-Security-Policy, ``no-store`` and
  ``no-referrer`` (the token is in the URL).
* ``POST`` with a form (``result=pass|fail``, what the page sends) completes it and redirects
  (303) to the charge's ``return_url`` with ``?three_d_secure=passed|failed&gateway_key=…``
  appended (a page with the outcome when there is no ``return_url``).
* ``POST`` with JSON ``{"result": "pass" | "fail"}`` completes it for programs: 200
  ``{"result": "passed" | "failed", "status", "charge_id", "gateway_key"}``.

No API key, no Idempotency-Key: the unguessable token is the credential, and completing twice
answers the first outcome. Unknown token 404, expired 410 (the charge is then declined), voided
first 409; JSON errors are ``{"code", "detail"}``.

Self-contained on purpose: plain ``APIRoute``s, no dependency on the API's route class or error
model, so the vault mounts it as it is.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from typing import Final
from urllib.parse import parse_qs

import httpx
import orjson
from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute

from hammerlock.money import Money
from hammerlock.vault.sandbox.errors import ChallengeError, ChallengeNotFound
from hammerlock.vault.sandbox.gateway import ChallengeView, SandboxGateway

__all__ = ["build_challenge_router"]

BODY_MAX_BYTES: Final = 4_096
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_-]{16,128}")
_NETLOC_RE: Final = re.compile(r"[A-Za-z0-9.:\[\]-]{1,300}")
_RESULTS: Final = {"pass": True, "fail": False}

_CSS: Final = (
    "body{font-family:system-ui,sans-serif;background:#f4f5f7;margin:0;padding:2rem}"
    "main{max-width:26rem;margin:auto;background:#fff;border-radius:8px;padding:1.5rem;"
    "box-shadow:0 1px 4px rgba(0,0,0,.15)}h1{font-size:1.25rem;margin-top:0}"
    "dt{color:#555;font-size:.85rem}dd{margin:0 0 .75rem 0;font-size:1.1rem}"
    ".note{color:#8a5a00;font-size:.85rem}form{display:flex;gap:.75rem}"
    "button{flex:1;font-size:1rem;padding:.6rem;border-radius:6px;border:1px solid #888;"
    "cursor:pointer}button[value=pass]{background:#1f7a3a;color:#fff;border-color:#1f7a3a}"
    "button[value=fail]{background:#fff;color:#a11}"
)
_CSS_HASH: Final = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()


def _security_headers(return_url: str | None = None) -> dict[str, str]:
    form_action = "'self'"
    origin = _origin(return_url)
    if origin is not None:
        form_action += f" {origin}"  # browsers apply form-action to the redirect after a POST
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; form-action {form_action}; "
            "frame-ancestors 'none'; base-uri 'none'"
        ),
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
    }


def _origin(url: str | None) -> str | None:
    if url is None:
        return None
    parsed = httpx.URL(url)
    netloc = parsed.netloc.decode("ascii", "replace")
    if parsed.scheme not in ("http", "https") or _NETLOC_RE.fullmatch(netloc) is None:
        return None
    return f"{parsed.scheme}://{netloc}"


def _page(title: str, body: str, *, status: int = 200, return_url: str | None = None) -> Response:
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><main><h1>{html.escape(title)}</h1>{body}"
        '<p class="note">Sandbox bank: no real card network is involved.</p></main></body></html>'
    )
    return Response(
        document,
        status_code=status,
        media_type="text/html; charset=utf-8",
        headers=_security_headers(return_url),
    )


def _challenge_page(view: ChallengeView) -> Response:
    amount = Money(view.amount, view.currency).format()
    rows = [("Merchant", view.merchant), ("Amount", f"{amount} {view.currency}")]
    if view.description:
        rows.append(("Description", view.description))
    details = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in rows)
    if view.expired:
        return _page("Challenge expired", f"<dl>{details}</dl>", status=410)
    if view.outcome is not None:
        text = f"<dl>{details}</dl><p>Already completed: {html.escape(view.outcome)}.</p>"
        return _page("3-D Secure", text)
    form = (
        '<form method="post">'
        '<button type="submit" name="result" value="pass">Approve</button>'
        '<button type="submit" name="result" value="fail">Fail</button></form>'
    )
    body = f"<p>Confirm this purchase with your bank.</p><dl>{details}</dl>{form}"
    return _page("3-D Secure authentication", body, return_url=view.return_url)


def _json(status: int, content: dict[str, object]) -> Response:
    return Response(
        orjson.dumps(content),
        status_code=status,
        media_type="application/json",
        headers=_security_headers(),
    )


def _error(exc: ChallengeError, *, as_json: bool) -> Response:
    detail = {
        "challenge_not_found": "No 3-D Secure challenge has this address.",
        "challenge_expired": "This 3-D Secure challenge has expired; the payment was declined.",
        "challenge_closed": "This payment was canceled before the challenge was completed.",
    }.get(exc.code, "The challenge cannot be completed.")
    if as_json:
        return _json(exc.status, {"code": exc.code, "detail": detail})
    return _page("3-D Secure", f"<p>{html.escape(detail)}</p>", status=exc.status)


async def _read_body(request: Request) -> bytes | None:
    """The body, or ``None`` when it is longer than :data:`BODY_MAX_BYTES`."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > BODY_MAX_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _json_result(body: bytes) -> bool | None:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict) or set(payload) != {"result"}:
        return None
    result = payload["result"]
    return _RESULTS.get(result) if isinstance(result, str) else None


def _form_result(body: bytes) -> bool | None:
    try:
        fields = parse_qs(body.decode("ascii"), strict_parsing=True, max_num_fields=4)
    except (UnicodeDecodeError, ValueError):
        return None
    values = fields.get("result", [])
    return _RESULTS.get(values[0]) if len(values) == 1 else None


def _redirect_target(return_url: str, outcome: str, gateway_key: str) -> str:
    url = httpx.URL(return_url).copy_merge_params(
        {"three_d_secure": outcome, "gateway_key": gateway_key}
    )
    return str(url)


def build_challenge_router(gateway: SandboxGateway) -> APIRouter:
    """Routes ``GET`` and ``POST /v1/3ds/{token}`` for ``gateway``'s challenges."""
    router = APIRouter(prefix="/v1/3ds", route_class=APIRoute, include_in_schema=False)

    @router.get("/{token}")
    async def show_challenge(token: str) -> Response:
        try:
            if _TOKEN_RE.fullmatch(token) is None:
                raise ChallengeNotFound
            view = await gateway.challenge(token)
        except ChallengeError as exc:
            return _error(exc, as_json=False)
        return _challenge_page(view)

    @router.post("/{token}")
    async def complete_challenge(token: str, request: Request) -> Response:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        as_json = media_type == "application/json"
        if not as_json and media_type != "application/x-www-form-urlencoded":
            return _json(415, {"code": "unsupported_media_type", "detail": "Send JSON or a form."})
        body = await _read_body(request)
        if body is None:
            return _json(413, {"code": "body_too_large", "detail": "The body is too large."})
        passed = _json_result(body) if as_json else _form_result(body)
        if passed is None:
            detail = 'Send {"result": "pass"} or {"result": "fail"}.'
            return _json(400, {"code": "invalid_result", "detail": detail})
        try:
            if _TOKEN_RE.fullmatch(token) is None:
                raise ChallengeNotFound
            result = await gateway.complete_challenge(token, passed=passed)
        except ChallengeError as exc:
            return _error(exc, as_json=as_json)
        charge = result.charge
        if as_json:
            return _json(
                200,
                {
                    "result": result.outcome,
                    "status": str(charge.status),
                    "charge_id": charge.charge_id,
                    "gateway_key": charge.gateway_key,
                },
            )
        if result.return_url is None:
            return _page("3-D Secure", f"<p>Authentication {html.escape(result.outcome)}.</p>")
        target = _redirect_target(result.return_url, result.outcome, charge.gateway_key)
        headers = {**_security_headers(), "Location": target}
        return Response(status_code=303, headers=headers)

    return router

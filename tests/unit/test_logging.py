"""The log redaction processor and the JSON log configuration."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import structlog

from hammerlock.logs import configure_logging, redact_event

PAN = "4242 4242 4242 4242"
MASKED = "424242******4242"
TRACKING = "1234567812345670"  # passes Luhn; no card brand starts with 1


def redact(**event: Any) -> dict[str, Any]:
    return dict(redact_event(None, "info", dict(event)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (PAN, MASKED),
        ("4242-4242-4242-4242", MASKED),
        ("4242424242424242", MASKED),
        (f"charge failed for card {PAN} (declined)", f"charge failed for card {MASKED} (declined)"),
        (
            "amex 378282246310005 and visa 4111111111111111",
            "amex 378282*****0005 and visa 411111******1111",
        ),
        ("5555555555554444", "555555******4444"),
    ],
)
def test_card_numbers_in_strings_are_masked_to_first6_last4(text: str, expected: str) -> None:
    out = redact(event="payment.failed", note=text)
    assert out["note"] == expected
    assert out["event"] == "payment.failed"


def test_the_event_message_itself_is_masked() -> None:
    assert redact(event=f"saw {PAN}")["event"] == f"saw {MASKED}"


@pytest.mark.parametrize(
    "text",
    [
        TRACKING,  # Luhn-valid tracking number: not a card (no brand prefix)
        "1Z 999 AA1 01 2345 6784",
        "4242424242424241",  # Visa prefix, fails Luhn
        "order 12345, amount 4242",
        "2026-01-01T00:00:00Z",
        "req_0123456789abcdef01234567",
    ],
)
def test_other_numbers_are_left_alone(text: str) -> None:
    assert redact(event="x", ref=text)["ref"] == text


def test_nested_values_are_masked() -> None:
    out = redact(
        event="x",
        request={"body": {"items": [{"note": PAN}, ("t", f"a {PAN}")], "n": 3}, "ok": True},
    )
    assert out["request"] == {
        "body": {"items": [{"note": MASKED}, ["t", f"a {MASKED}"]], "n": 3},
        "ok": True,
    }


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "new_password",
        "secret",
        "client_secret",
        "cvc",
        "cvv",
        "authorization",
        "Authorization",
        "api_key",
        "apiKey",
        "x-api-key",
        "token",
        "access_token",
        "pepper",
        "api_key_pepper",
        "pan",
        "PAN",
        "db_pass",
        "passphrase",
        "card_number",
        "cookie",
        "private_key",
        "signature",
    ],
)
def test_values_under_secret_like_keys_are_dropped(key: str) -> None:
    value = "hl_abcdefghijklmnop_s3cr3t-value"
    out = redact(**{"event": "x", key: value})
    assert out[key] != value
    assert "s3cr3t" not in str(out)
    nested = redact(event="x", ctx={"headers": [{key: value}], "safe": "kept"})
    assert "s3cr3t" not in str(nested)
    assert nested["ctx"]["safe"] == "kept"


@pytest.mark.parametrize(
    "key",
    ["company", "span_id", "expand", "japan_office", "passed", "compass", "path", "duration_ms"],
)
def test_ordinary_keys_are_not_mistaken_for_secrets(key: str) -> None:
    """Matching is on words, not substrings: 'company' holds no PAN, 'passed' no password."""
    assert redact(event="x", **{key: "value"})[key] == "value"
    assert redact(event="x", nested={key: "value"})["nested"][key] == "value"


def test_secret_values_are_dropped_even_when_they_are_not_strings() -> None:
    out = redact(event="x", password=12345678, secret={"a": 1}, cvc=123)
    assert "12345678" not in str(out)
    assert "'a': 1" not in str(out)
    assert "123" not in str(out)


def test_exceptions_are_rendered_masked() -> None:
    out = redact(event="x", error=ValueError(f"bad card {PAN}"))
    assert PAN not in str(out)
    assert MASKED in out["error"]


def test_deep_nesting_is_cut_not_crashed() -> None:
    deep: Any = PAN
    for _ in range(50):
        deep = {"d": deep}
    out = redact(event="x", deep=deep)
    assert PAN not in str(out)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers, root.level = handlers, level
    logging.getLogger("uvicorn.access").disabled = False


def _lines(err: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in err.splitlines() if line.strip()]


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_emits_json_lines_with_the_request_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    log = structlog.get_logger("hammerlock.test")
    log.info("outside.request", card=PAN)
    with structlog.contextvars.bound_contextvars(request_id="req_abc"):
        log.info("inside.request", api_key="hl_secret", n=3)
        log.debug("too.quiet")
    logging.getLogger("uvicorn.error").warning("stdlib %s", PAN)
    lines = _lines(capsys.readouterr().err)
    assert [line["event"] for line in lines] == [
        "outside.request",
        "inside.request",
        f"stdlib {MASKED}",
    ]
    outside, inside, stdlib = lines
    assert "request_id" not in outside
    assert outside["card"] == MASKED
    assert outside["level"] == "info"
    assert outside["timestamp"].endswith("Z")
    assert inside["request_id"] == "req_abc"
    assert inside["n"] == 3
    assert inside["api_key"] != "hl_secret"
    assert stdlib["level"] == "warning"


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_renders_exceptions_masked(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    try:
        raise RuntimeError(f"gateway said card {PAN} was declined")
    except RuntimeError:
        structlog.get_logger().exception("gateway.failed")
    [line] = _lines(capsys.readouterr().err)
    assert "Traceback" in line["exception"]
    assert PAN not in line["exception"]
    assert MASKED in line["exception"]


@pytest.mark.usefixtures("restore_logging")
def test_console_format_is_not_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("warning", "console")
    structlog.get_logger().warning("hello", password="pw-123")
    err = capsys.readouterr().err
    assert "hello" in err
    assert "pw-123" not in err
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(err.splitlines()[0])

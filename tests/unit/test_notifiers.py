"""Notifiers: the webhook's signature (tampering, replay tolerance, rotation), its retries against
``httpx.MockTransport`` and a real local server, the channel's fan-out and drop counting, the log
line."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest
from structlog.testing import capture_logs

from hammerlock.audit.alerts import Alert, Rule, Severity
from hammerlock.audit.notifiers import (
    ALERT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    ChannelNotifier,
    LogNotifier,
    TooManySubscribers,
    WebhookNotifier,
    sign_webhook,
    verify_webhook,
)
from hammerlock.clock import FixedClock

SECRET = b"whsec-test-0123456789abcdef0123"
NOW_S = 1_767_225_600
GOOD = sign_webhook(SECRET, NOW_S, b"{}")


def alert(n: int = 0, severity: Severity = Severity.CRITICAL) -> Alert:
    return Alert(
        Rule.AUTH_FAILURE_BURST,
        severity,
        f"burst {n}",
        (f"evt_{n:024x}",),
        "2026-01-01T00:00:00.000000Z",
        {"n": n},
    )


# --------------------------------------------------------------------------------------------
# Signing and verifying
# --------------------------------------------------------------------------------------------


def test_a_signed_body_verifies() -> None:
    body = b'{"rule":"auth_failure_burst"}'
    signature = sign_webhook(SECRET, NOW_S, body)
    assert signature.startswith("v1=")
    assert len(signature) == 3 + 64
    assert verify_webhook(SECRET, str(NOW_S), body, signature, NOW_S)
    assert verify_webhook(SECRET.decode(), str(NOW_S), body, signature, NOW_S + 1.5)


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b"{}"
    expected = hmac.new(SECRET, f"{NOW_S}.".encode() + body, hashlib.sha256).hexdigest()
    assert sign_webhook(SECRET, NOW_S, body) == f"v1={expected}"


@pytest.mark.parametrize(
    ("timestamp", "body", "signature_of"),
    [
        (str(NOW_S), b'{"rule":"admin_action"}', b'{"rule":"auth_failure_burst"}'),  # body
        (str(NOW_S + 1), b"{}", b"{}"),  # the timestamp moved (signed for NOW_S)
    ],
)
def test_tampering_with_body_or_timestamp_fails(
    timestamp: str, body: bytes, signature_of: bytes
) -> None:
    signature = sign_webhook(SECRET, NOW_S, signature_of)
    assert not verify_webhook(SECRET, timestamp, body, signature, NOW_S)


def test_another_secret_fails() -> None:
    signature = sign_webhook(b"another-secret-0123456789abcdef", NOW_S, b"{}")
    assert not verify_webhook(SECRET, str(NOW_S), b"{}", signature, NOW_S)


@pytest.mark.parametrize(
    ("now_s", "ok"),
    [
        (NOW_S + 300, True),
        (NOW_S - 300, True),  # the sender's clock a little ahead
        (NOW_S + 301, False),  # a replay after the tolerance
        (NOW_S - 301, False),  # a timestamp from the future
    ],
)
def test_timestamps_outside_the_tolerance_are_refused(now_s: int, ok: bool) -> None:
    signature = sign_webhook(SECRET, NOW_S, b"{}")
    assert verify_webhook(SECRET, str(NOW_S), b"{}", signature, now_s) is ok
    assert verify_webhook(SECRET, str(NOW_S), b"{}", signature, now_s, tolerance_s=1_000)


@pytest.mark.parametrize(
    ("timestamp", "signature"),
    [
        ("", GOOD),
        ("-5", GOOD),
        ("1.5e9", GOOD),
        (" 1767225600", GOOD),
        ("١٧٦٧٢٢٥٦٠٠", GOOD),  # Arabic-Indic digits: isdigit() but not ASCII
        ("9" * 40, GOOD),
        (str(NOW_S), ""),
        (str(NOW_S), "v1="),
        (str(NOW_S), "v0=" + "0" * 64),
        (str(NOW_S), "garbage"),
    ],
)
def test_malformed_headers_are_refused(timestamp: str, signature: str) -> None:
    assert not verify_webhook(SECRET, timestamp, b"{}", signature, NOW_S)


def test_a_scheme_other_than_v1_with_the_right_mac_is_refused() -> None:
    mac = sign_webhook(SECRET, NOW_S, b"{}").removeprefix("v1=")
    assert not verify_webhook(SECRET, str(NOW_S), b"{}", f"v2={mac}", NOW_S)


def test_several_signatures_are_accepted_while_a_secret_rotates() -> None:
    old = sign_webhook(b"old-secret-0123456789abcdef0123", NOW_S, b"{}")
    new = sign_webhook(SECRET, NOW_S, b"{}")
    assert verify_webhook(SECRET, str(NOW_S), b"{}", f"{old}, {new}", NOW_S)
    assert verify_webhook(SECRET, str(NOW_S), b"{}", f"{new},{old}", NOW_S)


# --------------------------------------------------------------------------------------------
# Delivery through httpx.MockTransport
# --------------------------------------------------------------------------------------------

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


class Receiver:
    """A webhook receiver as MockTransport: answers from a script, verifies every request."""

    def __init__(self, clock: FixedClock, *answers: int | Exception | float) -> None:
        self.clock = clock
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.verified: list[bool] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = await request.aread()
        self.verified.append(
            verify_webhook(
                SECRET,
                request.headers[TIMESTAMP_HEADER],
                body,
                request.headers[SIGNATURE_HEADER],
                self.clock.now_us() / 1_000_000,
            )
        )
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, float):  # hang for that long
            await asyncio.sleep(answer)
            return httpx.Response(200)
        return httpx.Response(answer, content=b"ok")


def webhook(
    receiver: Receiver, clock: FixedClock, **options: Any
) -> tuple[WebhookNotifier, list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    options.setdefault("backoff_initial_s", 1.0)
    options.setdefault("backoff_max_s", 8.0)
    notifier = WebhookNotifier(
        "https://alerts.example.test/hook",
        SECRET,
        clock=clock,
        client=httpx.AsyncClient(transport=httpx.MockTransport(receiver)),
        rng=random.Random(7),
        sleep=sleep,
        **options,
    )
    return notifier, slept


async def test_an_alert_is_posted_as_signed_json() -> None:
    clock = FixedClock()
    receiver = Receiver(clock, 204)
    notifier, slept = webhook(receiver, clock)
    a = alert()
    assert await notifier.deliver(a)
    [request] = receiver.requests
    assert receiver.verified == [True]
    assert request.method == "POST"
    assert request.url == "https://alerts.example.test/hook"
    assert request.headers["content-type"] == "application/json"
    assert request.headers[ALERT_ID_HEADER] == a.alert_id
    assert request.headers[TIMESTAMP_HEADER] == str(clock.now_us() // 1_000_000)
    assert orjson.loads(request.content) == a.as_json()
    assert slept == []
    assert (notifier.attempts, notifier.delivered, notifier.failed) == (1, 1, 0)
    await notifier.close()


async def test_server_errors_and_transport_errors_are_retried_with_backoff() -> None:
    clock = FixedClock()
    receiver = Receiver(clock, 503, httpx.ConnectError("refused"), 429, 500, 200)
    notifier, slept = webhook(receiver, clock, max_attempts=5)
    assert await notifier.deliver(alert())
    assert len(receiver.requests) == 5
    assert receiver.verified == [True] * 5  # each attempt signed afresh, after the backoff
    stamps = [int(r.headers[TIMESTAMP_HEADER]) for r in receiver.requests]
    assert stamps == sorted(stamps)
    assert stamps[-1] > stamps[0]
    assert {r.headers[ALERT_ID_HEADER] for r in receiver.requests} == {alert().alert_id}
    # Exponential with jitter: attempt n waits within [base/2, base], base = 1, 2, 4, 8 s.
    for n, pause in enumerate(slept, 1):
        base = min(8.0, 2.0 ** (n - 1))
        assert base / 2 <= pause <= base
    assert len(set(slept)) == len(slept)
    await notifier.close()


async def test_the_backoff_is_capped() -> None:
    notifier, _ = webhook(Receiver(FixedClock()), FixedClock(), backoff_max_s=3.0)
    assert all(notifier.backoff_s(n) <= 3.0 for n in range(1, 20))
    assert notifier.backoff_s(19) >= 1.5


async def test_attempts_are_bounded_and_the_final_failure_is_logged_not_raised() -> None:
    clock = FixedClock()
    receiver = Receiver(clock, *[502] * 10)
    notifier, slept = webhook(receiver, clock, max_attempts=3)
    with capture_logs() as logs:
        await notifier.notify(alert())  # never raises
    assert len(receiver.requests) == 3
    assert len(slept) == 2
    assert (notifier.delivered, notifier.failed) == (0, 1)
    [failed] = [e for e in logs if e["event"] == "audit.alert_webhook_failed"]
    assert failed["log_level"] == "error"
    assert (failed["attempts"], failed["status"]) == (3, 502)
    assert failed["host"] == "alerts.example.test"
    assert SECRET.decode() not in repr(logs)
    await notifier.close()


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
async def test_client_errors_are_final(status: int) -> None:
    clock = FixedClock()
    receiver = Receiver(clock, status)
    notifier, slept = webhook(receiver, clock)
    assert not await notifier.deliver(alert())
    assert len(receiver.requests) == 1
    assert slept == []
    await notifier.close()


async def test_each_attempt_has_its_own_timeout() -> None:
    clock = FixedClock()
    receiver = Receiver(clock, 5.0, 5.0, 200)  # the first two hang
    notifier, _ = webhook(receiver, clock, timeout_s=0.05)
    started = asyncio.get_running_loop().time()
    assert await notifier.deliver(alert())
    assert asyncio.get_running_loop().time() - started < 2.0
    assert len(receiver.requests) == 3
    await notifier.close()


async def test_an_unexpected_error_is_logged_not_raised() -> None:
    clock = FixedClock()
    receiver = Receiver(clock, RuntimeError("bug in a transport"))
    notifier, _ = webhook(receiver, clock)
    with capture_logs() as logs:
        await notifier.notify(alert())
    assert notifier.failed == 1
    assert [e["event"] for e in logs] == ["audit.alert_webhook_error"]
    await notifier.close()


async def test_the_webhook_never_shows_its_secret_or_url_credentials() -> None:
    notifier = WebhookNotifier(
        "https://user:pw@alerts.example.test/hook?token=t0ps3cret", SECRET, clock=FixedClock()
    )
    shown = repr(notifier) + str(notifier)
    assert "alerts.example.test" in shown
    for secret in (SECRET.decode(), "t0ps3cret", "pw"):
        assert secret not in shown
    await notifier.close()


@pytest.mark.parametrize(
    ("url", "secret", "options"),
    [
        ("ftp://alerts.example.test/", SECRET, {}),
        ("/relative", SECRET, {}),
        ("https://alerts.example.test/", b"short", {}),
        ("https://alerts.example.test/", SECRET, {"max_attempts": 0}),
        ("https://alerts.example.test/", SECRET, {"max_attempts": 100}),
        ("https://alerts.example.test/", SECRET, {"timeout_s": 0}),
        ("https://alerts.example.test/", SECRET, {"backoff_initial_s": 5, "backoff_max_s": 1}),
    ],
)
def test_the_webhook_refuses_bad_settings(url: str, secret: bytes, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        WebhookNotifier(url, secret, clock=FixedClock(), **options)


# --------------------------------------------------------------------------------------------
# Delivery: a real server on 127.0.0.1
# --------------------------------------------------------------------------------------------


async def test_retries_against_a_real_local_server() -> None:
    seen: list[tuple[dict[str, str], bytes]] = []
    statuses = [500, 200]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)
        }
        body = await reader.readexactly(int(headers["content-length"]))
        seen.append((headers, body))
        status = statuses.pop(0)
        writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clock = FixedClock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    notifier = WebhookNotifier(
        f"http://127.0.0.1:{port}/alerts", SECRET, clock=clock, sleep=sleep, timeout_s=5.0
    )
    try:
        async with server:
            assert await notifier.deliver(alert(3))
    finally:
        await notifier.close()
    assert len(seen) == 2
    assert len(slept) == 1
    headers, body = seen[-1]
    assert orjson.loads(body)["summary"] == "burst 3"
    assert verify_webhook(
        SECRET,
        headers[TIMESTAMP_HEADER.lower()],
        body,
        headers[SIGNATURE_HEADER.lower()],
        clock.now_us() / 1_000_000,
    )


# --------------------------------------------------------------------------------------------
# Channel
# --------------------------------------------------------------------------------------------


async def test_every_subscriber_gets_every_alert_in_order() -> None:
    channel = ChannelNotifier()
    first, second = channel.subscribe(), channel.subscribe()
    for n in range(5):
        await channel.notify(alert(n))
    got_first = [first.get_nowait() for _ in range(5)]
    assert [a.summary for a in got_first if a] == [f"burst {n}" for n in range(5)]
    await channel.close()
    assert [a.summary async for a in second] == [f"burst {n}" for n in range(5)]
    assert channel.published == 5


async def test_a_slow_subscriber_drops_its_oldest_and_counts_them() -> None:
    channel = ChannelNotifier(queue_size=3)
    slow, fast = channel.subscribe(), channel.subscribe()
    got: list[str] = []

    async def read_fast() -> None:
        async for a in fast:
            got.append(a.summary)

    reader = asyncio.create_task(read_fast())
    for n in range(10):
        await channel.notify(alert(n))  # returns at once: nobody reads ``slow``
        await asyncio.sleep(0)
    assert len(slow) == 3
    assert slow.dropped == 7
    assert channel.dropped == 7
    await channel.close()
    await asyncio.wait_for(reader, timeout=2)
    assert got == [f"burst {n}" for n in range(10)]
    assert fast.dropped == 0
    assert [a.summary async for a in slow] == ["burst 7", "burst 8", "burst 9"]


async def test_publishing_never_waits_for_a_subscriber() -> None:
    channel = ChannelNotifier(queue_size=2)
    channel.subscribe()
    started = asyncio.get_running_loop().time()
    for n in range(10_000):
        await asyncio.wait_for(channel.notify(alert(n)), timeout=1)
    assert asyncio.get_running_loop().time() - started < 5
    assert channel.dropped == 9_998


async def test_a_subscriber_waits_for_the_next_alert() -> None:
    channel = ChannelNotifier()
    sub = channel.subscribe()
    waiting = asyncio.create_task(anext(sub))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await channel.notify(alert(1))
    assert (await asyncio.wait_for(waiting, timeout=1)).summary == "burst 1"


async def test_subscriptions_end_and_are_bounded() -> None:
    channel = ChannelNotifier(max_subscribers=2)
    async with channel.subscribe() as sub:
        channel.subscribe()
        with pytest.raises(TooManySubscribers) as full:
            channel.subscribe()
        assert full.value.code == "channel_full"
        assert channel.subscribers == 2
    assert sub.closed
    assert channel.subscribers == 1
    await channel.notify(alert())
    assert len(sub) == 0  # an ended subscription receives nothing more
    channel.subscribe()  # room again


# --------------------------------------------------------------------------------------------
# Log
# --------------------------------------------------------------------------------------------


class RecordingLogger:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.lines.append(("info", event, kw))

    def warning(self, event: str, **kw: Any) -> None:
        self.lines.append(("warning", event, kw))

    def critical(self, event: str, **kw: Any) -> None:
        self.lines.append(("critical", event, kw))


@pytest.mark.parametrize("severity", list(Severity))
async def test_the_log_line_carries_rule_severity_and_summary(severity: Severity) -> None:
    logger = RecordingLogger()
    a = alert(2, severity)
    await LogNotifier(logger).notify(a)
    [(level, event, fields)] = logger.lines
    assert (level, event) == (severity.value, "audit.alert")
    assert fields["rule"] == "auth_failure_burst"
    assert fields["severity"] == severity.value
    assert fields["summary"] == "burst 2"
    assert fields["alert_id"] == a.alert_id
    assert fields["event_ids"] == list(a.event_ids)


async def test_the_default_log_notifier_writes_through_structlog() -> None:
    notifier = LogNotifier()
    with capture_logs() as logs:
        await notifier.notify(alert(4))
    await notifier.close()
    [record] = logs
    assert (record["event"], record["log_level"]) == ("audit.alert", "critical")
    assert record["rule"] == "auth_failure_burst"
    assert record["summary"] == "burst 4"

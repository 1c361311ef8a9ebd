"""Alert rules over the audit event stream (PCI DSS 10.4.1.1 automated review, 10.7.2 failures
of critical security controls). No I/O, no clock of its own: pure and deterministic.

:class:`AlertEngine` takes audit events as relayed (``RelayedEvent.payload()`` parsed: the
schema-v1 object with ``seq`` and ``leaf_hash``) in ``seq`` order and returns :class:`Alert`
values; :mod:`hammerlock.audit.notifiers` delivers them, :mod:`hammerlock.audit.sinks.alerts`
drives the engine from the relay. Feeding the same events in any split into batches gives the
same alerts.

Time. Windows run on the events' own ``ts``, made monotonic: an event's time is the latest
``ts`` seen so far if its own is earlier (the log is in commit order and ``ts`` is taken inside
the transaction, so it can lag by a transaction's length; clamping keeps the windows sorted and
only ever counts an event as *later*, never drops it). The two rules that are about time passing
with no event — a lagging sink and the dead-man's switch — take ``now_us`` from the caller's
injected clock.

At least once. The relay may deliver an event again; an event whose ``seq`` is not above the
highest seen, or whose ``event_id`` is among the last ``dedup_window`` seen, is ignored.

Rules (:class:`Rule`; the defaults are :class:`AlertRules`'s):

==================== ======== ==============================================================
rule                 severity fires on
==================== ======== ==============================================================
admin_action         warning  any event by an ``admin`` actor with outcome ``success``
auth_failure_burst   critical 5 ``auth.failure`` from one ``origin.ip`` within 300 s
                              (sliding window; once per burst, re-armed once a whole window
                              passes with no failure from that origin)
card_data_burst      critical ``vault.tokenize*`` / ``vault.detokenize*`` by one actor: more
                              than 100 within 60 s (once per burst, re-armed likewise)
admin_route_denied   critical ``auth.denied`` on a route under ``/v1/keys`` or ``/v1/admin``,
                              or whose ``details.permission`` is an admin-only permission
security_change      warning  ``keys.*``, ``roles.*``, ``config.*`` with outcome ``success``
                              (reads — last segment ``read``, ``list``, ``get`` — excluded)
audit_verify_failed  critical ``audit.verify`` with outcome ``failure``
audit_tamper         critical ``audit.tamper_attempt`` (a refused UPDATE/DELETE/TRUNCATE of an
                              append-only audit table) or ``audit.guard_missing`` (an
                              append-only trigger dropped or disabled): PCI DSS 10.3.4
sink_lagging         warning  :meth:`AlertEngine.lag`: a sink's lag above its threshold
heartbeat_missing    critical :meth:`AlertEngine.check_heartbeat`: no event for over 120 s
event_unreadable     critical :meth:`AlertEngine.unreadable`: a relayed event did not parse
webhook_given_up     warning  ``webhook.delivery_failed``: an outbound webhook was retried for
                              its whole maximum age (3 days) without a 2xx
==================== ======== ==============================================================

The rules are independent: an admin creating a key raises both ``admin_action`` and
``security_change`` (PCI 10.2.1.2 and 10.2.1.7 are separate requirements); disable either with
``AlertRules(disabled=...)``.

Dead-man's switch: *any* event counts as a sign of life by default (``heartbeat_action=None``),
because what must not go quiet is the whole path commit → sequencer → relay → engine, and the
audit subsystem's ``audit.heartbeat`` event keeps that path busy when the business is idle.
Set ``heartbeat_action="audit.heartbeat"`` to count only those. The silence is measured from
the latest event time, or from the first check if that is later (so a fresh engine does not
alert before it had a chance to see anything); it alerts once per silence and re-arms on the
next qualifying event.

Bounded state: the burst rules track at most ``max_tracked`` keys each (origins, actors),
evicting the least recently seen (an evicted key starts afresh: a burst spread over more than
``max_tracked`` other keys may alert again); each key holds at most its rule's limit of times.
The dedup memory holds ``dedup_window`` event ids. Strings copied from events into an alert are
cut to 200 characters; an alert names at most 20 event ids (the most recent).
"""

from __future__ import annotations

import enum
import hashlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from hammerlock.clock import format_rfc3339, to_us

__all__ = [
    "MAX_ALERT_EVENT_IDS",
    "MAX_ALERT_TEXT",
    "Alert",
    "AlertEngine",
    "AlertRules",
    "Rule",
    "Severity",
]

MAX_ALERT_EVENT_IDS = 20
MAX_ALERT_TEXT = 200
_US = 1_000_000
_MAX_LIMIT = 10_000  # a burst rule's limit bounds the times kept per key
_READ_VERBS = frozenset({"read", "list", "get"})


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class Rule(enum.StrEnum):
    """Stable rule codes: receivers route and silence alerts by them."""

    ADMIN_ACTION = "admin_action"
    AUTH_FAILURE_BURST = "auth_failure_burst"
    CARD_DATA_BURST = "card_data_burst"
    ADMIN_ROUTE_DENIED = "admin_route_denied"
    SECURITY_CHANGE = "security_change"
    AUDIT_VERIFY_FAILED = "audit_verify_failed"
    AUDIT_TAMPER = "audit_tamper"
    SINK_LAGGING = "sink_lagging"
    HEARTBEAT_MISSING = "heartbeat_missing"
    EVENT_UNREADABLE = "event_unreadable"
    WEBHOOK_GIVEN_UP = "webhook_given_up"


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert. ``ts`` is RFC 3339 UTC: the triggering event's time, or ``now`` for the
    time-based rules. ``alert_id`` is derived from the rest, so the same alert raised again
    (a restarted engine re-reading an event) carries the same id: receivers deduplicate by it.
    """

    rule: Rule
    severity: Severity
    summary: str
    event_ids: tuple[str, ...]
    ts: str
    details: dict[str, Any] = field(default_factory=dict)
    alert_id: str = field(init=False, default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "alert_id", _alert_id(self))

    def as_json(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "rule": self.rule.value,
            "severity": self.severity.value,
            "summary": self.summary,
            "event_ids": list(self.event_ids),
            "ts": self.ts,
            "details": self.details,
        }


def _alert_id(alert: Alert) -> str:
    material = orjson.dumps(
        [alert.rule.value, alert.ts, list(alert.event_ids), alert.details],
        option=orjson.OPT_SORT_KEYS,
    )
    return "alr_" + hashlib.sha256(material).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class AlertRules:
    """Thresholds and scopes of the rules (all bounded; see the module docstring)."""

    admin_roles: frozenset[str] = frozenset({"admin"})
    auth_failure_limit: int = 5
    auth_failure_window_s: float = 300.0
    card_access_max: int = 100  # an actor doing more than this within the window alerts
    card_access_window_s: float = 60.0
    card_access_actions: tuple[str, ...] = ("vault.detokenize", "vault.tokenize")
    admin_route_prefixes: tuple[str, ...] = ("/v1/keys", "/v1/admin")
    admin_permissions: frozenset[str] = frozenset({"keys.manage"})
    change_namespaces: frozenset[str] = frozenset({"keys", "roles", "config"})
    heartbeat_timeout_s: float = 120.0
    heartbeat_action: str | None = None  # None: any event is a sign of life
    max_tracked: int = 10_000  # keys per burst rule (origins, actors), LRU-evicted
    dedup_window: int = 10_000  # event ids remembered to ignore redeliveries
    disabled: frozenset[Rule] = frozenset()

    def __post_init__(self) -> None:
        if not 1 <= self.auth_failure_limit <= _MAX_LIMIT:
            raise ValueError(f"auth_failure_limit must be 1..{_MAX_LIMIT}")
        if not 0 <= self.card_access_max < _MAX_LIMIT:
            raise ValueError(f"card_access_max must be 0..{_MAX_LIMIT - 1}")
        windows = (self.auth_failure_window_s, self.card_access_window_s, self.heartbeat_timeout_s)
        if not all(0 < w <= 7 * 86_400 for w in windows):
            raise ValueError("windows and the heartbeat timeout must be within (0, 7 days]")
        if not 1 <= self.max_tracked <= 1_000_000 or not 1 <= self.dedup_window <= 1_000_000:
            raise ValueError("max_tracked and dedup_window must be 1..1,000,000")
        if any(not p.startswith("/") or p.endswith("/") for p in self.admin_route_prefixes):
            raise ValueError("admin_route_prefixes must be paths like /v1/keys (no trailing slash)")


# --------------------------------------------------------------------------------------------
# Reading an event (defensively: a malformed field never raises, it just matches nothing)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Event:
    event_id: str
    t_us: int  # monotonic event time (see "Time" above)
    ts: str  # the event's own time, normalised, for the alert
    action: str
    role: str | None
    principal_id: str | None
    key_id: str | None
    status: str | None
    resource_type: str | None
    resource_id: str | None
    ip: str | None
    details: Mapping[str, Any]
    request_id: str | None = None


def _section(event: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = event.get(key)
    return value if isinstance(value, Mapping) else {}


def _text(section: Mapping[str, Any], key: str) -> str | None:
    value = section.get(key)
    return value if isinstance(value, str) else None


def _clip(value: str | None) -> str | None:
    return None if value is None else value[:MAX_ALERT_TEXT]


def _parse_ts(value: Any) -> int | None:
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return None if parsed.tzinfo is None else to_us(parsed)


def _under(path: str, prefix: str) -> bool:
    """``/v1/keys/{key_id}`` is under ``/v1/keys``; ``/v1/keysmith`` is not."""
    return path == prefix or path.startswith(prefix + "/")


def _in_namespace(action: str, names: Iterable[str]) -> bool:
    return any(action == n or action.startswith(n + ".") for n in names)


# --------------------------------------------------------------------------------------------
# Bounded sliding windows
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Window:
    times_us: deque[int]  # the most recent hits, at most ``limit``
    event_ids: deque[str]  # the most recent ids, at most min(limit, MAX_ALERT_EVENT_IDS)
    firing: bool = False


@dataclass(frozen=True, slots=True)
class _Burst:
    count: int
    first_us: int
    event_ids: tuple[str, ...]


class _BurstTracker:
    """Per key: fires once when ``limit`` hits fall within ``window_us`` (sliding), re-arms
    when a hit finds the window empty. At most ``max_keys`` keys, least recently hit evicted."""

    def __init__(self, limit: int, window_us: int, max_keys: int) -> None:
        self._limit = limit
        self._window_us = window_us
        self._max_keys = max_keys
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._windows)

    def hit(self, key: str, t_us: int, event_id: str) -> _Burst | None:
        window = self._windows.get(key)
        if window is None:
            window = _Window(
                deque(maxlen=self._limit), deque(maxlen=min(self._limit, MAX_ALERT_EVENT_IDS))
            )
            self._windows[key] = window
            if len(self._windows) > self._max_keys:
                self._windows.popitem(last=False)
                self.evicted += 1
        else:
            self._windows.move_to_end(key)
        times = window.times_us
        while times and times[0] <= t_us - self._window_us:
            times.popleft()
        if not times:
            window.firing = False  # the window cleared since the last burst: re-armed
        times.append(t_us)
        window.event_ids.append(event_id)
        if len(times) < self._limit or window.firing:
            return None
        window.firing = True
        return _Burst(len(times), times[0], tuple(window.event_ids))


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


class AlertEngine:
    def __init__(self, rules: AlertRules | None = None) -> None:
        self.rules = rules or AlertRules()
        r = self.rules
        self._auth = _BurstTracker(
            r.auth_failure_limit, int(r.auth_failure_window_s * _US), r.max_tracked
        )
        self._card = _BurstTracker(
            r.card_access_max + 1, int(r.card_access_window_s * _US), r.max_tracked
        )
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._last_seq: int | None = None
        self._watermark_us = 0
        self._last_alive_us: int | None = None
        self._baseline_us: int | None = None
        self._silence_alerted = False
        self.duplicates = 0  # redelivered events ignored
        checks: list[tuple[Rule, Callable[[_Event], Alert | None]]] = [
            (Rule.ADMIN_ACTION, self._admin_action),
            (Rule.AUTH_FAILURE_BURST, self._auth_failure_burst),
            (Rule.CARD_DATA_BURST, self._card_data_burst),
            (Rule.ADMIN_ROUTE_DENIED, self._admin_route_denied),
            (Rule.SECURITY_CHANGE, self._security_change),
            (Rule.AUDIT_VERIFY_FAILED, self._audit_verify_failed),
            (Rule.AUDIT_TAMPER, self._audit_tamper),
            (Rule.WEBHOOK_GIVEN_UP, self._webhook_given_up),
        ]
        self._checks = [check for rule, check in checks if rule not in r.disabled]

    def feed(self, events: Iterable[Mapping[str, Any]]) -> list[Alert]:
        """Evaluate ``events`` (in ``seq`` order); the alerts they raise, in order."""
        alerts: list[Alert] = []
        for raw in events:
            event = self._read(raw)
            if event is None:
                continue
            for check in self._checks:
                alert = check(event)
                if alert is not None:
                    alerts.append(alert)
        return alerts

    def lag(self, sink: str, lag: int, threshold: int, now_us: int) -> Alert | None:
        """A sink ``lag`` events behind: a warning when over ``threshold`` (the relay's
        ``on_lag`` hook repeats it at its own pace; this rule keeps no state)."""
        if Rule.SINK_LAGGING in self.rules.disabled or lag <= threshold:
            return None
        name = _clip(sink)
        return Alert(
            Rule.SINK_LAGGING,
            Severity.WARNING,
            f"audit sink {name} is {lag} events behind (threshold {threshold})",
            (),
            format_rfc3339(now_us),
            {"sink": name, "lag": lag, "threshold": threshold},
        )

    def check_heartbeat(self, now_us: int) -> Alert | None:
        """The dead-man's switch: critical once no sign of life came for over the timeout."""
        if Rule.HEARTBEAT_MISSING in self.rules.disabled:
            return None
        if self._baseline_us is None:
            self._baseline_us = now_us
        last_us = max(self._baseline_us, self._last_alive_us or self._baseline_us)
        silent_us = now_us - last_us
        timeout_us = int(self.rules.heartbeat_timeout_s * _US)
        if silent_us <= timeout_us or self._silence_alerted:
            return None
        self._silence_alerted = True
        what = self.rules.heartbeat_action or "audit event"
        last_ts = None if self._last_alive_us is None else format_rfc3339(self._last_alive_us)
        return Alert(
            Rule.HEARTBEAT_MISSING,
            Severity.CRITICAL,
            f"no {what} for {silent_us // _US} s (timeout {self.rules.heartbeat_timeout_s:g} s)",
            (),
            format_rfc3339(now_us),
            {
                "silent_s": silent_us // _US,
                "timeout_s": int(self.rules.heartbeat_timeout_s),
                "last_event_ts": last_ts,
            },
        )

    def unreadable(self, seq: int, event_id: str, now_us: int) -> Alert | None:
        """A relayed event that is not a JSON object: the log is damaged (run ``audit verify``)."""
        if Rule.EVENT_UNREADABLE in self.rules.disabled:
            return None
        return Alert(
            Rule.EVENT_UNREADABLE,
            Severity.CRITICAL,
            f"audit event seq {seq} could not be read (run `hammerlock audit verify`)",
            (_clip(event_id) or "",),
            format_rfc3339(now_us),
            {"seq": seq},
        )

    def stats(self) -> dict[str, int]:
        return {
            "tracked_origins": len(self._auth),
            "tracked_card_actors": len(self._card),
            "evicted": self._auth.evicted + self._card.evicted,
            "remembered_event_ids": len(self._seen),
            "duplicates": self.duplicates,
        }

    # ----------------------------------------------------------------------------------------

    def _read(self, raw: Mapping[str, Any]) -> _Event | None:
        """The event's fields, or ``None`` for a redelivery. Updates time and liveness."""
        event_id = raw.get("event_id")
        event_id = event_id if isinstance(event_id, str) else ""
        if self._is_repeat(raw.get("seq"), event_id):
            self.duplicates += 1
            return None
        own_us = _parse_ts(raw.get("ts"))
        t_us = self._watermark_us if own_us is None else max(own_us, self._watermark_us)
        self._watermark_us = t_us
        action = raw.get("action")
        action = action if isinstance(action, str) else ""
        if self.rules.heartbeat_action in (None, action):
            self._last_alive_us = t_us
            self._silence_alerted = False
        actor = _section(raw, "actor")
        resource = _section(raw, "resource")
        return _Event(
            event_id=event_id[:MAX_ALERT_TEXT],
            t_us=t_us,
            ts=format_rfc3339(t_us if own_us is None else own_us),
            action=action,
            role=_text(actor, "role"),
            principal_id=_text(actor, "principal_id"),
            key_id=_text(actor, "key_id"),
            status=_text(_section(raw, "outcome"), "status"),
            resource_type=_text(resource, "type"),
            resource_id=_text(resource, "id"),
            ip=_text(_section(raw, "origin"), "ip"),
            details=_section(raw, "details"),
            request_id=raw.get("request_id") if isinstance(raw.get("request_id"), str) else None,
        )

    def _is_repeat(self, seq: Any, event_id: str) -> bool:
        if isinstance(seq, int) and not isinstance(seq, bool):
            if self._last_seq is not None and seq <= self._last_seq:
                return True
            self._last_seq = seq
        if not event_id:
            return False
        if event_id in self._seen:
            return True
        self._seen[event_id] = None
        if len(self._seen) > self.rules.dedup_window:
            self._seen.popitem(last=False)
        return False

    # One method per rule ------------------------------------------------------------------

    def _admin_action(self, e: _Event) -> Alert | None:
        if e.role not in self.rules.admin_roles or e.status != "success":
            return None
        who = _clip(e.principal_id or e.key_id) or "unknown"
        return Alert(
            Rule.ADMIN_ACTION,
            Severity.WARNING,
            f"admin {who} performed {_clip(e.action)} on {_resource(e)}",
            (e.event_id,),
            e.ts,
            {
                "action": _clip(e.action),
                "principal_id": _clip(e.principal_id),
                "key_id": _clip(e.key_id),
                "resource_type": _clip(e.resource_type),
                "resource_id": _clip(e.resource_id),
            },
        )

    def _auth_failure_burst(self, e: _Event) -> Alert | None:
        if e.action != "auth.failure":
            return None
        ip = _clip(e.ip)
        burst = self._auth.hit(ip or "", e.t_us, e.event_id)
        if burst is None:
            return None
        window_s = self.rules.auth_failure_window_s
        return Alert(
            Rule.AUTH_FAILURE_BURST,
            Severity.CRITICAL,
            f"{burst.count} authentication failures from {ip or 'an unknown origin'} "
            f"within {window_s:g} s",
            burst.event_ids,
            e.ts,
            {
                "origin_ip": ip,
                "failures": burst.count,
                "window_s": int(window_s),
                "first_ts": format_rfc3339(burst.first_us),
            },
        )

    def _card_data_burst(self, e: _Event) -> Alert | None:
        if not _in_namespace(e.action, self.rules.card_access_actions):
            return None
        actor = _clip(e.principal_id or e.key_id)
        burst = self._card.hit(actor or "", e.t_us, e.event_id)
        if burst is None:
            return None
        window_s = self.rules.card_access_window_s
        return Alert(
            Rule.CARD_DATA_BURST,
            Severity.CRITICAL,
            f"{actor or 'an unknown actor'} accessed card data {burst.count} times within "
            f"{window_s:g} s (more than {self.rules.card_access_max})",
            burst.event_ids,
            e.ts,
            {
                "principal_id": _clip(e.principal_id),
                "key_id": _clip(e.key_id),
                "accesses": burst.count,
                "window_s": int(window_s),
                "first_ts": format_rfc3339(burst.first_us),
            },
        )

    def _admin_route_denied(self, e: _Event) -> Alert | None:
        if e.action != "auth.denied":
            return None
        route = e.resource_id or ""
        permission = _text(e.details, "permission")
        on_admin_route = any(_under(route, p) for p in self.rules.admin_route_prefixes)
        if not on_admin_route and permission not in self.rules.admin_permissions:
            return None
        who = _clip(e.principal_id or e.key_id) or "an unknown principal"
        return Alert(
            Rule.ADMIN_ROUTE_DENIED,
            Severity.CRITICAL,
            f"{who} ({_clip(e.role) or 'no role'}) was denied the admin route {_clip(route)}",
            (e.event_id,),
            e.ts,
            {
                "route": _clip(route),
                "permission": _clip(permission),
                "principal_id": _clip(e.principal_id),
                "role": _clip(e.role),
                "origin_ip": _clip(e.ip),
            },
        )

    def _security_change(self, e: _Event) -> Alert | None:
        namespace, _, rest = e.action.partition(".")
        if namespace not in self.rules.change_namespaces or not rest or e.status != "success":
            return None
        if e.action.rsplit(".", 1)[-1] in _READ_VERBS:
            return None
        return Alert(
            Rule.SECURITY_CHANGE,
            Severity.WARNING,
            f"{_clip(e.action)} on {_resource(e)} by {_clip(e.principal_id) or 'unknown'}",
            (e.event_id,),
            e.ts,
            {
                "action": _clip(e.action),
                "resource_type": _clip(e.resource_type),
                "resource_id": _clip(e.resource_id),
                "principal_id": _clip(e.principal_id),
                "role": _clip(e.role),
            },
        )

    def _webhook_given_up(self, e: _Event) -> Alert | None:
        """The marketplace never received an event after days of retries: someone must look."""
        if e.action != "webhook.delivery_failed":
            return None
        return Alert(
            Rule.WEBHOOK_GIVEN_UP,
            Severity.WARNING,
            f"outbound webhook {_clip(e.resource_id) or ''} given up after its retries",
            (e.event_id,),
            e.ts,
            {"webhook_event": _clip(e.resource_id)},
        )

    def _audit_verify_failed(self, e: _Event) -> Alert | None:
        if e.action != "audit.verify" or e.status != "failure":
            return None
        problems = e.details.get("problems")
        first = _text(e.details, "first_problem")
        return Alert(
            Rule.AUDIT_VERIFY_FAILED,
            Severity.CRITICAL,
            "audit log verification failed" + (f": {_clip(first)}" if first else ""),
            (e.event_id,),
            e.ts,
            {
                "problems": problems if type(problems) is int else None,
                "first_problem": _clip(first),
                "trust_anchor": _clip(_text(e.details, "trust_anchor")),
            },
        )

    def _audit_tamper(self, e: _Event) -> Alert | None:
        if e.action == "audit.tamper_attempt":
            operation = _clip(_text(e.details, "operation")) or "a change"
            summary = f"refused {operation} on {_clip(e.resource_type) or 'an audit table'}"
        elif e.action == "audit.guard_missing":
            summary = "the audit trail's append-only guard is missing or disabled"
        else:
            return None
        missing = e.details.get("missing")
        return Alert(
            Rule.AUDIT_TAMPER,
            Severity.CRITICAL,
            summary,
            (e.event_id,),
            e.ts,
            {
                "action": e.action,
                "table": _clip(e.resource_type),
                "operation": _clip(_text(e.details, "operation")),
                "missing": [_clip(m) for m in missing[:20] if isinstance(m, str)]
                if isinstance(missing, list)
                else None,
                "request_id": _clip(e.request_id),
            },
        )


def _resource(e: _Event) -> str:
    kind = _clip(e.resource_type) or "resource"
    return kind if e.resource_id is None else f"{kind} {_clip(e.resource_id)}"

"""The alert rules engine: each rule fires where it should and stays quiet elsewhere; sliding
windows, re-arming, redeliveries, bounded state, the dead-man's switch; and, by hypothesis, the
same alerts whatever the split of the stream into batches."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hammerlock.audit.alerts import (
    MAX_ALERT_EVENT_IDS,
    Alert,
    AlertEngine,
    AlertRules,
    Rule,
    Severity,
)
from hammerlock.clock import format_rfc3339

T0_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
S = 1_000_000
_ids = itertools.count()


def ev(
    action: str,
    *,
    at_s: float = 0,
    ip: str | None = "198.51.100.7",
    role: str | None = "operator",
    principal: str | None = "prn_1",
    key_id: str | None = "key_1",
    status: str = "success",
    code: str | None = None,
    resource: tuple[str | None, str | None] = ("thing", "t1"),
    details: dict[str, Any] | None = None,
    seq: int | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """An event as relayed (``RelayedEvent.payload()`` parsed)."""
    n = next(_ids)
    event: dict[str, Any] = {
        "event_id": event_id or f"evt_{n:024x}",
        "ts": format_rfc3339(T0_US + int(at_s * S)),
        "actor": {"principal_id": principal, "role": role, "key_id": key_id},
        "action": action,
        "resource": {"type": resource[0], "id": resource[1]},
        "outcome": {"status": status, "code": code},
        "origin": {"ip": ip, "user_agent": "test", "node": "n1"},
        "request_id": None,
        "details": details or {},
        "leaf_hash": "00" * 32,
    }
    if seq is not None:
        event["seq"] = seq
    return event


def auth_failure(at_s: float, ip: str | None = "203.0.113.9") -> dict[str, Any]:
    return ev(
        "auth.failure",
        at_s=at_s,
        ip=ip,
        role=None,
        principal=None,
        key_id=None,
        status="failure",
        code="unauthenticated",
        resource=("route", "/v1/ledger/transfers"),
    )


def denied(route: str, *, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return ev(
        "auth.denied",
        role="seller",
        status="failure",
        code="forbidden",
        resource=("route", route),
        details=details,
    )


def rules_of(alerts: list[Alert]) -> list[str]:
    return [a.rule.value for a in alerts]


def only(rule: Rule, **overrides: Any) -> AlertEngine:
    """An engine with every event rule disabled but ``rule``."""
    others = frozenset(Rule) - {rule}
    return AlertEngine(AlertRules(disabled=others, **overrides))


# --------------------------------------------------------------------------------------------
# Admin actions
# --------------------------------------------------------------------------------------------


def test_any_successful_admin_action_is_a_warning() -> None:
    engine = only(Rule.ADMIN_ACTION)
    event = ev("ledger.accounts.close", role="admin", principal="ops-anna")
    [alert] = engine.feed([event])
    assert (alert.rule, alert.severity) == (Rule.ADMIN_ACTION, Severity.WARNING)
    assert alert.event_ids == (event["event_id"],)
    assert alert.ts == event["ts"]
    assert "ops-anna" in alert.summary
    assert alert.details["action"] == "ledger.accounts.close"


@pytest.mark.parametrize(
    "event",
    [
        ev("ledger.accounts.close", role="operator"),
        ev("ledger.accounts.close", role="admin", status="failure"),
        ev("auth.failure", role=None),
        ev("audit.events.read", role="auditor"),
    ],
)
def test_non_admin_or_failed_actions_raise_no_admin_alert(event: dict[str, Any]) -> None:
    assert only(Rule.ADMIN_ACTION).feed([event]) == []


# --------------------------------------------------------------------------------------------
# Authentication failures from one origin
# --------------------------------------------------------------------------------------------


def test_five_auth_failures_from_one_origin_within_five_minutes_are_critical() -> None:
    engine = only(Rule.AUTH_FAILURE_BURST)
    events = [auth_failure(at_s) for at_s in (0, 60, 120, 180, 240)]
    assert engine.feed(events[:4]) == []
    [alert] = engine.feed(events[4:])
    assert (alert.rule, alert.severity) == (Rule.AUTH_FAILURE_BURST, Severity.CRITICAL)
    assert alert.event_ids == tuple(e["event_id"] for e in events)
    assert alert.details == {
        "origin_ip": "203.0.113.9",
        "failures": 5,
        "window_s": 300,
        "first_ts": events[0]["ts"],
    }
    assert "203.0.113.9" in alert.summary


def test_auth_failures_spread_wider_than_the_window_never_alert() -> None:
    engine = only(Rule.AUTH_FAILURE_BURST)
    # One every 76 s: any 300 s window holds at most 4.
    assert engine.feed([auth_failure(i * 76) for i in range(50)]) == []


def test_the_window_slides_across_minute_boundaries() -> None:
    engine = only(Rule.AUTH_FAILURE_BURST)
    # Three at the end of one five-minute bucket, two at the start of the next: a sliding
    # window sees five within 60 s (fixed buckets would not).
    events = [auth_failure(at_s) for at_s in (250, 270, 290, 305, 310)]
    assert rules_of(engine.feed(events)) == ["auth_failure_burst"]


def test_the_window_boundary_is_exclusive_of_events_a_full_window_old() -> None:
    engine = only(Rule.AUTH_FAILURE_BURST)
    assert engine.feed([auth_failure(at_s) for at_s in (0, 100, 200, 250, 300)]) == []
    assert rules_of(engine.feed([auth_failure(301)])) == ["auth_failure_burst"]


def test_origins_are_counted_apart() -> None:
    engine = only(Rule.AUTH_FAILURE_BURST)
    events = [auth_failure(i, ip=f"203.0.113.{i % 2}") for i in range(8)]
    assert engine.feed(events) == []
    assert rules_of(engine.feed([auth_failure(9, ip="203.0.113.0")])) == ["auth_failure_burst"]


def test_failures_without_an_origin_ip_share_one_bucket() -> None:
    engine = only(Rule.AUTH_FAILURE_BURST)
    [alert] = engine.feed([auth_failure(i, ip=None) for i in range(5)])
    assert alert.details["origin_ip"] is None
    assert "unknown origin" in alert.summary


def test_a_burst_alerts_once_and_re_arms_after_the_window_clears() -> None:
    engine = only(Rule.AUTH_FAILURE_BURST)
    first = engine.feed([auth_failure(i * 10) for i in range(30)])  # 0..290 s: one burst
    assert rules_of(first) == ["auth_failure_burst"]
    # It goes on every 100 s: the window never clears, so no new alert.
    assert engine.feed([auth_failure(290 + i * 100) for i in range(1, 10)]) == []
    # Silence for a whole window (last at 1190 s), then a new burst: alerted again.
    again = engine.feed([auth_failure(1_500 + i) for i in range(5)])
    assert rules_of(again) == ["auth_failure_burst"]
    assert again[0].alert_id != first[0].alert_id


def test_other_actions_are_not_authentication_failures() -> None:
    engine = only(Rule.AUTH_FAILURE_BURST)
    events = [denied("/v1/ledger/transfers") for _ in range(10)]
    events += [ev("keys.create", status="failure") for _ in range(10)]
    assert engine.feed(events) == []


# --------------------------------------------------------------------------------------------
# Card-data access bursts
# --------------------------------------------------------------------------------------------


def detokenize(
    at_s: float, principal: str = "svc-payouts", action: str = "vault.detokenize"
) -> dict[str, Any]:
    return ev(action, at_s=at_s, role="service", principal=principal, resource=("card", "tok_1"))


def test_card_data_access_above_the_threshold_is_critical() -> None:
    engine = only(Rule.CARD_DATA_BURST, card_access_max=10, card_access_window_s=60)
    events = [detokenize(i) for i in range(10)]
    assert engine.feed(events) == []  # exactly the threshold: fine
    [alert] = engine.feed([detokenize(10)])
    assert (alert.rule, alert.severity) == (Rule.CARD_DATA_BURST, Severity.CRITICAL)
    assert alert.details["accesses"] == 11
    assert alert.details["principal_id"] == "svc-payouts"
    assert len(alert.event_ids) == 11
    assert engine.feed([detokenize(11 + i) for i in range(20)]) == []  # same burst


def test_tokenize_and_sub_actions_count_and_other_vault_actions_do_not() -> None:
    engine = only(Rule.CARD_DATA_BURST, card_access_max=3)
    quiet = [detokenize(0, action=a) for a in ("vault.keys.rotate", "vault.detokenized", "vault")]
    assert engine.feed(quiet * 3) == []
    counted = [
        detokenize(1, action=a)
        for a in ("vault.tokenize", "vault.detokenize", "vault.detokenize.batch", "vault.tokenize")
    ]
    assert rules_of(engine.feed(counted)) == ["card_data_burst"]


def test_card_access_is_counted_per_actor_over_a_sliding_window() -> None:
    engine = only(Rule.CARD_DATA_BURST, card_access_max=3, card_access_window_s=60)
    spread = [detokenize(i * 20, principal="a") for i in range(10)]  # 3 per 60 s
    mixed = [detokenize(300 + i, principal="b" if i % 2 else "c") for i in range(6)]
    assert engine.feed(spread + mixed) == []


def test_alerts_name_at_most_a_bounded_number_of_events() -> None:
    engine = only(Rule.CARD_DATA_BURST, card_access_max=500)
    [alert] = engine.feed([detokenize(0) for _ in range(501)])
    assert alert.details["accesses"] == 501
    assert len(alert.event_ids) == MAX_ALERT_EVENT_IDS


# --------------------------------------------------------------------------------------------
# Denials on admin routes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "route", ["/v1/keys", "/v1/keys/{key_id}", "/v1/admin", "/v1/admin/roles/{role}"]
)
def test_a_denial_on_an_admin_route_is_critical(route: str) -> None:
    [alert] = only(Rule.ADMIN_ROUTE_DENIED).feed([denied(route)])
    assert (alert.rule, alert.severity) == (Rule.ADMIN_ROUTE_DENIED, Severity.CRITICAL)
    assert alert.details["route"] == route
    assert alert.details["role"] == "seller"


def test_a_denial_whose_required_permission_is_admin_only_is_critical() -> None:
    event = denied("/v1/ops/reindex", details={"permission": "keys.manage"})
    [alert] = only(Rule.ADMIN_ROUTE_DENIED).feed([event])
    assert alert.details["permission"] == "keys.manage"


@pytest.mark.parametrize(
    "event",
    [
        denied("/v1/ledger/transfers"),
        denied("/v1/keysmith"),
        denied("/v1/audit/events", details={"permission": "audit.read"}),
        ev("auth.failure", resource=("route", "/v1/keys"), status="failure"),
        ev("keys.create", resource=("route", "/v1/keys"), status="failure"),
    ],
)
def test_other_denials_and_failures_are_not_admin_route_denials(event: dict[str, Any]) -> None:
    assert only(Rule.ADMIN_ROUTE_DENIED).feed([event]) == []


# --------------------------------------------------------------------------------------------
# Keys, roles, configuration
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "action", ["keys.create", "keys.revoke", "roles.assign", "config.update", "keys.rotate.start"]
)
def test_changes_to_keys_roles_and_config_are_warnings(action: str) -> None:
    [alert] = only(Rule.SECURITY_CHANGE).feed([ev(action, resource=("api_key", "key_9"))])
    assert (alert.rule, alert.severity) == (Rule.SECURITY_CHANGE, Severity.WARNING)
    assert alert.details["action"] == action
    assert alert.details["resource_id"] == "key_9"


@pytest.mark.parametrize(
    "event",
    [
        ev("keys.create", status="failure"),
        ev("keys.list"),
        ev("config.read"),
        ev("keys"),
        ev("keystore.create"),
        ev("ledger.accounts.create"),
        ev("db.migrate"),
    ],
)
def test_reads_failures_and_other_namespaces_are_not_changes(event: dict[str, Any]) -> None:
    assert only(Rule.SECURITY_CHANGE).feed([event]) == []


def test_an_admin_creating_a_key_raises_both_independent_rules() -> None:
    engine = AlertEngine()
    alerts = engine.feed([ev("keys.create", role="admin")])
    assert rules_of(alerts) == ["admin_action", "security_change"]
    quieter = AlertEngine(AlertRules(disabled=frozenset({Rule.ADMIN_ACTION})))
    assert rules_of(quieter.feed([ev("keys.create", role="admin")])) == ["security_change"]


# --------------------------------------------------------------------------------------------
# Audit verification
# --------------------------------------------------------------------------------------------


def test_a_failed_audit_verification_is_critical() -> None:
    details = {"events": 10, "heads": 2, "problems": 1, "first_problem": "seq 4: changed"}
    event = ev("audit.verify", role="system", status="failure", details=details)
    [alert] = only(Rule.AUDIT_VERIFY_FAILED).feed([event])
    assert (alert.rule, alert.severity) == (Rule.AUDIT_VERIFY_FAILED, Severity.CRITICAL)
    assert alert.details["problems"] == 1
    assert "seq 4: changed" in alert.summary


def test_a_passed_audit_verification_raises_nothing() -> None:
    assert only(Rule.AUDIT_VERIFY_FAILED).feed([ev("audit.verify", role="system")]) == []


def test_an_outbound_webhook_given_up_is_a_warning() -> None:
    given_up = ev("webhook.delivery_failed", role="system", resource=("webhook_event", "we_1"))
    [alert] = only(Rule.WEBHOOK_GIVEN_UP).feed([given_up, ev("webhook.delivered", role="system")])
    assert (alert.rule, alert.severity) == (Rule.WEBHOOK_GIVEN_UP, Severity.WARNING)
    assert alert.details == {"webhook_event": "we_1"}


# --------------------------------------------------------------------------------------------
# Sink lag and the dead-man's switch
# --------------------------------------------------------------------------------------------


def test_a_sink_over_its_lag_threshold_is_a_warning() -> None:
    engine = AlertEngine()
    assert engine.lag("jetstream", 10_000, 10_000, T0_US) is None
    alert = engine.lag("jetstream", 10_001, 10_000, T0_US)
    assert alert is not None
    assert (alert.rule, alert.severity) == (Rule.SINK_LAGGING, Severity.WARNING)
    assert alert.details == {"sink": "jetstream", "lag": 10_001, "threshold": 10_000}
    assert alert.ts == format_rfc3339(T0_US)


def test_missing_heartbeat_alerts_once_per_silence_and_re_arms() -> None:
    engine = AlertEngine()
    assert engine.check_heartbeat(T0_US) is None  # the first check is the baseline
    assert engine.check_heartbeat(T0_US + 120 * S) is None  # exactly the timeout: fine
    alert = engine.check_heartbeat(T0_US + 121 * S)
    assert alert is not None
    assert (alert.rule, alert.severity) == (Rule.HEARTBEAT_MISSING, Severity.CRITICAL)
    assert alert.details == {"silent_s": 121, "timeout_s": 120, "last_event_ts": None}
    assert engine.check_heartbeat(T0_US + 500 * S) is None  # once per silence
    engine.feed([ev("ledger.transfers.create", at_s=600)])  # any event is a sign of life
    assert engine.check_heartbeat(T0_US + 700 * S) is None
    again = engine.check_heartbeat(T0_US + 721 * S)
    assert again is not None
    assert again.details["last_event_ts"] == format_rfc3339(T0_US + 600 * S)


def test_heartbeat_can_count_only_heartbeat_events() -> None:
    engine = AlertEngine(AlertRules(heartbeat_action="audit.heartbeat", heartbeat_timeout_s=60))
    assert engine.check_heartbeat(T0_US) is None
    engine.feed([ev("audit.heartbeat", at_s=0)])
    engine.feed([ev("ledger.transfers.create", at_s=i) for i in range(1, 100)])
    alert = engine.check_heartbeat(T0_US + 61 * S)
    assert alert is not None
    assert "audit.heartbeat" in alert.summary
    engine.feed([ev("audit.heartbeat", at_s=62)])
    assert engine.check_heartbeat(T0_US + 100 * S) is None


def test_an_unreadable_event_is_critical() -> None:
    alert = AlertEngine().unreadable(41, "evt_x", T0_US)
    assert alert is not None
    assert (alert.rule, alert.severity, alert.event_ids) == (
        Rule.EVENT_UNREADABLE,
        Severity.CRITICAL,
        ("evt_x",),
    )


def test_disabled_time_rules_stay_quiet() -> None:
    engine = AlertEngine(
        AlertRules(disabled=frozenset({Rule.SINK_LAGGING, Rule.HEARTBEAT_MISSING}))
    )
    assert engine.lag("kafka", 10, 1, T0_US) is None
    engine.check_heartbeat(T0_US)
    assert engine.check_heartbeat(T0_US + 10_000 * S) is None


# --------------------------------------------------------------------------------------------
# Redeliveries, time order, bounded state, values
# --------------------------------------------------------------------------------------------


def test_redelivered_events_are_ignored_by_seq_and_by_event_id() -> None:
    engine = AlertEngine()
    page = [ev("keys.create", seq=i) for i in range(5)]
    assert len(engine.feed(page)) == 5
    assert engine.feed(page[2:]) == []  # the relay resent from seq 2
    no_seq = ev("keys.revoke")
    assert len(engine.feed([no_seq])) == 1
    assert engine.feed([no_seq]) == []
    same_id = ev("keys.revoke", seq=10, event_id=page[0]["event_id"])
    assert engine.feed([same_id]) == []  # the vault's event relayed twice
    assert engine.stats()["duplicates"] == 5


def test_the_dedup_memory_is_bounded() -> None:
    engine = AlertEngine(AlertRules(dedup_window=3))
    events = [ev("keys.create") for _ in range(5)]
    assert len(engine.feed(events)) == 5
    assert engine.stats()["remembered_event_ids"] == 3
    assert engine.feed(events[2:]) == []  # the last three are remembered
    assert len(engine.feed(events[:1])) == 1  # the first fell out of the window


def test_tracked_origins_are_capped_with_lru_eviction() -> None:
    engine = only(Rule.AUTH_FAILURE_BURST, max_tracked=3)
    engine.feed([auth_failure(0, ip="10.0.0.1") for _ in range(3)])
    engine.feed([auth_failure(1, ip=f"10.0.1.{i}") for i in range(2)])
    engine.feed([auth_failure(2, ip="10.0.0.1")])  # 4 from .1, now the most recently seen
    assert engine.stats()["tracked_origins"] == 3
    engine.feed([auth_failure(3, ip="10.0.2.1")])  # evicts 10.0.1.0, the least recent
    assert engine.stats()["tracked_origins"] == 3
    assert engine.stats()["evicted"] == 1
    # 10.0.0.1 was kept (FIFO would have dropped it): its fifth failure completes the burst.
    assert rules_of(engine.feed([auth_failure(4, ip="10.0.0.1")])) == ["auth_failure_burst"]
    engine.feed([auth_failure(5, ip=f"10.9.{i // 250}.{i % 250}") for i in range(1_000)])
    assert engine.stats()["tracked_origins"] == 3
    assert engine.stats()["evicted"] == 1_001


def test_events_out_of_time_order_are_clamped_forward() -> None:
    engine = only(Rule.AUTH_FAILURE_BURST)
    # Committed in this order; the last two took their ts earlier in longer transactions.
    events = [auth_failure(at_s) for at_s in (0, 400, 401, 402, 100, 100)]
    [alert] = engine.feed(events)
    assert alert.ts == events[-1]["ts"]  # the alert shows the event's own time
    assert alert.details["first_ts"] == events[1]["ts"]


def test_malformed_fields_match_nothing_and_do_not_raise() -> None:
    engine = AlertEngine()
    junk: list[dict[str, Any]] = [
        {},
        {"action": 5, "actor": "admin", "ts": "yesterday", "seq": True},
        {"action": "auth.failure", "origin": None, "ts": None},
        {"action": "keys.create", "outcome": {"status": "success"}, "ts": "2026-01-01T00:00:00"},
    ]
    alerts = engine.feed(junk)
    assert rules_of(alerts) == ["security_change"]


def test_alert_is_frozen_and_its_id_is_derived_from_its_content() -> None:
    event = ev("keys.create", role="admin")
    first = AlertEngine().feed([event])
    second = AlertEngine().feed([event])
    assert first == second
    assert [a.alert_id for a in first] == [a.alert_id for a in second]
    assert len({a.alert_id for a in first}) == 2
    assert first[0].alert_id.startswith("alr_")
    with pytest.raises(dataclasses.FrozenInstanceError):
        first[0].summary = "changed"  # type: ignore[misc]
    body = first[0].as_json()
    assert body["rule"] == "admin_action"
    assert body["severity"] == "warning"
    assert body["event_ids"] == [event["event_id"]]


def test_strings_copied_into_alerts_are_cut() -> None:
    [alert] = only(Rule.ADMIN_ACTION).feed([ev("x" * 5_000, role="admin", principal="p" * 900)])
    assert len(alert.details["action"]) == 200
    assert len(alert.summary) < 700


@pytest.mark.parametrize(
    "overrides",
    [
        {"auth_failure_limit": 0},
        {"card_access_max": 10_000},
        {"auth_failure_window_s": 0},
        {"heartbeat_timeout_s": -1},
        {"max_tracked": 0},
        {"dedup_window": 2_000_000},
        {"admin_route_prefixes": ("/v1/keys/",)},
    ],
)
def test_rules_refuse_unbounded_or_nonsensical_settings(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        AlertRules(**overrides)


# --------------------------------------------------------------------------------------------
# Property: the split of the stream into batches does not matter
# --------------------------------------------------------------------------------------------

_ACTIONS = [
    "auth.failure",
    "auth.failure",
    "auth.denied",
    "keys.create",
    "keys.list",
    "vault.detokenize",
    "vault.tokenize",
    "ledger.transfers.create",
    "audit.verify",
    "audit.heartbeat",
]

_steps = st.tuples(
    st.sampled_from(_ACTIONS),
    st.sampled_from([0, 0, 1, 5, 30, 90, 400]),  # seconds since the previous event
    st.sampled_from([0, 0, 0, -20]),  # some ts taken earlier than committed
    st.sampled_from(["203.0.113.1", "203.0.113.2", None]),
    st.sampled_from(["admin", "operator", "seller", None]),
    st.sampled_from(["a", "b", "c"]),
    st.sampled_from(["success", "failure"]),
    st.sampled_from(["/v1/keys", "/v1/ledger", "/v1/admin"]),
)


def _stream(
    steps: list[tuple[str, int, int, str | None, str | None, str, str, str]],
) -> list[dict[str, Any]]:
    events = []
    at_s = 0
    for seq, (action, gap_s, skew_s, ip, role, principal, status, route) in enumerate(steps):
        at_s += gap_s
        events.append(
            ev(
                action,
                at_s=max(0, at_s + skew_s),
                ip=ip,
                role=role,
                principal=principal,
                status=status,
                resource=("route", route),
                seq=seq,
            )
        )
    return events


def event_streams() -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.lists(_steps, max_size=60).map(_stream)


def _rules_for_property() -> AlertRules:
    return AlertRules(auth_failure_limit=3, card_access_max=2, max_tracked=2)


@given(events=event_streams(), cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=10))
def test_any_split_into_batches_gives_the_same_alerts(
    events: list[dict[str, Any]], cuts: list[int]
) -> None:
    whole = AlertEngine(_rules_for_property()).feed(events)
    engine = AlertEngine(_rules_for_property())
    bounds = sorted({0, len(events), *(c for c in cuts if c <= len(events))})
    split: list[Alert] = []
    for lo, hi in itertools.pairwise(bounds):
        split.extend(engine.feed(events[lo:hi]))
    assert split == whole
    assert [a.alert_id for a in split] == [a.alert_id for a in whole]


@given(events=event_streams(), data=st.data())
def test_resending_from_any_point_adds_no_alert(
    events: list[dict[str, Any]], data: st.DataObject
) -> None:
    """At least once: the relay resends from the first unacknowledged event after a failure."""
    whole = AlertEngine(_rules_for_property()).feed(events)
    engine = AlertEngine(_rules_for_property())
    delivered: list[Alert] = []
    position = 0
    while position < len(events):
        end = data.draw(st.integers(min_value=position + 1, max_value=len(events)))
        delivered.extend(engine.feed(events[position:end]))
        # The sink acknowledged a prefix of the page; the relay resends from there.
        position = data.draw(st.integers(min_value=position + 1, max_value=end))
    assert delivered == whole

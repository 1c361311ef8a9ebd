"""The sequencer's leaf bytes: what it splices into the outbox text without parsing it is
byte for byte the RFC 8785 form of the event as served (with its ``seq``), and the index
columns are the event's own, for any schema-v1 event (non-ASCII, escapes, nested details that
hold schema keys), and for outbox text of another shape (the parse-and-encode path)."""

from __future__ import annotations

from typing import Any

import orjson
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from hammerlock.audit.model import Actor, AuditEvent, Origin, Outcome
from hammerlock.audit.sequencer import render_log_rows
from hammerlock.audit.service import canonical_bytes

SAFE = 2**53 - 1
text = st.text(alphabet=st.characters(codec="utf-8"), max_size=10) | st.sampled_from(
    ['},"event_id":"x', '"', "\\", "é", "\U0001f600", "\x00\n", ',"ts":"', "null"]
)
maybe = st.none() | text
details = st.dictionaries(
    text | st.sampled_from(["event_id", "resource", "ts", "seq", "actor"]),
    st.recursive(
        st.none() | st.booleans() | st.integers(-SAFE, SAFE) | text,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
        max_leaves=8,
    ),
    max_size=4,
)
events = st.builds(
    AuditEvent,
    action=text,
    resource_type=text,
    resource_id=maybe,
    actor=st.builds(Actor, principal_id=maybe, role=maybe, key_id=maybe),
    origin=st.builds(Origin, ip=maybe, user_agent=maybe, node=maybe),
    ts_us=st.integers(0, 253_402_300_799_999_999),
    outcome=st.sampled_from(Outcome),
    outcome_code=maybe,
    request_id=maybe,
    details=details,
    event_id=text,
)


def _check(event: AuditEvent, stored: str, seq: int) -> None:
    hashes: list[bytes] = []
    [row] = list(render_log_rows([(1, event.ts_us, stored)], seq, hashes))
    served = {**event.to_json_object(), "seq": seq}
    assert row[7].encode() == rfc8785.dumps(served)
    assert row[:7] == (
        seq,
        event.event_id,
        event.ts_us,
        event.action,
        event.actor.principal_id,
        event.resource_type,
        event.resource_id,
    )
    assert len(hashes) == 1
    assert row[8] == hashes[0].hex()


@given(events, st.integers(0, SAFE))
def test_leaf_bytes_are_rfc8785_of_the_event_as_served(event: AuditEvent, seq: int) -> None:
    _check(event, canonical_bytes(event).decode(), seq)


@given(events, st.integers(0, SAFE))
def test_outbox_text_of_another_shape_is_parsed(event: AuditEvent, seq: int) -> None:
    unsorted: Any = event.to_json_object()
    _check(event, orjson.dumps(dict(reversed(unsorted.items()))).decode(), seq)


@given(events, st.integers(0, SAFE), st.sampled_from(["retention", "sig", "tz", "dz", "r"]))
def test_a_member_schema_v1_lacks_takes_the_parse_path(
    event: AuditEvent, seq: int, extra: str
) -> None:
    """A top-level member other than schema v1's, wherever it sorts (between resource and seq,
    between seq and ts, after ts…): the leaf is still RFC 8785 of the event with its seq."""
    served: Any = {**event.to_json_object(), extra: {"ts": ',"ts":"x"'}}
    hashes: list[bytes] = []
    [row] = list(render_log_rows([(1, event.ts_us, rfc8785.dumps(served).decode())], seq, hashes))
    assert row[7].encode() == rfc8785.dumps({**served, "seq": seq})
    assert row[8] == hashes[0].hex()

"""RFC 8785 (JCS) bytes of an audit event, fast: :func:`canonical_json`.

The pure-Python ``rfc8785`` encoder costs tens of microseconds per event, which a business
transaction (its outbox row) and the sequencer (each leaf) would pay on every event. For the
values audit events hold, orjson with sorted keys writes exactly the JCS bytes whenever

- the output is ASCII (JCS sorts keys by UTF-16 code units, orjson by code points: the two
  orders agree on ASCII; and both escape the same characters of ASCII text the same way:
  ``\\"``, ``\\\\``, ``\\b \\f \\n \\r \\t``, other controls as ``\\u00xx`` in lowercase hex), and
- there is no float anywhere (JCS writes floats the ECMAScript way, orjson does not; audit
  events never hold one, times are strings) and every integer is within ±(2^53-1)
  (``OPT_STRICT_INTEGER`` refuses others, and JCS would lose them).

Anything else — non-ASCII text, a float, an unsafe integer, a type orjson cannot write — goes
to ``rfc8785``, which is then also the one that raises. ``hammerlock audit verify`` checks every
stored event with the same rule (``verify.check_rows``), and a property test compares the two
encoders over generated events.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import rfc8785

__all__ = ["canonical_json"]

_SORTED = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER
_PLAIN = frozenset({str, int, bool, type(None)})
# A number token with a fraction or an exponent, where compact JSON puts values: after one of
# `: , [` and before one of `, } ]` (so "12:30:45.123456Z" inside a string does not match).
_FLOAT_TOKEN = re.compile(rb"[:,\[]-?[0-9]+(?:\.[0-9]+(?:[eE][-+]?[0-9]+)?|[eE][-+]?[0-9]+)[,}\]]")


def canonical_json(value: Any, *, parsed_from: bytes | None = None) -> bytes:
    """RFC 8785 bytes of ``value`` (a JSON object of strings, integers, booleans, null, objects
    and arrays).

    ``parsed_from``: the JSON text ``value`` was parsed from (by orjson; members added since
    are strings, integers, booleans or null). A float can then only be a number token with a
    fraction or an exponent in that text (JSON has no NaN or infinity), which a scan of the text
    rules out faster than a walk of the value (a match inside a string only costs the slow
    path)."""
    if parsed_from is None:
        floats = _has_float(value)
    else:
        floats = _FLOAT_TOKEN.search(parsed_from) is not None
    if not floats:
        try:
            fast = orjson.dumps(value, option=_SORTED)
        except orjson.JSONEncodeError:
            fast = b""
        if fast and fast.isascii():
            return fast
    return bytes(rfc8785.dumps(value))


def _has_float(value: Any) -> bool:
    """Whether a float (or anything but plain JSON values) hides anywhere in ``value``."""
    kind = type(value)
    if kind is dict:
        values: Any = value.values()
    elif kind is list or kind is tuple:
        values = value
    else:
        return kind not in _PLAIN
    kinds = set(map(type, values))
    if kinds <= _PLAIN:
        return False
    return any(_has_float(v) for v in values if type(v) not in _PLAIN)

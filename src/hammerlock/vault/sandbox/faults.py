"""Scriptable faults for the sandbox gateway (``HAMMERLOCK_SANDBOX_FAULTS``).

Grammar: a comma-separated list of ``name[:probability][@duration]``; blanks are ignored::

    crash_after_charge                  every new charge: record it, then os._exit before answering
    crash_after_charge:0.5              half of them
    timeout_after_charge:0.2@5s         record the charge, then stall 5 s before answering
    http_500:0.1                        raise GatewayUnavailable before doing anything
    slow:0.3@500ms                      wait 0.5 s before doing anything
    duplicate_webhooks                  send every webhook twice
    out_of_order_webhooks               send pending webhooks newest first

``probability`` is a decimal in [0, 1] (default 1); ``duration`` is a number with ``ms`` or ``s``
and applies only to ``timeout_after_charge`` (default 60 s, at most 600 s) and ``slow``
(default 0.5 s, at most 60 s). A name may appear once. Anything else is a :class:`ValueError`
naming the offending entry, raised when the gateway is built, never at the first charge.

:func:`parse_faults` is pure; :class:`Faults` draws from an injected ``random.Random`` so tests
can seed it.
"""

from __future__ import annotations

import enum
import random
import re
from dataclasses import dataclass
from typing import Final

from hammerlock.errors import ConfigurationError

__all__ = ["Fault", "FaultName", "FaultPlan", "Faults", "parse_faults"]

_TEXT_LEN_MAX: Final = 1_000
_ENTRY_RE: Final = re.compile(
    r"(?P<name>[a-z_0-9]+)"
    r"(?::(?P<probability>[0-9]+(?:\.[0-9]+)?))?"
    r"(?:@(?P<amount>[0-9]+(?:\.[0-9]+)?)(?P<unit>ms|s))?"
)


class FaultName(enum.StrEnum):
    CRASH_AFTER_CHARGE = "crash_after_charge"
    TIMEOUT_AFTER_CHARGE = "timeout_after_charge"
    HTTP_500 = "http_500"
    SLOW = "slow"
    DUPLICATE_WEBHOOKS = "duplicate_webhooks"
    OUT_OF_ORDER_WEBHOOKS = "out_of_order_webhooks"


# (default, maximum) duration in seconds for the faults that take one.
_DURATIONS_S: Final = {
    FaultName.TIMEOUT_AFTER_CHARGE: (60.0, 600.0),
    FaultName.SLOW: (0.5, 60.0),
}


@dataclass(frozen=True, slots=True)
class Fault:
    name: FaultName
    probability: float = 1.0  # a chance, never money
    duration_s: float | None = None


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """The parsed fault list; empty means a well-behaved gateway."""

    faults: tuple[Fault, ...] = ()

    def get(self, name: FaultName) -> Fault | None:
        return next((f for f in self.faults if f.name is name), None)

    def __str__(self) -> str:
        return ",".join(_format(f) for f in self.faults)


def _format(fault: Fault) -> str:
    text = f"{fault.name.value}:{fault.probability:g}"
    return text if fault.duration_s is None else f"{text}@{fault.duration_s:g}s"


def _parse_entry(entry: str) -> Fault:
    match = _ENTRY_RE.fullmatch(entry)
    if match is None:
        raise ConfigurationError(
            f"HAMMERLOCK_SANDBOX_FAULTS: fault {entry!r}: expected name[:probability][@duration]"
        )
    try:
        name = FaultName(match["name"])
    except ValueError:
        known = ", ".join(n.value for n in FaultName)
        raise ConfigurationError(
            f"HAMMERLOCK_SANDBOX_FAULTS: fault {entry!r}: unknown name (known: {known})"
        ) from None
    probability = float(match["probability"]) if match["probability"] else 1.0
    if not 0.0 <= probability <= 1.0:
        raise ConfigurationError(
            f"HAMMERLOCK_SANDBOX_FAULTS: fault {entry!r}: probability must be within [0, 1]"
        )
    return Fault(name, probability, _duration_s(entry, name, match["amount"], match["unit"]))


def _duration_s(entry: str, name: FaultName, amount: str | None, unit: str | None) -> float | None:
    limits = _DURATIONS_S.get(name)
    if limits is None:
        if amount is not None:
            raise ConfigurationError(
                f"HAMMERLOCK_SANDBOX_FAULTS: fault {entry!r}: {name.value} takes no duration"
            )
        return None
    default_s, max_s = limits
    if amount is None:
        return default_s
    seconds = float(amount) / (1000.0 if unit == "ms" else 1.0)
    if not 0.0 < seconds <= max_s:
        raise ConfigurationError(
            f"HAMMERLOCK_SANDBOX_FAULTS: fault {entry!r}: duration must be within (0, {max_s:g}s]"
        )
    return seconds


def parse_faults(text: str) -> FaultPlan:
    """Parse ``HAMMERLOCK_SANDBOX_FAULTS`` (grammar in the module docstring)."""
    if len(text) > _TEXT_LEN_MAX:
        raise ConfigurationError(
            f"HAMMERLOCK_SANDBOX_FAULTS: faults: longer than {_TEXT_LEN_MAX} characters"
        )
    faults: list[Fault] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        fault = _parse_entry(entry)
        if any(f.name is fault.name for f in faults):
            raise ConfigurationError(
                f"HAMMERLOCK_SANDBOX_FAULTS: fault {fault.name.value!r} appears twice"
            )
        faults.append(fault)
    return FaultPlan(tuple(faults))


class Faults:
    """A :class:`FaultPlan` plus the dice: ``fires(name)`` draws once per call."""

    def __init__(self, plan: FaultPlan, rng: random.Random | None = None) -> None:
        self.plan = plan
        self._rng = rng or random.Random()  # noqa: S311 - fault dice, not a secret

    def fires(self, name: FaultName) -> bool:
        fault = self.plan.get(name)
        if fault is None or fault.probability <= 0.0:
            return False
        return fault.probability >= 1.0 or self._rng.random() < fault.probability

    def duration_s(self, name: FaultName) -> float:
        fault = self.plan.get(name)
        if fault is None or fault.duration_s is None:
            raise ValueError(f"sandbox fault {name.value} has no duration")
        return fault.duration_s

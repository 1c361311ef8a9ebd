"""HAMMERLOCK_SANDBOX_FAULTS: the grammar, and the dice."""

from __future__ import annotations

import random

import pytest

from hammerlock.vault.sandbox.faults import Fault, FaultName, FaultPlan, Faults, parse_faults


def test_empty_and_blank_mean_no_faults() -> None:
    assert parse_faults("") == FaultPlan()
    assert parse_faults(" , ,") == FaultPlan()


def test_full_grammar() -> None:
    plan = parse_faults(
        "crash_after_charge, timeout_after_charge:0.2@5s,http_500:0.1,slow:0.3@500ms,"
        "duplicate_webhooks,out_of_order_webhooks:0"
    )
    assert plan.faults == (
        Fault(FaultName.CRASH_AFTER_CHARGE, 1.0),
        Fault(FaultName.TIMEOUT_AFTER_CHARGE, 0.2, 5.0),
        Fault(FaultName.HTTP_500, 0.1),
        Fault(FaultName.SLOW, 0.3, 0.5),
        Fault(FaultName.DUPLICATE_WEBHOOKS, 1.0),
        Fault(FaultName.OUT_OF_ORDER_WEBHOOKS, 0.0),
    )
    assert parse_faults(str(plan)) == plan


def test_default_durations() -> None:
    plan = parse_faults("timeout_after_charge:0.5,slow")
    assert plan.get(FaultName.TIMEOUT_AFTER_CHARGE) == Fault(
        FaultName.TIMEOUT_AFTER_CHARGE, 0.5, 60.0
    )
    assert plan.get(FaultName.SLOW) == Fault(FaultName.SLOW, 1.0, 0.5)
    assert plan.get(FaultName.HTTP_500) is None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("explode", "unknown name"),
        ("http_500:1.5", "probability"),
        ("http_500:-1", "expected name"),
        ("http_500@5s", "takes no duration"),
        ("slow@0s", "duration"),
        ("slow@61s", "duration"),
        ("timeout_after_charge@601s", "duration"),
        ("slow@5m", "expected name"),
        ("slow:0.5:0.5", "expected name"),
        ("HTTP_500", "expected name"),
        ("http_500,http_500:0.5", "twice"),
        ("slow," * 400, "longer than"),
    ],
)
def test_malformed_lists_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_faults(text)


def test_certain_and_impossible_faults_never_roll() -> None:
    class NoDice(random.Random):
        def random(self) -> float:
            raise AssertionError("rolled")

    faults = Faults(parse_faults("http_500,slow:0"), NoDice())
    assert faults.fires(FaultName.HTTP_500)
    assert not faults.fires(FaultName.SLOW)
    assert not faults.fires(FaultName.CRASH_AFTER_CHARGE)


def test_probability_uses_the_injected_dice() -> None:
    plan = parse_faults("http_500:0.25")
    runs = [Faults(plan, random.Random(7)) for _ in range(2)]
    draws = [[r.fires(FaultName.HTTP_500) for _ in range(2_000)] for r in runs]
    assert draws[0] == draws[1]  # seeded: reproducible
    assert 400 <= sum(draws[0]) <= 600  # about a quarter


def test_duration_of_a_fault_without_one_is_an_error() -> None:
    faults = Faults(parse_faults("slow@250ms,http_500"))
    assert faults.duration_s(FaultName.SLOW) == 0.25
    with pytest.raises(ValueError, match="no duration"):
        faults.duration_s(FaultName.HTTP_500)

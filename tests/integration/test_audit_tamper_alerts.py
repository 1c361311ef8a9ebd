"""Attempts to change the audit trail raise alerts (PCI DSS 10.3.4), and the alert relay of a
fresh deployment starts at the log's end instead of replaying history as alerts.

Through the container's own wiring (its tamper guard, sequencer, alert relay and in-process alert
channel), on both backends: a refused UPDATE/DELETE/TRUNCATE is recorded in a fresh transaction
and alerts; a dropped or disabled append-only trigger alerts, once, and its repair is recorded.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from hammerlock.audit import service as audit
from hammerlock.audit.alerts import Alert, Rule
from hammerlock.audit.model import Context, Outcome
from hammerlock.audit.notifiers import Subscription
from hammerlock.audit.relay import Relay
from hammerlock.audit.sinks.memory import MemorySink
from hammerlock.audit.storage import audit_log, audit_outbox, audit_state, audit_tree_heads
from hammerlock.audit.tamper import refusal_of
from hammerlock.bootstrap import Container


async def record_events(container: Container, action: str, n: int, **event: object) -> None:
    ctx = Context.system("tests")
    async with container.db.transaction() as uow:
        for i in range(n):
            await audit.record(
                uow,
                ctx.event(
                    action,
                    resource_type="thing",
                    resource_id=f"t{i}",
                    ts_us=uow.clock.now_us(),
                    **event,  # type: ignore[arg-type]
                ),
            )
    while await container.sequencer.run_once():
        pass


async def alerts_now(container: Container, subscription: Subscription) -> list[Alert]:
    """Sequence what is committed, run the alert relay to the end, collect the alerts."""
    while await container.sequencer.run_once():
        pass
    relay = container.alert_relay
    assert relay is not None
    while await relay.run_once():
        pass
    assert await container.alert_sink.flush(timeout_s=5)
    alerts = []
    while (alert := subscription.get_nowait()) is not None:
        alerts.append(alert)
    return alerts


async def outbox_actions(container: Container) -> list[str]:
    async with container.db.transaction(write=False) as uow:
        rows = await uow.conn.execute(sa.select(audit_outbox.c.action).order_by(audit_outbox.c.id))
        return [a for (a,) in rows]


@pytest.fixture
async def watched(container: Container) -> Subscription:
    """The container with some history and its alert relay already running (positioned)."""
    await record_events(container, "test.event", 5)
    subscription = container.alert_channel.subscribe()
    assert await alerts_now(container, subscription) == []
    return subscription


# --- 6. tampering ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        audit_log.update().where(audit_log.c.seq == 0).values(action="test.forged"),
        audit_log.delete().where(audit_log.c.seq == 1),
        audit_tree_heads.delete(),
    ],
    ids=["update-log", "delete-log", "delete-heads"],
)
async def test_a_refused_change_is_recorded_and_alerts(
    container: Container, watched: Subscription, statement: sa.Executable
) -> None:
    with pytest.raises(sa.exc.DBAPIError) as refused:
        await attempt(container, statement, business=True)
    operation, table = refusal_of(refused.value) or ("", "")
    await container.tamper_guard.flush()
    assert container.tamper_guard.recorded == 1
    # The refused transaction left nothing; the attempt was recorded on its own.
    assert await outbox_actions(container) == ["audit.tamper_attempt"]

    alerts = await alerts_now(container, watched)
    assert [a.rule for a in alerts] == [Rule.AUDIT_TAMPER]
    assert alerts[0].severity == "critical"
    assert alerts[0].summary == f"refused {operation} on {table}"
    assert alerts[0].details["table"] == table


async def attempt(
    container: Container, statement: sa.Executable | str, *, business: bool = False
) -> None:
    """``statement`` in a transaction, after some business work (rolled back with it)."""
    async with container.db.transaction() as uow:
        if business:
            await audit.record(
                uow,
                Context.system("tests").event(
                    "test.business", resource_type="thing", resource_id="b", ts_us=0
                ),
            )
        if isinstance(statement, str):
            await uow.conn.exec_driver_sql(statement)
        else:
            await uow.conn.execute(statement)


async def test_a_truncate_is_refused_and_alerts_on_postgresql(
    container: Container, watched: Subscription
) -> None:
    if not container.db.is_postgres:
        pytest.skip("SQLite has no TRUNCATE")
    with pytest.raises(sa.exc.DBAPIError):
        await attempt(container, "TRUNCATE audit_log")
    await container.tamper_guard.flush()
    alerts = await alerts_now(container, watched)
    assert [a.summary for a in alerts] == ["refused TRUNCATE on audit_log"]


async def test_other_errors_are_not_tamper_attempts(container: Container) -> None:
    with pytest.raises(sa.exc.DBAPIError):
        await attempt(container, audit_state.insert().values(name="sequencer"))  # a duplicate
    await container.tamper_guard.flush()
    assert container.tamper_guard.recorded == 0


async def test_a_disabled_trigger_alerts_once_and_its_repair_is_recorded(
    container: Container, watched: Subscription
) -> None:
    guard = container.tamper_guard
    assert await guard.check_triggers() == []
    if container.db.is_postgres:
        disable = "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"
        repair = "ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only"
        expected = ["trigger audit_log.audit_log_append_only (missing or disabled)"]
    else:
        disable = "DROP TRIGGER audit_log_no_update"
        repair = (
            "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log BEGIN SELECT "
            "RAISE(ABORT, 'hammerlock: UPDATE on audit_log is not allowed (append-only)'); END"
        )
        expected = ["trigger audit_log_no_update (missing or no longer refuses)"]
    async with container.db.transaction() as uow:
        await uow.conn.exec_driver_sql(disable)

    assert await guard.check_triggers() == expected
    assert await guard.check_triggers() == expected  # still missing: no second event
    alerts = await alerts_now(container, watched)
    assert [(a.rule, a.summary) for a in alerts] == [
        (Rule.AUDIT_TAMPER, "the audit trail's append-only guard is missing or disabled")
    ]
    assert alerts[0].details["missing"] == expected

    async with container.db.transaction() as uow:
        await uow.conn.exec_driver_sql(repair)
    assert await guard.check_triggers() == []
    assert await alerts_now(container, watched) == []
    async with container.db.transaction(write=False) as uow:
        rows = await uow.conn.execute(
            sa.select(audit_log.c.action).where(audit_log.c.action.like("audit.guard_%"))
        )
        assert [a for (a,) in rows] == ["audit.guard_missing", "audit.guard_restored"]


async def test_a_replaced_refusal_function_alerts_on_postgresql(
    container: Container, watched: Subscription
) -> None:
    if not container.db.is_postgres:
        pytest.skip("PostgreSQL's triggers call hammerlock_refuse_change()")
    async with container.db.transaction() as uow:
        await uow.conn.exec_driver_sql(
            "CREATE OR REPLACE FUNCTION hammerlock_refuse_change() RETURNS trigger AS $$ "
            "BEGIN RETURN OLD; END $$ LANGUAGE plpgsql"
        )
    missing = await container.tamper_guard.check_triggers()
    assert missing == ["function hammerlock_refuse_change() (missing or no longer raises)"]
    assert [a.rule for a in await alerts_now(container, watched)] == [Rule.AUDIT_TAMPER]


# --- 7. the alert relay's first position -------------------------------------------------------


async def test_a_late_first_start_alerts_from_now_on_not_on_history(container: Container) -> None:
    # History that would alert if replayed: failed verifications.
    await record_events(
        container, "audit.verify", 3, outcome=Outcome.FAILURE, outcome_code="audit_log_tampered"
    )
    subscription = container.alert_channel.subscribe()
    relay = container.alert_relay
    assert relay is not None
    assert await alerts_now(container, subscription) == []
    assert relay.position == 3  # the log's end when the relay first ran

    await record_events(
        container, "audit.verify", 1, outcome=Outcome.FAILURE, outcome_code="audit_log_tampered"
    )
    assert [a.rule for a in await alerts_now(container, subscription)] == [Rule.AUDIT_VERIFY_FAILED]

    # A restart resumes from the stored position; it never jumps to the end again.
    await relay.release()
    await record_events(
        container, "audit.verify", 2, outcome=Outcome.FAILURE, outcome_code="audit_log_tampered"
    )
    restarted = Relay(container.db, container.alert_sink, node="restarted", start="end")
    while await restarted.run_once():
        pass
    assert restarted.position == 6
    assert await container.alert_sink.flush(timeout_s=5)
    assert len(list(iter(subscription.get_nowait, None))) == 2


async def test_other_relays_still_start_at_the_beginning(container: Container) -> None:
    await record_events(container, "test.event", 4)
    sink = MemorySink()
    relay = Relay(container.db, sink, node="t")
    while await relay.run_once():
        pass
    assert relay.position == 4
    assert [e.seq for e in sink.stored] == [0, 1, 2, 3]

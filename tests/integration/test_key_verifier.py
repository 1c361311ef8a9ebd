"""The API key check keeps each key's stored record (ADR 0014, 0023): the secret is still
checked on every request, expiry against the clock, a revocation here at once and one made
elsewhere within ``auth_cache_ttl_s`` — by one query per process for the keys revoked lately,
not a read per key — and every record is read again after ``max_age_s``."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from hammerlock.audit.model import Context
from hammerlock.bootstrap import Container
from hammerlock.clock import FixedClock
from hammerlock.db.uow import UnitOfWork
from hammerlock.security import service as keys_service
from hammerlock.security import storage
from hammerlock.security.errors import Unauthenticated
from hammerlock.security.keys import ApiKey
from hammerlock.security.permissions import Role
from hammerlock.security.service import KeyVerifier
from tests.conftest import Keys


class Ticker:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def _key(container: Container, **kw: object) -> tuple[ApiKey, str]:
    async with container.db.transaction() as uow:
        created = await keys_service.create_key(
            uow,
            Context.system("tests"),
            pepper=container.pepper,
            role=Role.SERVICE,
            name="verifier test",
            **kw,  # type: ignore[arg-type]
        )
    return created.key, created.plaintext


async def _revoke_elsewhere(container: Container, key_id: str, *, skew_us: int = 0) -> None:
    """As the CLI or another API node would: straight in the database, stamped by a clock
    ``skew_us`` ahead of ours (behind, when negative)."""
    async with container.db.transaction() as uow:
        assert await storage.mark_revoked(uow, key_id, uow.clock.now_us() + skew_us)


def _verifier(container: Container, ticker: Ticker, ttl_s: float = 1.0, **kw: int) -> KeyVerifier:
    return KeyVerifier(container.db, pepper=container.pepper, ttl_s=ttl_s, monotonic=ticker, **kw)


async def test_a_revocation_elsewhere_takes_effect_within_the_ttl(container: Container) -> None:
    ticker = Ticker()
    verifier = _verifier(container, ticker)
    key, plaintext = await _key(container)
    assert (await verifier.authenticate(plaintext)).id == key.id
    await _revoke_elsewhere(container, key.id)
    ticker.now += 0.5
    assert (await verifier.authenticate(plaintext)).id == key.id  # within the TTL: documented
    ticker.now += 0.6
    with pytest.raises(Unauthenticated):
        await verifier.authenticate(plaintext)
    ticker.now += 10  # the revoked record, read again, is still refused
    with pytest.raises(Unauthenticated):
        await verifier.authenticate(plaintext)


async def test_forget_and_a_zero_ttl_take_effect_at_once(container: Container) -> None:
    ticker = Ticker()
    cached, off = _verifier(container, ticker), _verifier(container, ticker, ttl_s=0)
    key, plaintext = await _key(container)
    assert (await cached.authenticate(plaintext)).id == key.id
    assert (await off.authenticate(plaintext)).id == key.id
    await _revoke_elsewhere(container, key.id)
    with pytest.raises(Unauthenticated):
        await off.authenticate(plaintext)
    cached.forget(key.id)
    with pytest.raises(Unauthenticated):
        await cached.authenticate(plaintext)


async def test_the_secret_and_the_expiry_are_checked_on_every_request(
    container: Container, clock: FixedClock
) -> None:
    ticker = Ticker()
    verifier = _verifier(container, ticker, ttl_s=60)
    key, plaintext = await _key(container, expires_us=clock.now_us() + 5_000_000)
    assert (await verifier.authenticate(plaintext)).id == key.id
    wrong = plaintext[:-4] + ("AAAA" if not plaintext.endswith("AAAA") else "BBBB")
    with pytest.raises(Unauthenticated):
        await verifier.authenticate(wrong)  # the record is kept; the secret is not
    clock.advance(6)
    with pytest.raises(Unauthenticated):
        await verifier.authenticate(plaintext)  # expired, though the record is still kept


async def test_unknown_keys_are_not_kept_and_the_cache_is_bounded(container: Container) -> None:
    ticker = Ticker()
    verifier = _verifier(container, ticker, ttl_s=60, max_entries=2)
    made = [await _key(container) for _ in range(3)]
    for key, plaintext in made:
        assert (await verifier.authenticate(plaintext)).id == key.id
    assert list(verifier._kept) == [made[1][0].id, made[2][0].id]  # the oldest went
    with pytest.raises(Unauthenticated):
        await verifier.authenticate("hl_nosuchkey_" + "A" * 40)
    with pytest.raises(Unauthenticated):
        await verifier.authenticate("not a key at all")
    assert len(verifier._kept) == 2
    with pytest.raises(ValueError, match="ttl_s"):
        KeyVerifier(container.db, pepper=b"x", ttl_s=-1)


async def test_revoking_through_the_api_refuses_the_key_at_once(
    client: httpx.AsyncClient, keys: Keys, container: Container
) -> None:
    assert container.settings.auth_cache_ttl_s > 0  # the cache is on by default
    admin = await keys.headers(Role.ADMIN)
    victim = await keys.create(Role.SERVICE)
    url = "/v1/ledger/accounts/nosuch"
    assert (await client.get(url, headers=victim["headers"])).status_code == 404  # let in
    revoked = await client.post(f"/v1/keys/{victim['key'].id}/revoke", headers=admin)
    assert revoked.status_code == 200, revoked.text
    again = await client.get(url, headers=victim["headers"])
    assert again.status_code == 401


async def test_forget_during_an_inflight_lookup_is_not_undone(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticker = Ticker()
    verifier = _verifier(container, ticker)
    key, plaintext = await _key(container)
    read_done, go_on = asyncio.Event(), asyncio.Event()
    real_fetch = storage.fetch_key

    async def slow_fetch(uow: UnitOfWork, key_id: str) -> tuple[ApiKey, str] | None:
        found = await real_fetch(uow, key_id)  # read before the revocation commits
        read_done.set()
        await go_on.wait()  # ...and come back after it (and after forget)
        return found

    monkeypatch.setattr(storage, "fetch_key", slow_fetch)
    inflight = asyncio.create_task(verifier.authenticate(plaintext))
    await read_done.wait()
    monkeypatch.setattr(storage, "fetch_key", real_fetch)
    await _revoke_elsewhere(container, key.id)  # what POST /v1/keys/{id}/revoke commits
    verifier.forget(key.id)  # ...and then does in this process
    go_on.set()
    await inflight  # this request began before the revocation: accepting it is fine
    with pytest.raises(Unauthenticated):  # the next one, after the revoke answered, is not
        await verifier.authenticate(plaintext)


class Counting:
    """Counts the verifier's two reads: a key's record, and the recent revocations."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fetches = self.checks = 0
        fetch, revoked = storage.fetch_key, storage.revoked_since

        async def counted_fetch(uow: UnitOfWork, key_id: str) -> tuple[ApiKey, str] | None:
            self.fetches += 1
            return await fetch(uow, key_id)

        async def counted_revoked(uow: UnitOfWork, since_us: int, limit: int) -> list[str]:
            self.checks += 1
            return await revoked(uow, since_us, limit)

        monkeypatch.setattr(storage, "fetch_key", counted_fetch)
        monkeypatch.setattr(storage, "revoked_since", counted_revoked)


async def test_a_kept_record_costs_one_check_per_ttl_for_the_process_not_a_read_per_key(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticker = Ticker()
    verifier = _verifier(container, ticker)
    made = [await _key(container) for _ in range(5)]
    reads = Counting(monkeypatch)
    for second in range(30):
        ticker.now += 1.0
        for _, plaintext in made:
            await verifier.authenticate(plaintext)
        assert reads.checks == second + 1  # one question a second, whatever the keys
    assert reads.fetches == 5  # each record read once in 30 s (max_age_s is 60)
    ticker.now += 60
    for _, plaintext in made:
        await verifier.authenticate(plaintext)
    assert reads.fetches == 10  # ...and again after max_age_s


async def test_concurrent_requests_share_one_check(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticker = Ticker()
    verifier = _verifier(container, ticker)
    made = [await _key(container) for _ in range(3)]
    reads = Counting(monkeypatch)
    ticker.now += 5
    found = await asyncio.gather(*(verifier.authenticate(p) for _ in range(20) for _, p in made))
    assert {k.id for k in found} == {k.id for k, _ in made}
    assert reads.checks == 1


async def test_a_revocation_stamped_before_the_window_is_caught_by_the_max_age(
    container: Container,
) -> None:
    # A revoking process whose clock is 15 minutes behind: the check (last 10 minutes) does not
    # see it; the record, read again after max_age_s, does.
    ticker = Ticker()
    verifier = _verifier(container, ticker)
    key, plaintext = await _key(container)
    assert (await verifier.authenticate(plaintext)).id == key.id
    await _revoke_elsewhere(container, key.id, skew_us=-15 * 60 * 1_000_000)
    ticker.now += 30
    assert (await verifier.authenticate(plaintext)).id == key.id  # documented: ADR 0023
    ticker.now += 31
    with pytest.raises(Unauthenticated):
        await verifier.authenticate(plaintext)


async def test_more_revocations_than_the_check_reads_forget_every_key(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys_service, "_REVOKED_MAX", 2)
    ticker = Ticker()
    verifier = _verifier(container, ticker)
    kept, plaintext = await _key(container)
    assert (await verifier.authenticate(plaintext)).id == kept.id
    for _ in range(3):
        revoked, _ = await _key(container)
        await _revoke_elsewhere(container, revoked.id)
    reads = Counting(monkeypatch)
    ticker.now += 2
    assert (await verifier.authenticate(plaintext)).id == kept.id
    assert (reads.checks, reads.fetches) == (1, 1)  # the kept key was read again


async def test_the_limits_between_ttl_max_age_and_window(container: Container) -> None:
    for bad in ({"ttl_s": 5, "max_age_s": 2}, {"ttl_s": 1, "max_age_s": 700}):
        with pytest.raises(ValueError, match="max_age_s"):
            KeyVerifier(container.db, pepper=b"x", **bad)  # type: ignore[arg-type]


async def test_the_window_reaches_back_ten_minutes(container: Container, clock: FixedClock) -> None:
    ticker = Ticker()
    verifier = _verifier(container, ticker)
    key, plaintext = await _key(container)
    assert (await verifier.authenticate(plaintext)).id == key.id
    await _revoke_elsewhere(container, key.id)
    clock.advance(9 * 60)  # revoked nine minutes ago by the database's clock
    ticker.now += 2
    with pytest.raises(Unauthenticated):
        await verifier.authenticate(plaintext)


async def test_a_revocation_stamped_by_a_clock_ahead_is_a_revocation(
    container: Container,
) -> None:
    ticker = Ticker()
    verifier = _verifier(container, ticker)
    key, plaintext = await _key(container)
    assert (await verifier.authenticate(plaintext)).id == key.id
    await _revoke_elsewhere(container, key.id, skew_us=3_600_000_000)  # a node an hour ahead
    ticker.now += 2
    with pytest.raises(Unauthenticated):
        await verifier.authenticate(plaintext)


async def test_a_lookup_in_flight_across_a_check_that_saw_its_revocation_keeps_nothing(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticker = Ticker()
    verifier = _verifier(container, ticker)
    key, plaintext = await _key(container)
    other, other_plaintext = await _key(container)
    await verifier.authenticate(other_plaintext)  # checks at 1000.0
    ticker.now += 0.5
    read_done, go_on = asyncio.Event(), asyncio.Event()
    real_fetch = storage.fetch_key

    async def slow_fetch(uow: UnitOfWork, key_id: str) -> tuple[ApiKey, str] | None:
        found = await real_fetch(uow, key_id)  # read before the revocation commits
        read_done.set()
        await go_on.wait()
        return found

    monkeypatch.setattr(storage, "fetch_key", slow_fetch)
    inflight = asyncio.create_task(verifier.authenticate(plaintext))
    await read_done.wait()
    monkeypatch.setattr(storage, "fetch_key", real_fetch)
    await _revoke_elsewhere(container, key.id)
    ticker.now += 1.0
    assert (await verifier.authenticate(other_plaintext)).id == other.id  # this check saw it
    go_on.set()
    assert (await inflight).id == key.id  # began before the revocation: accepting it is fine
    with pytest.raises(Unauthenticated):  # not kept: read again, refused (no check since)
        await verifier.authenticate(plaintext)


async def test_a_failing_check_uses_no_kept_record_and_is_asked_again(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticker = Ticker()
    verifier = _verifier(container, ticker)
    key, plaintext = await _key(container)
    assert (await verifier.authenticate(plaintext)).id == key.id
    real = storage.revoked_since

    async def down(uow: UnitOfWork, since_us: int, limit: int) -> list[str]:
        raise ConnectionError("database down")

    monkeypatch.setattr(storage, "revoked_since", down)
    ticker.now += 2
    with pytest.raises(ConnectionError):
        await verifier.authenticate(plaintext)  # the kept record is not used unchecked
    monkeypatch.setattr(storage, "revoked_since", real)
    ticker.now += 0.01  # a request after that failure...
    assert (await verifier.authenticate(plaintext)).id == key.id  # ...asks again: answered


async def test_waiters_take_a_slow_or_failing_check_instead_of_asking_in_turn(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticker = Ticker()
    verifier = _verifier(container, ticker, ttl_s=0.1)
    key, plaintext = await _key(container)
    await verifier.authenticate(plaintext)
    calls = 0
    real = storage.revoked_since
    failing = False

    async def slow(uow: UnitOfWork, since_us: int, limit: int) -> list[str]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)  # the others arrive and queue behind this one
        ticker.now += 1  # ...and the query takes ten TTLs
        if failing:
            raise ConnectionError("database down")
        return await real(uow, since_us, limit)

    monkeypatch.setattr(storage, "revoked_since", slow)
    ticker.now += 1
    found = await asyncio.gather(*(verifier.authenticate(plaintext) for _ in range(10)))
    assert {k.id for k in found} == {key.id}
    assert calls == 1
    failing, calls = True, 0
    ticker.now += 1
    outcomes = await asyncio.gather(
        *(verifier.authenticate(plaintext) for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(o, ConnectionError) for o in outcomes)
    assert calls == 1

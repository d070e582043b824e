"""pybreaker's own test suite, case by case, against this project's breaker.

Each case of pybreaker's `tests/pybreaker_test.py` that applies to a breaker
of coroutine calls is written again here (not copied) and run against
`AsyncCircuitBreaker` on memory state and on `SharedCircuitState` with a real
`redis-server`. Where this project deliberately behaves otherwise, the test
asserts the difference, and its name says so (`..._unlike_pybreaker`). Cases
that do not apply (generators, tornado, a plain `def` guarded) are left
out; the decorator and `calling()` are pybreaker's cases for coroutines, with `async with`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pybreaker
import pytest
import redis

from circuit_breaker import AsyncCircuitBreaker, CutShort, NotPermitted
from offer_service import BREAKER_NAME, build_breaker, start_shared_state
from service.partner_client import PartnerDeclined
from service.redis_connection import single_server
from service.redis_state import SharedCircuitState
from service.settings import OfferSettings
from tests.breakers import PATIENCE, eventually
from tests.fake_clock import FakeClock
from tests.partner_stand_ins import PartnerDown, fail, ok
from tools.processes import RedisServer

CIRCUIT, TRIAL = f"{{{BREAKER_NAME}}}:circuit", f"{{{BREAKER_NAME}}}:trial"
BOUND = PATIENCE  # every wait on the shared state: tests/breakers.py says why


class Backend:
    """Makes breakers on memory state, or sharing one redis-server; moves their time."""

    def __init__(self, kind: str, server: RedisServer | None) -> None:
        self.kind = kind
        self.server = server
        self.admin = redis.Redis.from_url(server.url) if server else None
        self.made: list[SharedCircuitState] = []

    async def make(
        self,
        fail_max: int = 5,
        reset_timeout: float = 60,
        clock: FakeClock | None = None,
        **options: Any,
    ) -> AsyncCircuitBreaker:
        """A pybreaker.CircuitBreaker built with `options` (pybreaker's own keywords), wrapped."""
        clock = clock or FakeClock()
        shared = None
        if self.server is not None:
            shared = SharedCircuitState(
                single_server(self.server.url), BREAKER_NAME, fail_max, reset_timeout, 30, clock
            )
            # Tried again as the service tries it: one try can time out on a loaded machine.
            await start_shared_state(shared, OfferSettings(redis_url=self.server.url))
            self.made.append(shared)
            options["state_storage"] = shared
        breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max, reset_timeout=reset_timeout, name=BREAKER_NAME, **options
        )
        return AsyncCircuitBreaker(breaker, shared, clock=clock)

    def elapse(self, breaker: AsyncCircuitBreaker, seconds: float) -> None:
        """Let `seconds` pass for the breaker, and for Redis's measure of the open period."""
        clock = breaker._clock
        assert isinstance(clock, FakeClock)
        clock.advance(seconds)
        if self.admin is not None and self.admin.hexists(CIRCUIT, "opened_at"):
            self.admin.hincrby(CIRCUIT, "opened_at", -int(seconds * 1000))

    async def settled(self, *breakers: AsyncCircuitBreaker) -> None:
        """Every write has reached Redis and every instance has heard the result."""
        if self.admin is None:
            return
        admin = self.admin

        def heard() -> bool:
            version, seq = (int(v or 0) for v in admin.hmget(CIRCUIT, ["version", "seq"]))
            return all(
                b.shared is not None
                and not b.shared._writes_pending()
                and (b.shared._version, b.shared._seq) == (version, seq)
                for b in breakers
            )

        await eventually(heard, within=BOUND, what="every instance heard the last write")

    async def close(self) -> None:
        for shared in self.made:
            await shared.stop()
        if self.admin is not None:
            self.admin.close()


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    made = Backend(request.param, server)
    yield made
    await made.close()


@pytest.fixture
async def fleet_backend(redis_server: RedisServer) -> AsyncIterator[Backend]:
    made = Backend("redis", redis_server)
    yield made
    await made.close()


async def not_implemented() -> str:
    raise NotImplementedError


async def fail_times(breaker: AsyncCircuitBreaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(NotImplementedError):
            await breaker.call(not_implemented)


class Recorder(pybreaker.CircuitBreakerListener):
    """Writes down every event, as pybreaker's listener tests do."""

    def __init__(self) -> None:
        self.calls = ""
        self.transitions: list[str] = []

    def before_call(self, cb: Any, func: Any, *args: Any, **kwargs: Any) -> None:
        self.calls += "-"

    def success(self, cb: Any) -> None:
        self.calls += "success"

    def failure(self, cb: Any, exc: BaseException) -> None:
        self.calls += "failure"

    def state_change(self, cb: Any, old: pybreaker.CircuitBreakerState | None, new: Any) -> None:
        self.transitions.append(f"{old.name if old else None}->{new.name}")


# pybreaker's storage-based cases: the same on memory state and on Redis


async def test_a_successful_call_keeps_the_circuit_closed(backend: Backend) -> None:
    breaker = await backend.make()
    assert await breaker.call(ok) == "hot"
    assert breaker.fail_counter == 0
    assert breaker.state == "closed"


async def test_one_failed_call_counts_one_and_keeps_the_circuit_closed(backend: Backend) -> None:
    breaker = await backend.make()
    await fail_times(breaker, 1)
    assert breaker.fail_counter == 1
    assert breaker.state == "closed"


async def test_a_success_after_a_failure_resets_the_fail_counter(backend: Backend) -> None:
    breaker = await backend.make()
    await fail_times(breaker, 1)
    assert await breaker.call(ok) == "hot"
    assert breaker.fail_counter == 0
    assert breaker.state == "closed"
    await backend.settled(breaker)
    if backend.admin is not None:
        assert backend.admin.hget(CIRCUIT, "fail_counter") == b"0"


async def test_the_tripping_call_raises_the_partners_error_unlike_pybreaker(backend: Backend) -> None:
    """pybreaker raises CircuitBreakerError from the call that trips; here the caller sees what
    the partner did (the fallback says why), and only calls not attempted raise NotPermitted."""
    breaker = await backend.make(fail_max=3)
    await fail_times(breaker, 3)  # the third trips, and still raises NotImplementedError
    assert breaker.fail_counter == 3
    assert breaker.state == "open"
    with pytest.raises(NotPermitted) as refused:
        await breaker.call(not_implemented)
    assert isinstance(refused.value, pybreaker.CircuitBreakerError)  # pybreaker's handlers still catch it
    assert breaker.fail_counter == 3


@pytest.mark.parametrize("throw_new_error_on_trip", [True, False])
async def test_throw_new_error_on_trip_is_ignored_unlike_pybreaker(
    backend: Backend, throw_new_error_on_trip: bool
) -> None:
    breaker = await backend.make(fail_max=3, throw_new_error_on_trip=throw_new_error_on_trip)
    await fail_times(breaker, 3)
    assert breaker.state == "open"
    with pytest.raises(NotPermitted):
        await breaker.call(not_implemented)
    assert breaker.fail_counter == 3


async def test_a_failed_trial_after_the_reset_timeout_opens_again_and_counts(backend: Backend) -> None:
    breaker = await backend.make(fail_max=3, reset_timeout=30)
    await fail_times(breaker, 3)
    await backend.settled(breaker)
    backend.elapse(breaker, 30)
    await fail_times(breaker, 1)  # the trial: NotImplementedError, not pybreaker's CircuitBreakerError
    assert breaker.fail_counter == 4
    assert breaker.state == "open"
    with pytest.raises(NotPermitted, match="circuit-open"):
        await breaker.call(ok)


async def test_a_successful_trial_after_the_reset_timeout_closes_and_calls_once(backend: Backend) -> None:
    breaker = await backend.make(fail_max=3, reset_timeout=30)
    calls = 0

    async def counted() -> str:
        nonlocal calls
        calls += 1
        return "hot"

    await fail_times(breaker, 3)
    with pytest.raises(NotPermitted):
        await breaker.call(counted)
    await backend.settled(breaker)
    backend.elapse(breaker, 30)
    assert await breaker.call(counted) == "hot"
    assert calls == 1
    assert breaker.fail_counter == 0
    assert breaker.state == "closed"


async def test_the_open_period_is_measured_on_the_monotonic_clock_unlike_pybreaker(backend: Backend) -> None:
    """pybreaker compares `opened_at` with `datetime.now()`; here the wall clock is never read:
    moving `opened_at` far into the past admits no trial, moving the injected clock does."""
    breaker = await backend.make(fail_max=1, reset_timeout=30)
    await fail_times(breaker, 1)
    await backend.settled(breaker)
    if backend.kind == "memory":
        breaker.state_machine._state_storage.opened_at = datetime(2000, 1, 1, tzinfo=UTC)
    with pytest.raises(NotPermitted, match="circuit-open"):
        await breaker.call(ok)
    breaker._clock.advance(30)  # type: ignore[attr-defined]
    if backend.admin is not None:
        backend.admin.hincrby(CIRCUIT, "opened_at", -30_000)
    assert await breaker.call(ok) == "hot"


async def test_a_failed_call_when_half_open_by_hand_opens_the_circuit(backend: Backend) -> None:
    breaker = await backend.make()
    breaker.state_machine.half_open()
    assert breaker.state == "half-open"
    assert breaker.fail_counter == 0
    await fail_times(breaker, 1)
    if backend.kind == "memory":
        assert breaker.fail_counter == 1
        assert breaker.state == "open"
    else:
        # Unlike pybreaker: a half-open made by hand is this process's alone (pybreaker's
        # half_open() is not an operator's action here); the fleet's closed circuit wins.
        assert breaker.fail_counter == 1
        assert breaker.state == "closed"


async def test_a_successful_call_when_half_open_by_hand_closes_the_circuit(backend: Backend) -> None:
    breaker = await backend.make()
    breaker.state_machine.half_open()
    assert await breaker.call(ok) == "hot"
    assert breaker.fail_counter == 0
    assert breaker.state == "closed"


@pytest.mark.parametrize("how", ["pybreaker-open", "trip"])
async def test_the_circuit_can_be_opened_by_hand(backend: Backend, how: str) -> None:
    breaker = await backend.make(fail_max=3)
    if how == "trip":
        breaker.trip()
    else:
        breaker.state_machine.open()
    await backend.settled(breaker)
    assert breaker.state == "open"
    with pytest.raises(NotPermitted, match="circuit-open"):
        await breaker.call(not_implemented)
    if backend.admin is not None:
        assert backend.admin.hget(CIRCUIT, "state") == b"open"


@pytest.mark.parametrize("how", ["pybreaker-close", "force-close"])
async def test_the_circuit_can_be_closed_by_hand(backend: Backend, how: str) -> None:
    breaker = await backend.make(fail_max=3)
    await fail_times(breaker, 3)
    with pytest.raises(NotPermitted):
        await breaker.call(not_implemented)
    assert breaker.fail_counter == 3
    if how == "force-close":
        breaker.reset()
    else:
        breaker.state_machine.close()
    assert breaker.fail_counter == 0
    assert breaker.state == "closed"
    await backend.settled(breaker)
    if backend.admin is not None:
        assert backend.admin.hget(CIRCUIT, "state") == b"closed"


async def test_listeners_hear_every_transition(backend: Backend) -> None:
    recorder = Recorder()
    breaker = await backend.make(reset_timeout=30, listeners=[recorder])
    breaker.trip()
    await backend.settled(breaker)
    backend.elapse(breaker, 30)
    assert await breaker.call(ok) == "hot"  # the trial: half-open, then closed
    await backend.settled(breaker)
    assert recorder.transitions == ["closed->open", "open->half-open", "half-open->closed"]


async def test_listeners_hear_every_call(backend: Backend) -> None:
    recorder = Recorder()
    breaker = await backend.make(listeners=[recorder])
    assert await breaker.call(ok) == "hot"
    await fail_times(breaker, 1)
    assert recorder.calls == "-success-failure"


# pybreaker's configuration cases


@pytest.mark.parametrize("state", ["open", "closed", "half-open"])
async def test_the_initial_state_comes_from_the_storage(state: str) -> None:
    breaker = AsyncCircuitBreaker(
        pybreaker.CircuitBreaker(state_storage=pybreaker.CircuitMemoryStorage(state))
    )
    assert breaker.state_machine.state.name == state
    assert breaker.state_name == state


def test_build_breaker_defaults_are_the_walkthroughs_unlike_pybreaker() -> None:
    """pybreaker defaults to fail_max=5, reset_timeout=60, nothing excluded, no listeners."""
    breaker = build_breaker(OfferSettings())
    assert breaker.fail_counter == 0
    assert (breaker.state_machine.fail_max, breaker.state_machine.reset_timeout) == (3, 15)
    assert breaker.state_machine.excluded_exceptions == (PartnerDeclined,)
    assert breaker in breaker.state_machine.listeners  # it listens, to cut calls short when the circuit opens
    assert breaker.state_machine._state_storage.name == "memory"
    assert breaker.state_machine.name == BREAKER_NAME


async def test_changing_fail_max_at_run_time(backend: Backend) -> None:
    breaker = await backend.make(fail_max=5)
    breaker.state_machine.fail_max = 2
    await fail_times(breaker, 2)
    await backend.settled(breaker)
    if backend.kind == "memory":
        assert breaker.state == "open"
    else:
        # Unlike pybreaker: the fleet trips in Redis on the fail_max the shared state was built
        # with; this process's own trip at the new fail_max is refused and undone.
        await eventually(lambda: breaker.state == "closed", what="the trip undone")
        assert backend.admin is not None
        assert backend.admin.hget(CIRCUIT, "state") == b"closed"


async def test_changing_reset_timeout_at_run_time(backend: Backend) -> None:
    breaker = await backend.make(fail_max=1, reset_timeout=60)
    breaker.state_machine.reset_timeout = 10
    await fail_times(breaker, 1)
    await backend.settled(breaker)
    if backend.kind == "memory":
        assert breaker.seconds_until_trial() == 10
    else:
        # Unlike pybreaker: the shared state keeps the reset timeout it was built with.
        assert breaker.seconds_until_trial() == pytest.approx(60, abs=0.1)
        backend.elapse(breaker, 10)
        with pytest.raises(NotPermitted, match="circuit-open"):
            await breaker.call(ok)


async def test_calls_with_arguments_as_pybreaker_passes_them(backend: Backend) -> None:
    async def echo(*args: object, **kwargs: object) -> tuple[object, ...]:
        return (*args, kwargs)

    breaker = await backend.make()
    assert await breaker.call(echo, 42, "abc", a=1) == (42, "abc", {"a": 1})
    assert await breaker.call(functools.partial(echo, 42)) == (42, {})


async def test_the_decorator_guards_every_call_with_its_arguments(backend: Backend) -> None:
    breaker = await backend.make(fail_max=2)

    @breaker
    async def maybe(fail_it: bool, *, value: str) -> str:
        if fail_it:
            raise NotImplementedError
        return value

    assert await maybe(False, value="hot") == "hot"
    for _ in range(2):
        with pytest.raises(NotImplementedError):
            await maybe(True, value="x")
    assert breaker.state == "open"
    with pytest.raises(NotPermitted):
        await maybe(False, value="hot")


def test_the_decorator_refuses_a_plain_def_unlike_pybreaker() -> None:
    breaker = AsyncCircuitBreaker(pybreaker.CircuitBreaker())
    with pytest.raises(TypeError, match="not a coroutine function"):

        @breaker
        def plain() -> str:
            return "hot"


async def test_calling_counts_a_failure_and_a_success_as_pybreakers_with_block(backend: Backend) -> None:
    breaker = await backend.make(fail_max=2)
    with pytest.raises(NotImplementedError):
        async with breaker.calling():
            raise NotImplementedError
    assert breaker.fail_counter == 1
    async with breaker.calling():
        pass
    assert breaker.fail_counter == 0
    for _ in range(2):
        with pytest.raises(NotImplementedError):
            async with breaker.calling():
                raise NotImplementedError
    assert breaker.state == "open"
    with pytest.raises(NotPermitted):
        async with breaker.calling():
            pass


async def test_listeners_added_later_hear_the_calls(backend: Backend) -> None:
    breaker = await backend.make()
    first, second = Recorder(), Recorder()
    breaker.state_machine.add_listeners(first, second)
    await breaker.call(ok)
    breaker.state_machine.remove_listener(second)
    await breaker.call(ok)
    assert (first.calls, second.calls) == ("-success-success", "-success")


async def test_excluded_errors_by_type_subclass_or_predicate_count_as_successes(backend: Backend) -> None:
    class Flagged(Exception):
        def __init__(self, value: str) -> None:
            self.value = value

    def good(exc: BaseException) -> bool:
        return isinstance(exc, Flagged) and exc.value == "good"

    breaker = await backend.make(exclude=[LookupError, good])

    async def raising(exc: Exception) -> str:
        raise exc

    for exc, counter in [
        (NotImplementedError(), 1),
        (LookupError(), 0),
        (NotImplementedError(), 1),
        (KeyError(), 0),  # a subclass of an excluded type
        (Flagged("bad"), 1),
        (Flagged("good"), 0),  # excluded by the predicate
    ]:
        with pytest.raises(type(exc)):
            await breaker.call(functools.partial(raising, exc))
        assert breaker.fail_counter == counter, exc
    breaker.state_machine.add_excluded_exception(NotImplementedError)
    with pytest.raises(NotImplementedError):
        await breaker.call(not_implemented)
    assert breaker.fail_counter == 0


async def test_success_threshold_one_closes_on_the_first_trial_success(backend: Backend) -> None:
    breaker = await backend.make(fail_max=3, reset_timeout=30)
    await fail_times(breaker, 3)
    await backend.settled(breaker)
    backend.elapse(breaker, 30)
    assert await breaker.call(ok) == "hot"
    assert breaker.state == "closed"
    assert breaker.state_machine.success_counter == 0


async def test_success_threshold_above_one_needs_that_many_trials_one_at_a_time(backend: Backend) -> None:
    breaker = await backend.make(fail_max=3, reset_timeout=30, success_threshold=3)
    await fail_times(breaker, 3)
    await backend.settled(breaker)
    backend.elapse(breaker, 30)
    assert await breaker.call(ok) == "hot"
    assert breaker.state == "half-open"
    assert breaker.state_machine.success_counter == 1
    # With Redis too: the instance holding the fleet's lease takes it again for its next trial.
    await backend.settled(breaker)
    assert await breaker.call(ok) == "hot"
    assert breaker.state_machine.success_counter == 2
    assert await breaker.call(ok) == "hot"
    assert breaker.state == "closed"
    assert breaker.state_machine.success_counter == 0


async def test_success_threshold_a_failed_trial_resets_the_success_counter(backend: Backend) -> None:
    breaker = await backend.make(fail_max=3, reset_timeout=30, success_threshold=3)
    await fail_times(breaker, 3)
    await backend.settled(breaker)
    backend.elapse(breaker, 30)
    assert await breaker.call(ok) == "hot"
    assert breaker.state_machine.success_counter == 1
    if backend.kind == "redis":
        return  # the next trial waits for the lease: see the test above
    await fail_times(breaker, 1)
    assert breaker.state == "open"
    assert breaker.state_machine.success_counter == 0


# pybreaker's cases for a new breaker on existing state


@pytest.mark.parametrize("state", ["open", "closed"])
async def test_an_instance_joining_keeps_the_fleets_count_and_open_period(
    fleet_backend: Backend, state: str
) -> None:
    first = await fleet_backend.make(fail_max=3, reset_timeout=30)
    before_the_trip = time.monotonic()
    await fail_times(first, 3 if state == "open" else 1)
    await fleet_backend.settled(first)
    left = first.seconds_until_trial()  # on the first's clock, which stands still
    second = await fleet_backend.make(fail_max=3, reset_timeout=30)
    assert second.state_machine.state.name == state
    assert second.fail_counter == first.fail_counter
    # The second reads the open period's age off Redis's clock, which runs: it may be short
    # by the real time since the trip (seen: 1.25 s to start the second on a loaded machine).
    since_the_trip = time.monotonic() - before_the_trip
    assert left - since_the_trip - 0.1 < second.seconds_until_trial() <= left + 0.1, since_the_trip
    await asyncio.sleep(0.05)
    assert first.fail_counter == (3 if state == "open" else 1)  # not reset by the newcomer


# pybreaker's Redis storage cases


async def test_the_keys_share_the_breakers_hash_tag_unlike_pybreakers_namespace(
    fleet_backend: Backend,
) -> None:
    """pybreaker keeps three keys (`pybreaker:fail_counter`, ...:success_counter, ...:state); here
    one hash, one lease and, per instance that has written, the id of its last batch (so that a
    batch sent again is applied once), all in one Redis Cluster slot; the success counter
    stays in-process."""
    breaker = await fleet_backend.make(reset_timeout=30)
    breaker.trip()
    await fleet_backend.settled(breaker)
    fleet_backend.elapse(breaker, 30)
    started = asyncio.Event()

    async def trial() -> str:
        started.set()
        await asyncio.sleep(0.2)
        return "hot"

    probing = asyncio.create_task(breaker.call(trial))
    await asyncio.wait_for(started.wait(), BOUND)
    assert fleet_backend.admin is not None
    keys = sorted(fleet_backend.admin.keys())
    written = [key for key in keys if key.startswith(b"{partner-offer}:written:")]
    assert len(written) <= 1  # this one instance's, once it has written
    assert sorted(set(keys) - set(written)) == [CIRCUIT.encode(), TRIAL.encode()]
    assert await asyncio.wait_for(probing, BOUND) == "hot"


async def test_when_redis_fails_the_local_view_goes_on_unlike_pybreakers_fallback_state(
    fleet_backend: Backend,
) -> None:
    """pybreaker answers `fallback_circuit_state` while Redis errors; here the process goes on
    with the state it had (an open circuit stays open, failures still count and trip)."""
    breaker = await fleet_backend.make(fail_max=2)
    await fail_times(breaker, 1)
    await fleet_backend.settled(breaker)
    assert fleet_backend.server is not None
    fleet_backend.server.stop()
    assert breaker.fail_counter == 1
    await fail_times(breaker, 1)
    assert breaker.state == "open"
    await eventually(
        lambda: breaker.shared is not None and not breaker.shared.connected, what="outage noticed"
    )
    assert breaker.snapshot()["degraded"] is True


async def test_a_lost_record_is_seeded_from_the_local_view_unlike_pybreakers_missing_state(
    fleet_backend: Backend,
) -> None:
    """pybreaker re-creates a missing state as `fallback_circuit_state` with a zero count;
    here the instances seed it from their own view: the count and an open circuit survive."""
    breaker = await fleet_backend.make(fail_max=3)
    await fail_times(breaker, 2)
    await fleet_backend.settled(breaker)
    assert fleet_backend.admin is not None
    admin = fleet_backend.admin
    admin.flushall()
    await eventually(lambda: admin.hget(CIRCUIT, "fail_counter") == b"2", within=BOUND, what="seeded")
    assert breaker.fail_counter == 2
    assert breaker.state == "closed"


async def test_opened_at_is_stamped_by_redis_in_milliseconds(fleet_backend: Backend) -> None:
    """pybreaker's storage keeps the caller's wall clock in whole seconds (set-if-greater
    in cluster mode); here Redis stamps its own clock, in milliseconds."""
    breaker = await fleet_backend.make(fail_max=1)
    assert fleet_backend.admin is not None
    redis_now = fleet_backend.admin.time()
    await fail_times(breaker, 1)
    await fleet_backend.settled(breaker)
    opened_at = int(fleet_backend.admin.hget(CIRCUIT, "opened_at") or 0)
    assert abs(opened_at - (redis_now[0] * 1000 + redis_now[1] // 1000)) < 2000


# pybreaker's thread-safety cases, as concurrent tasks


async def test_concurrent_failures_are_all_counted(backend: Backend) -> None:
    """Three threads of 500 failures in pybreaker; here three tasks, on three instances with Redis."""
    breakers = [await backend.make(fail_max=3000) for _ in range(3 if backend.kind == "redis" else 1)]

    async def failing() -> str:
        await asyncio.sleep(0)
        raise NotImplementedError

    async def fail_500(breaker: AsyncCircuitBreaker) -> None:
        for _ in range(500):
            with pytest.raises(NotImplementedError):
                await breaker.call(failing)

    await asyncio.wait_for(
        asyncio.gather(*(fail_500(breakers[n % len(breakers)]) for n in range(3))), BOUND * 4
    )
    await backend.settled(*breakers)
    assert [b.fail_counter for b in breakers] == [1500] * len(breakers)
    if backend.admin is not None:
        assert backend.admin.hget(CIRCUIT, "fail_counter") == b"1500"


async def test_concurrent_callers_after_the_reset_timeout_make_one_trial_unlike_pybreaker(
    backend: Backend,
) -> None:
    recorder = Recorder()
    breaker = await backend.make(fail_max=1, reset_timeout=30, listeners=[recorder])
    breaker.trip()
    await backend.settled(breaker)
    backend.elapse(breaker, 30)
    calls = 0

    async def slow_failure() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        raise NotImplementedError

    results = await asyncio.wait_for(
        asyncio.gather(*(breaker.call(slow_failure) for _ in range(5)), return_exceptions=True), BOUND
    )
    assert calls == 1
    assert sum(isinstance(r, NotImplementedError) for r in results) == 1
    assert recorder.transitions.count("open->half-open") == 1


async def test_concurrent_failures_count_no_further_than_fail_max(backend: Backend) -> None:
    """pybreaker: exactly fail_max in memory; with Redis, under fail_max + the callers."""
    breakers = [await backend.make(fail_max=30) for _ in range(3 if backend.kind == "redis" else 1)]
    version_before = int(backend.admin.hget(CIRCUIT, "version") or 0) if backend.admin else 0

    async def failing() -> str:
        await asyncio.sleep(0)
        raise NotImplementedError

    async def keep_failing(breaker: AsyncCircuitBreaker) -> None:
        for _ in range(200):
            with contextlib.suppress(NotImplementedError, NotPermitted, CutShort):
                await breaker.call(failing)

    await asyncio.wait_for(asyncio.gather(*(keep_failing(b) for b in breakers for _ in range(3))), BOUND * 4)
    await backend.settled(*breakers)
    counts = {b.fail_counter for b in breakers}
    if backend.kind == "memory":
        assert counts == {30}
    else:
        # Like pybreaker's Redis storage, the fleet's count can pass fail_max by the failures
        # other instances sent before they heard of the trip; the circuit still opens once.
        assert backend.admin is not None
        (count,) = counts
        assert 30 <= count < 30 * len(breakers)
        assert int(backend.admin.hget(CIRCUIT, "version") or 0) == version_before + 1


def test_a_circuit_breaker_error_is_what_callers_of_either_catch() -> None:
    assert issubclass(NotPermitted, pybreaker.CircuitBreakerError)


async def test_pybreakers_own_call_still_works_on_the_same_breaker() -> None:
    breaker = build_breaker(OfferSettings(circuit_fail_max=2), clock=FakeClock())
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    assert breaker.state_machine.call(lambda: "sync") == "sync"
    assert breaker.fail_counter == 0

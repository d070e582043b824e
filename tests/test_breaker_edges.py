"""The breaker at its edges, through its public API on an injected clock: the first outcome a
permit reports and no other, what listeners and errors say, a storage that another writer
changed, the rate policy's window at its bucket edges and on a clock that starts at 0, the
duration that makes a call slow, and calls cut short when the circuit opens twice at once.

Each rule here is one a user relies on that the broader tests pass through without pinning
down (`make mutation` found them); in this process, in milliseconds.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
from collections.abc import Callable
from typing import Any

import pybreaker
import pytest

from circuit_breaker import (
    RATE_POLICY_FAIL_MAX,
    AsyncCircuitBreaker,
    CallWindow,
    CutShort,
    NotPermitted,
    RatePolicy,
    TrialExpired,
    WindowCounts,
)
from tests.fake_clock import FakeClock
from tests.partner_stand_ins import Busy, PartnerDown, busy, fail, hanging, ok

BOUND = 5.0
NAME = "partner"


def consecutive(
    clock: FakeClock,
    fail_max: int = 1,
    reset_timeout: float = 15.0,
    storage: pybreaker.CircuitBreakerStorage | None = None,
    max_trial_seconds: float = 60.0,
    **options: Any,
) -> AsyncCircuitBreaker:
    machine = pybreaker.CircuitBreaker(
        fail_max=fail_max, reset_timeout=reset_timeout, name=NAME, state_storage=storage, **options
    )
    return AsyncCircuitBreaker(machine, clock=clock, max_trial_seconds=max_trial_seconds)


def rate(
    clock: FakeClock,
    listeners: list[pybreaker.CircuitBreakerListener] | None = None,
    storage: pybreaker.CircuitBreakerStorage | None = None,
    exclude: list[type[BaseException]] | None = None,
    **policy: Any,
) -> AsyncCircuitBreaker:
    settings = {"window": 10.0, "min_calls": 100, "failure_rate": 0.5, "slow_call_seconds": 5.0, **policy}
    machine = pybreaker.CircuitBreaker(
        fail_max=RATE_POLICY_FAIL_MAX,
        reset_timeout=15,
        name=NAME,
        listeners=listeners,
        state_storage=storage,
        exclude=exclude,
    )
    return AsyncCircuitBreaker(machine, clock=clock, policy=RatePolicy(**settings))


def taking(clock: FakeClock, seconds: float, error: Exception | None = None) -> Callable[[], Any]:
    """A partner call that takes `seconds` on `clock`, then answers or raises `error`."""

    async def call() -> str:
        clock.advance(seconds)
        if error is not None:
            raise error
        return "hot"

    return call


class Heard(pybreaker.CircuitBreakerListener):
    """A listener that hears every call, as a metrics exporter would."""

    def __init__(self) -> None:
        self.funcs: list[object] = []

    def before_call(self, cb: pybreaker.CircuitBreaker, func: Any, *args: Any, **kwargs: Any) -> None:
        self.funcs.append(func)


async def fetch_offer() -> str:
    return "hot"


# What the errors and the log say.


def test_cut_short_and_an_expired_trial_say_what_happened() -> None:
    assert str(CutShort()) == "cut-short" and CutShort().reason == "cut-short"
    assert str(TrialExpired(2.5)) == "the half-open trial reported no outcome within 2.5s"


async def test_an_open_circuit_refuses_admit_and_calling_with_its_reason() -> None:
    breaker = consecutive(FakeClock())
    breaker.trip()
    with pytest.raises(NotPermitted) as refused:
        await breaker.admit()
    assert refused.value.reason == "circuit-open"
    with pytest.raises(NotPermitted) as refused:
        async with breaker.calling():
            pass
    assert refused.value.reason == "circuit-open"


async def test_a_plain_def_is_refused_naming_it_and_saying_what_to_write() -> None:
    breaker = consecutive(FakeClock())

    def fetch_price(sku: str) -> str:
        return "9.99"

    for attempt in (lambda: breaker(fetch_price), lambda: breaker(fallback=lambda exc: "cold")(fetch_price)):
        with pytest.raises(TypeError) as refused:
            attempt()
        message = str(refused.value)
        assert message.startswith(f"{fetch_price.__qualname__} is not a coroutine function: ")
        assert "write `async def fetch_price`" in message
        assert "`@state_machine` / `state_machine.call(f)` for a plain def" in message
    with pytest.raises(TypeError) as refused:
        await breaker.call(fetch_price, "sku-1")  # type: ignore[arg-type]
    assert str(refused.value).startswith(f"{fetch_price.__qualname__} is not a coroutine function: ")


async def test_a_coroutine_passed_to_call_is_refused_saying_what_to_write_and_closed() -> None:
    breaker = consecutive(FakeClock())
    message = ""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            await breaker.call(fetch_offer())  # type: ignore[arg-type]
        except TypeError as refused:
            message = str(refused)
        gc.collect()  # a coroutine never awaited warns when it is collected
    assert message == (
        "call() takes the function and its arguments, not a coroutine: "
        "write `await breaker.call(fetch, arg)`, not `await breaker.call(fetch(arg))`"
    )
    assert [str(warning.message) for warning in caught] == []  # no "never awaited" on top


def test_a_plain_callable_object_is_refused_by_what_it_is() -> None:
    """An object has no name of its own: the message shows its repr, and a placeholder name."""
    breaker = consecutive(FakeClock())

    class Fetch:
        def __call__(self) -> str:
            return "hot"

        def __repr__(self) -> str:
            return "<the price fetcher>"

    with pytest.raises(TypeError) as refused:
        breaker(Fetch())
    message = str(refused.value)
    assert message.startswith("<the price fetcher> is not a coroutine function: ")
    assert "write `async def f`" in message


async def test_an_expired_trial_is_logged_with_the_breakers_name_and_the_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    breaker = consecutive(clock, max_trial_seconds=2)
    breaker.trip()
    clock.advance(15)
    permit = await breaker.admit()
    clock.advance(2)
    gc.collect()  # what earlier tests left is not this test's to log
    with caplog.at_level(logging.WARNING, logger="circuit_breaker"), pytest.raises(NotPermitted):
        await breaker.admit()
    assert [record.getMessage() for record in caplog.records] == [
        f"{NAME}: the half-open trial reported no outcome within 2s; counted as a failure"
    ]
    permit.release()


async def test_only_a_trial_dropped_unreported_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    breaker = consecutive(clock)
    breaker.trip()
    clock.advance(15)
    gc.collect()  # what earlier tests left is not this test's to log
    with caplog.at_level(logging.WARNING, logger="circuit_breaker"):
        reported = await breaker.admit()
        assert reported.is_trial
        reported.failure(PartnerDown())
        del reported
        gc.collect()
        assert caplog.records == []  # reported: nothing to say
        clock.advance(15)
        dropped = await breaker.admit()
        assert dropped.is_trial
        del dropped
        gc.collect()
    assert [record.getMessage() for record in caplog.records] == [
        f"{NAME}: a trial's permit was dropped without success(), failure() or release(); "
        "report every permit (or use call() or calling()); further ones are not logged"
    ]


# What listeners hear of a call.


async def test_listeners_hear_the_function_of_every_call_in_every_state() -> None:
    clock = FakeClock()
    breaker = consecutive(clock)
    heard = Heard()
    breaker.add_listener(heard)
    (await breaker.admit(fetch_offer)).success()
    async with breaker.calling():
        pass
    (await breaker.admit()).success()
    breaker.trip()
    clock.advance(15)
    (await breaker.admit(fetch_offer)).release()  # a trial
    assert await breaker.call(fetch_offer) == "hot"  # a trial
    breaker.trip()
    clock.advance(15)
    async with breaker.calling():  # a trial
        pass
    assert len(heard.funcs) == 6
    assert [heard.funcs[index] for index in (0, 3, 4)] == [fetch_offer] * 3
    # Without a function of its own, a listener still gets one it can name.
    for func in (heard.funcs[1], heard.funcs[2], heard.funcs[5]):
        assert callable(func) and isinstance(getattr(func, "__name__", None), str)


# A permit reports once.


async def test_a_permit_reports_only_its_first_outcome() -> None:
    clock = FakeClock()
    breaker = consecutive(clock, fail_max=1)
    succeeded = await breaker.admit()
    succeeded.success()
    succeeded.failure(PartnerDown())
    released = await breaker.admit()
    released.release()
    released.failure(PartnerDown())
    assert breaker.state == "closed" and breaker.fail_counter == 0


async def test_a_block_that_succeeded_has_reported_and_ignores_a_later_outcome() -> None:
    breaker = consecutive(FakeClock(), fail_max=1)
    async with breaker.calling() as permit:
        pass
    permit.failure(PartnerDown())  # the block's success came first
    permit.success()
    assert breaker.state == "closed" and breaker.fail_counter == 0


async def test_a_trials_success_reported_twice_counts_once_towards_success_threshold() -> None:
    clock = FakeClock()
    breaker = consecutive(clock, success_threshold=2)
    breaker.trip()
    clock.advance(15)
    trial = await breaker.admit()
    trial.success()
    trial.success()
    assert breaker.state == "half-open"  # one of the two successes it needs
    (await breaker.admit()).success()
    assert breaker.state == "closed"


# A storage another writer changed (pybreaker's own Redis storage, say).


class StateElsewhere(pybreaker.CircuitMemoryStorage):
    """A storage whose `state` is not its `_state` field, as pybreaker's Redis storage
    reads Redis: the breaker must ask it, not read the memory storage's field."""

    def __init__(self) -> None:
        super().__init__(pybreaker.STATE_CLOSED)
        self.elsewhere = pybreaker.STATE_CLOSED

    @property
    def state(self) -> str:
        return self.elsewhere

    @state.setter
    def state(self, state: str) -> None:
        self.elsewhere = state


@pytest.mark.parametrize("kind", [pybreaker.CircuitMemoryStorage, StateElsewhere])
async def test_a_storage_another_writer_opened_is_obeyed_by_every_way_of_calling(kind: type) -> None:
    async def admit(breaker: AsyncCircuitBreaker) -> None:
        await breaker.admit()

    async def calling(breaker: AsyncCircuitBreaker) -> None:
        async with breaker.calling():
            pass

    async def call(breaker: AsyncCircuitBreaker) -> None:
        await breaker.call(ok)

    for way in (admit, calling, call):
        storage = kind(pybreaker.STATE_CLOSED) if kind is pybreaker.CircuitMemoryStorage else kind()
        breaker = consecutive(FakeClock(), storage=storage)
        assert breaker.state_name == "closed"
        storage.state = pybreaker.STATE_OPEN  # another process opened it
        with pytest.raises(NotPermitted):
            await way(breaker)
        assert breaker.state_name == "open", way.__name__


@pytest.mark.parametrize("kind", [pybreaker.CircuitMemoryStorage, StateElsewhere])
async def test_a_success_after_another_writer_opened_the_storage_resets_nothing(kind: type) -> None:
    """The success's end reads the storage too: opened meanwhile, the count is not reset."""
    storage = kind(pybreaker.STATE_CLOSED) if kind is pybreaker.CircuitMemoryStorage else kind()
    breaker = consecutive(FakeClock(), fail_max=3, storage=storage)
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    permit = await breaker.admit()
    storage.state = pybreaker.STATE_OPEN  # another process opened it while the call ran
    permit.success()
    assert storage.counter == 1


async def test_a_storage_another_writer_closed_counts_the_next_call_with_its_duration() -> None:
    clock = FakeClock()
    storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
    breaker = rate(clock, storage=storage)
    breaker.trip()
    storage.state = pybreaker.STATE_CLOSED  # another process closed it
    permit = await breaker.admit()
    clock.advance(5)
    permit.success()
    assert breaker.state == "closed"
    assert breaker.window_counts() == WindowCounts(calls=1, failures=0, slow=1)


async def test_a_failure_after_another_writer_closed_the_storage_counts() -> None:
    storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
    breaker = consecutive(FakeClock(), fail_max=2, storage=storage)
    breaker.trip()
    storage.state = pybreaker.STATE_CLOSED  # another process closed it
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    assert breaker.state == "closed" and breaker.fail_counter == 1


# The rate policy: when a call is slow.


@pytest.mark.parametrize(
    "hears_calls", [False, True], ids=["no listener hears calls", "a listener hears calls"]
)
async def test_a_call_of_exactly_slow_call_seconds_is_slow_whichever_way_it_is_made(
    hears_calls: bool,
) -> None:
    clock = FakeClock()
    breaker = rate(clock, listeners=[Heard()] if hears_calls else None, window=60.0)
    assert await breaker.call(taking(clock, 5.0)) == "hot"
    assert await breaker.call(taking(clock, 4.5)) == "hot"
    with pytest.raises(PartnerDown):
        await breaker.call(taking(clock, 5.0, PartnerDown()))
    permit = await breaker.admit()
    clock.advance(5.0)
    permit.success()
    async with breaker.calling():
        clock.advance(5.0)
    assert breaker.window_counts() == WindowCounts(calls=5, failures=1, slow=4)


@pytest.mark.parametrize(
    "hears_calls", [False, True], ids=["no listener hears calls", "a listener hears calls"]
)
async def test_a_quick_call_is_not_slow_whichever_way_it_is_made(hears_calls: bool) -> None:
    """Each way times the call from its own start, not from the clock's zero."""
    clock = FakeClock()
    breaker = rate(clock, listeners=[Heard()] if hears_calls else None, window=60.0)
    assert await breaker.call(taking(clock, 1.0)) == "hot"
    permit = await breaker.admit()
    clock.advance(1.0)
    permit.success()
    async with breaker.calling():
        clock.advance(1.0)
    permit = await breaker.admit()
    clock.advance(1.0)
    permit.failure(PartnerDown())
    assert breaker.window_counts() == WindowCounts(calls=4, failures=1, slow=0)


async def test_the_snapshot_shows_the_window_its_shares_and_its_thresholds() -> None:
    clock = FakeClock()
    breaker = rate(clock, failure_rate=0.6, slow_call_rate=0.8, slow_call_seconds=2.0, min_calls=50)
    assert breaker.snapshot()["window"]["failure_rate"] is None  # no call yet: no share
    await breaker.call(ok)
    await breaker.call(ok)
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    await breaker.call(taking(clock, 2.0))
    assert breaker.snapshot()["window"] == {
        "seconds": 10.0,
        "calls": 4,
        "failures": 1,
        "slow_calls": 1,
        "failure_rate": 0.25,
        "slow_call_rate": 0.25,
        "min_calls": 50,
        "failure_rate_threshold": 0.6,
        "slow_call_rate_threshold": 0.8,
        "slow_call_seconds": 2.0,
    }
    assert consecutive(clock).snapshot()["window"] is None


async def test_a_retry_after_under_a_second_still_holds_a_shorter_open_period() -> None:
    clock = FakeClock()
    breaker = consecutive(clock, reset_timeout=0.25)
    with pytest.raises(Busy):
        await breaker.call(busy, 0.5)
    assert breaker.state == "open"
    assert breaker.seconds_until_trial() == 0.5


@pytest.mark.parametrize(
    "hears_calls", [False, True], ids=["no listener hears calls", "a listener hears calls"]
)
async def test_an_excluded_error_is_a_call_in_the_window_but_not_a_failure(hears_calls: bool) -> None:
    clock = FakeClock()
    breaker = rate(clock, listeners=[Heard()] if hears_calls else None, exclude=[KeyError])

    async def declined() -> str:
        raise KeyError("a no from a healthy partner")

    with pytest.raises(KeyError):
        await breaker.call(declined)
    await breaker.call(ok)
    assert breaker.window_counts() == WindowCounts(calls=2, failures=0, slow=0)


async def test_a_retry_after_is_capped_at_five_minutes_unless_told_otherwise() -> None:
    clock = FakeClock()
    breaker = consecutive(clock)
    with pytest.raises(Busy):
        await breaker.call(busy, 3600.0)
    assert breaker.seconds_until_trial() == 300.0


@pytest.mark.parametrize("cap", [0.5, 1.0])
async def test_a_retry_after_cap_of_a_second_or_less_still_holds(cap: float) -> None:
    clock = FakeClock()
    machine = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=0.25, name=NAME)
    breaker = AsyncCircuitBreaker(machine, clock=clock, max_retry_after=cap)
    with pytest.raises(Busy):
        await breaker.call(busy, 60.0)
    assert breaker.seconds_until_trial() == cap


def test_a_rate_policy_on_a_machine_that_trips_in_a_row_is_refused_saying_what_to_write() -> None:
    with pytest.raises(ValueError) as refused:
        AsyncCircuitBreaker(pybreaker.CircuitBreaker(fail_max=5), policy=RatePolicy())
    assert str(refused.value) == (
        "a RatePolicy trips on rates, never on 5 failures in a row: "
        "build the state machine with pybreaker.CircuitBreaker(fail_max=RATE_POLICY_FAIL_MAX, ...)"
    )


async def test_a_trial_may_be_given_less_than_a_second() -> None:
    clock = FakeClock()
    breaker = consecutive(clock, max_trial_seconds=0.5)
    breaker.trip()
    clock.advance(15)
    permit = await breaker.admit()
    clock.advance(0.5)
    with pytest.raises(NotPermitted):
        await breaker.admit()  # the unreported trial failed: open again
    assert breaker.state == "open"
    permit.release()


# The rate policy: the window.


async def test_after_a_reset_the_window_is_empty_and_counts_again_from_the_next_call() -> None:
    clock = FakeClock()
    breaker = rate(clock)
    with pytest.raises(PartnerDown):
        await breaker.call(taking(clock, 6.0, PartnerDown()))
    await breaker.call(ok)
    breaker.reset()
    assert breaker.window_counts() == WindowCounts(calls=0, failures=0, slow=0)
    assert await breaker.call(ok) == "hot"
    assert await breaker.call(ok) == "hot"
    assert breaker.window_counts() == WindowCounts(calls=2, failures=0, slow=0)


async def test_after_a_trial_closes_the_circuit_the_window_counts_from_the_next_call() -> None:
    clock = FakeClock()
    breaker = rate(clock)
    breaker.trip()
    clock.advance(15)
    assert await breaker.call(ok) == "hot"  # the trial: not counted in the window
    assert breaker.state == "closed"
    assert await breaker.call(ok) == "hot"
    assert breaker.window_counts() == WindowCounts(calls=1, failures=0, slow=0)


async def test_a_failure_is_judged_even_when_the_successes_before_it_were_judged_already() -> None:
    clock = FakeClock()
    breaker = rate(clock, min_calls=4, failure_rate=0.5)
    for _ in range(4):
        await breaker.call(ok)  # the fourth brings the window to min_calls: judged, 0 of 4
    for _ in range(3):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
    assert breaker.state == "closed"  # 3 of 7
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    assert breaker.state == "open"  # 4 of 8


async def test_a_call_that_ends_on_a_buckets_edge_belongs_to_the_next_bucket() -> None:
    """Ten buckets of 0.5 s in a 5 s window: each call leaves the window with its bucket."""
    clock = FakeClock(1000.0)
    breaker = rate(clock, window=5.0)
    clock.now = 1000.125  # bucket [1000.0, 1000.5)
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    clock.now = 1000.5  # on the edge: the next bucket, [1000.5, 1001.0)
    await breaker.call(ok)
    clock.now = 1000.75
    await breaker.call(ok)
    clock.now = 1004.75  # [1000.0, 1000.5) is still in [999.75, 1004.75]
    assert breaker.window_counts() == WindowCounts(calls=3, failures=1, slow=0)
    clock.now = 1005.25  # the failure's bucket left the window; the successes' did not
    assert breaker.window_counts() == WindowCounts(calls=2, failures=0, slow=0)
    clock.now = 1005.75
    assert breaker.window_counts() == WindowCounts(calls=0, failures=0, slow=0)


@pytest.mark.parametrize("origin", [1000.0, 0.0], ids=["clock at 1000", "clock at 0"])
async def test_the_window_slides_the_same_whatever_the_clocks_origin(origin: float) -> None:
    """An injected clock may start at 0 (a loop's time, a test's clock): times before it are
    negative, and the buckets must still be whole seconds of it."""
    clock = FakeClock(origin - 9.5)
    breaker = rate(clock, window=10.0)
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    clock.now = origin - 0.5
    assert breaker.window_counts() == WindowCounts(calls=1, failures=1, slow=0)  # 9 s old: in
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    clock.now = origin + 0.5
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    assert breaker.window_counts() == WindowCounts(calls=2, failures=2, slow=0)  # the first: 10 s old
    clock.now = origin + 9.5  # the second is 10 s old now
    assert breaker.window_counts() == WindowCounts(calls=1, failures=1, slow=0)


@pytest.mark.parametrize("origin", [1000.0, 0.0], ids=["clock at 1000", "clock at 0"])
async def test_the_open_period_is_the_reset_timeout_whatever_the_clocks_origin(origin: float) -> None:
    clock = FakeClock(origin)
    breaker = consecutive(clock, reset_timeout=0.5)
    breaker.trip()
    assert breaker.seconds_until_trial() == 0.5
    clock.advance(0.25)
    assert breaker.seconds_until_trial() == 0.25
    clock.advance(0.25)
    assert breaker.seconds_until_trial() == 0.0
    assert await breaker.call(ok) == "hot"


def test_a_call_window_counts_a_call_at_the_time_it_is_given() -> None:
    clock = FakeClock(1000.0)
    window = CallWindow(10.0, clock)
    assert window.record(True, False, now=985.0) == [1, 1, 0]  # ended 15 s ago
    assert window.counts() == WindowCounts(calls=0, failures=0, slow=0)
    window.record(False, True, now=995.0)
    window.record(False, False)  # now, on the clock
    assert window.counts() == WindowCounts(calls=2, failures=0, slow=1)


# The half-open trial: expired, and the circuit it opens again.


async def test_a_trial_expired_within_a_short_reset_timeout_keeps_the_new_open_period() -> None:
    clock = FakeClock()
    breaker = consecutive(clock, reset_timeout=0.5, max_trial_seconds=2)
    breaker.trip()
    clock.advance(0.5)
    permit = await breaker.admit()
    assert permit.is_trial
    clock.advance(2)  # it reported nothing: a failed trial, open again for 0.5 s
    with pytest.raises(NotPermitted) as refused:
        await breaker.admit()
    assert refused.value.reason == "circuit-open"
    assert breaker.state == "open" and not breaker.trial_in_flight
    assert breaker.seconds_until_trial() == 0.5
    clock.advance(0.5)
    trial = await breaker.admit()
    assert trial.is_trial and breaker.trial_in_flight
    trial.success()
    permit.success()  # too late: from the earlier open period
    assert breaker.state == "closed"


# Calls cut short.


async def test_a_block_whose_nested_guarded_calls_ended_is_still_cut_short() -> None:
    breaker = consecutive(FakeClock())
    inside = asyncio.Event()

    async def block() -> None:
        async with breaker.calling():
            assert await breaker.call(ok) == "hot"  # guarded calls of its own, ended
            async with breaker.calling():
                assert await breaker.call(ok) == "hot"
            inside.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(block())
    await asyncio.wait_for(inside.wait(), BOUND)
    breaker.trip()
    with pytest.raises(CutShort):
        await asyncio.wait_for(task, BOUND)


async def test_a_call_that_ends_while_another_is_being_cut_short_ends_as_it_would() -> None:
    breaker = consecutive(FakeClock())
    inside = asyncio.Event()

    slow = hanging(inside)

    waiting = asyncio.create_task(breaker.call(slow))
    await asyncio.wait_for(inside.wait(), BOUND)
    breaker.trip()
    await asyncio.sleep(0)  # the waiting call is being cut short, and has not heard yet
    breaker.reset()
    assert await breaker.call(ok) == "hot"
    with pytest.raises(CutShort):
        await asyncio.wait_for(waiting, BOUND)


async def test_a_call_that_ended_before_the_loop_turned_is_not_cut_short_after_it() -> None:
    """The circuit opens while the call's answer is already on its way: the caller gets its
    answer and goes on with its own work, which is not the breaker's to cancel."""
    breaker = consecutive(FakeClock())
    answered, go_on = asyncio.Event(), asyncio.Event()

    async def answering() -> str:
        await answered.wait()
        return "hot"

    async def caller() -> str:
        result = await breaker.call(answering)
        await go_on.wait()  # its own work, unguarded
        return result

    task = asyncio.create_task(caller())
    await asyncio.sleep(0)
    assert breaker.state == "closed"
    answered.set()  # the answer is on its way: the caller runs first on the loop's next turn
    breaker.trip()
    for _ in range(3):
        await asyncio.sleep(0)
    go_on.set()
    assert await asyncio.wait_for(task, BOUND) == "hot"


async def test_a_call_cut_short_by_two_openings_at_once_is_cut_short_once() -> None:
    """Tripped, reset and tripped again before the loop turns: the waiting call gets one
    cancellation, its own, and says CutShort rather than a cancellation from outside."""
    breaker = consecutive(FakeClock())
    inside = asyncio.Event()

    slow = hanging(inside)

    task = asyncio.create_task(breaker.call(slow))
    await asyncio.wait_for(inside.wait(), BOUND)
    breaker.trip()
    breaker.reset()
    breaker.trip()
    with pytest.raises(CutShort):
        await asyncio.wait_for(task, BOUND)


async def test_a_fallback_answers_a_call_refused_while_another_is_the_trial() -> None:
    clock = FakeClock()
    breaker = consecutive(clock)
    breaker.trip()
    clock.advance(15)
    trial = await breaker.admit()
    seen: list[Exception] = []

    def cold(exc: Exception) -> str:
        seen.append(exc)
        return "cold"

    assert await breaker.call(ok, fallback=cold) == "cold"
    assert [type(exc) for exc in seen] == [NotPermitted]
    assert isinstance(seen[0], NotPermitted) and seen[0].reason == "trial-in-flight"
    trial.success()


# The decorator.


async def test_the_decorator_takes_the_function_and_a_fallback_in_one_call() -> None:
    """`breaker(fetch, fallback=...)`, as `breaker(fallback=...)(fetch)`."""
    breaker = consecutive(FakeClock())
    guarded = breaker(fetch_offer, fallback=lambda exc: f"cold after {type(exc).__name__}")  # type: ignore[call-overload]
    assert await guarded() == "hot"
    breaker.trip()
    assert await guarded() == "cold after NotPermitted"

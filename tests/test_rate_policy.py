"""The rate policy and Retry-After: window arithmetic on an injected clock, the breaker in this
process, and a fleet whose window lives in a real Redis."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pybreaker
import pytest

from circuit_breaker import (
    RATE_POLICY_FAIL_MAX,
    AsyncCircuitBreaker,
    CallWindow,
    NotPermitted,
    RatePolicy,
    WindowCounts,
)
from offer_service import build_breaker
from service.partner_client import PartnerFailure, retry_after_seconds
from service.redis_state import WINDOW_FLUSH_INTERVAL, SharedCircuitState
from service.settings import OfferSettings
from tests.breakers import eventually
from tests.conftest import Fleet
from tests.fake_clock import FakeClock
from tests.partner_stand_ins import PartnerDown, fail, ok

RESET_TIMEOUT = 15.0
RATE = {
    "circuit_policy": "rate",
    "circuit_window": 10.0,
    "circuit_min_calls": 20,
    "circuit_failure_rate": 0.5,
}


def rate_breaker(clock: FakeClock, **settings: object) -> AsyncCircuitBreaker:
    values: dict[str, object] = {**RATE, "circuit_reset_timeout": RESET_TIMEOUT, **settings}
    return build_breaker(OfferSettings(**values), clock=clock)


async def outcome(breaker: AsyncCircuitBreaker, call: Callable[[], Awaitable[str]]) -> str:
    try:
        await breaker.call(call)
    except NotPermitted:
        return "not-permitted"
    except PartnerDown:
        return "failure"
    return "success"


async def run_calls(breaker: AsyncCircuitBreaker, failures: list[bool], clock: FakeClock, step: float) -> int:
    """Make a call per entry (a failure where True), `step` seconds apart; return how many times
    the circuit opened."""
    opened = 0
    for failed in failures:
        before = breaker.state
        await outcome(breaker, fail if failed else ok)
        opened += before != "open" and breaker.state == "open"
        if breaker.state == "open":
            clock.advance(RESET_TIMEOUT)  # let the trial through, to count every opening
        clock.advance(step)
    return opened


# The window's arithmetic.


def test_the_window_counts_calls_failures_and_slow_calls() -> None:
    clock = FakeClock(0.0)
    window = CallWindow(10.0, clock)
    for failed, slow in [(False, False), (True, False), (True, True), (False, True)]:
        window.record(failed, slow)
    assert window.counts() == WindowCounts(calls=4, failures=2, slow=2)


def test_the_window_slides_a_bucket_at_a_time() -> None:
    clock = FakeClock(0.0)
    window = CallWindow(10.0, clock)  # ten buckets of one second
    window.record(True, False)  # in the bucket [0, 1)
    clock.advance(5.0)
    window.record(False, False)  # in [5, 6)
    clock.advance(4.99)  # 9.99: both still in the window
    assert window.counts().calls == 2
    clock.advance(0.01)  # 10.0: the first bucket left the window
    assert window.counts() == WindowCounts(calls=1, failures=0, slow=0)
    clock.advance(6.0)
    assert window.counts() == WindowCounts()


def test_a_window_idle_for_longer_than_itself_starts_empty() -> None:
    clock = FakeClock(0.0)
    window = CallWindow(1.0, clock)
    for _ in range(5):
        window.record(True, True)
    clock.advance(100.0)
    window.record(False, False)
    assert window.counts() == WindowCounts(calls=1, failures=0, slow=0)


def test_what_the_window_counted_only_grows_through_slides_and_clears() -> None:
    """The fleet's window sends the calls since its last flush as a difference of two
    `counted()` readings: a call that slid out or was cleared must still be in them."""
    clock = FakeClock(0.0)
    window = CallWindow(10.0, clock)  # ten buckets of one second
    for failed, slow in [(True, True), (True, False), (False, True)]:
        window.record(failed, slow)  # in [0, 1)
    clock.advance(1.0)
    window.record(True, True)  # in [1, 2)
    assert window.counted() == (4, 3, 3)
    clock.advance(10.0)
    window.record(False, False)  # 11.0: both buckets slide out at once
    assert window.counts() == WindowCounts(calls=1, failures=0, slow=0)
    assert window.counted() == (5, 3, 3)
    window.record(True, True)
    window.clear()
    assert window.counts() == WindowCounts()
    assert window.counted() == (6, 4, 4)
    window.record(True, False)
    clock.advance(20.0)
    assert window.counts() == WindowCounts()  # slid out after a clear: still counted once
    assert window.counted() == (7, 5, 4)


@pytest.mark.parametrize(
    ("counts", "exceeded"),
    [
        (WindowCounts(calls=19, failures=19), False),  # under min_calls: the rates do not count
        (WindowCounts(calls=20, failures=9), False),
        (WindowCounts(calls=20, failures=10), True),  # 50%: at the threshold trips
        (WindowCounts(calls=20, slow=19), False),
        (WindowCounts(calls=20, slow=20), True),  # every call slow, at a slow-call rate of 1
    ],
)
def test_the_policy_trips_at_its_thresholds_once_min_calls_were_made(
    counts: WindowCounts, exceeded: bool
) -> None:
    policy = RatePolicy(window=10, min_calls=20, failure_rate=0.5, slow_call_seconds=3, slow_call_rate=1.0)
    assert policy.exceeded(counts.calls, counts.failures, counts.slow) is exceeded


# The breaker in this process.


def test_the_rate_policy_leaves_pybreaker_a_fail_max_it_never_reaches() -> None:
    breaker = rate_breaker(FakeClock())
    assert breaker.state_machine.fail_max == RATE_POLICY_FAIL_MAX
    assert breaker.snapshot()["policy"] == "rate"
    consecutive = build_breaker(OfferSettings(), clock=FakeClock())
    assert consecutive.snapshot()["policy"] == "consecutive" and consecutive.snapshot()["window"] is None


async def test_a_partner_failing_one_call_in_five_trips_consecutive_but_not_rate() -> None:
    rng = random.Random(7)
    pattern = [rng.random() < 0.2 for _ in range(600)]
    clock = FakeClock()
    consecutive = build_breaker(OfferSettings(circuit_reset_timeout=RESET_TIMEOUT), clock=clock)
    opened_consecutive = await run_calls(consecutive, pattern, clock, step=0.01)
    clock = FakeClock()
    opened_rate = await run_calls(rate_breaker(clock), pattern, clock, step=0.01)
    assert opened_consecutive >= 2, "the pattern has three failures in a row more than once"
    assert opened_rate == 0


async def test_a_partner_failing_seven_calls_in_ten_opens_the_rate_policy_within_min_calls() -> None:
    clock = FakeClock()
    breaker = rate_breaker(clock)
    made = 0
    while breaker.state == "closed" and made < 40:
        await outcome(breaker, fail if made % 10 < 7 else ok)
        made += 1
        clock.advance(0.05)
    assert breaker.state == "open"
    assert made == 20  # the first call at which min_calls is reached, at 70% failures


async def test_a_partner_failing_every_other_call_never_trips_consecutive_but_trips_rate() -> None:
    pattern = [i % 2 == 0 for i in range(100)]
    clock = FakeClock()
    consecutive = build_breaker(OfferSettings(), clock=clock)
    assert await run_calls(consecutive, pattern, clock, step=0.01) == 0
    clock = FakeClock()
    assert await run_calls(rate_breaker(clock), pattern, clock, step=0.01) >= 1


async def test_slow_successes_alone_open_the_rate_policy() -> None:
    clock = FakeClock()
    breaker = rate_breaker(
        clock, circuit_window=100.0, circuit_slow_call_seconds=3.0, circuit_slow_call_rate=0.8
    )

    async def slow_ok() -> str:
        clock.advance(3.5)  # a 200 after three and a half seconds
        return "hot"

    for _ in range(20):
        assert await breaker.call(slow_ok) == "hot"
    assert breaker.state == "open"
    assert breaker.fail_counter == 0


async def test_a_slow_success_counts_as_slow_in_a_window_under_the_line() -> None:
    clock = FakeClock()
    breaker = rate_breaker(
        clock,
        circuit_window=100.0,
        circuit_min_calls=2,
        circuit_slow_call_seconds=3.0,
        circuit_slow_call_rate=0.5,
    )

    async def slow_ok() -> str:
        clock.advance(3.5)
        return "hot"

    for _ in range(2):  # min_calls in, under the line: fast successes need no judging
        await breaker.call(ok)
    for _ in range(2):  # two slow of four: a slow success is judged all the same
        await breaker.call(slow_ok)
    assert breaker.state == "open"


async def test_calls_just_under_the_slow_threshold_are_not_slow() -> None:
    clock = FakeClock()
    breaker = rate_breaker(
        clock, circuit_window=100.0, circuit_slow_call_seconds=3.0, circuit_slow_call_rate=0.8
    )

    async def almost_slow() -> str:
        clock.advance(2.9)
        return "hot"

    for _ in range(25):
        await breaker.call(almost_slow)
    window = breaker.snapshot()["window"]
    assert breaker.state == "closed" and window["slow_calls"] == 0 and window["calls"] == 25


async def test_a_success_that_brings_the_window_to_min_calls_trips_it_when_the_share_is_over() -> None:
    clock = FakeClock(0.0)
    breaker = rate_breaker(clock, circuit_min_calls=5)
    assert await run_calls(breaker, [True, True, True, False], clock, step=0.1) == 0  # 4 calls: too few
    assert await outcome(breaker, ok) == "success"
    assert breaker.state == "open"  # 3 failures of 5 calls: the fifth, a success, is judged


async def test_a_success_trips_the_circuit_once_the_window_slid_past_the_successes() -> None:
    clock = FakeClock(0.0)
    breaker = rate_breaker(clock, circuit_min_calls=5)
    assert await run_calls(breaker, [False] * 12, clock, step=0.0) == 0
    clock.advance(5.0)
    assert await run_calls(breaker, [True] * 9, clock, step=0.0) == 0  # 9 of 21 failed
    clock.advance(5.5)  # the twelve successes leave the window
    assert await outcome(breaker, ok) == "success"
    assert breaker.state == "open"  # 9 failures of 10 calls


async def test_the_window_counts_every_success_those_that_cannot_trip_too() -> None:
    clock = FakeClock(0.0)
    breaker = rate_breaker(clock, circuit_min_calls=2)
    for _ in range(7):  # from the third on, a success under the line is one addition
        await outcome(breaker, ok)
    assert breaker.snapshot()["window"]["calls"] == 7
    await outcome(breaker, fail)
    window = breaker.snapshot()["window"]
    assert (window["calls"], window["failures"]) == (8, 1)


async def test_successes_that_cannot_trip_stay_in_the_bucket_they_ended_in_and_leave_with_it() -> None:
    """Such successes are added up apart and put in the newest bucket later: beside the calls
    already there, and only while that bucket is the newest (no later than its end)."""
    clock = FakeClock(0.0)
    breaker = rate_breaker(clock)  # a 10 s window: ten buckets of one second, 20 calls at least
    for _ in range(20):
        await breaker.call(ok)  # at 0.0, in [0, 1): from here on, a success cannot trip
    clock.advance(0.5)
    for _ in range(5):
        await breaker.call(ok)  # 0.5: still in [0, 1)
    clock.advance(1.0)
    for _ in range(3):
        await breaker.call(ok)  # 1.5: in [1, 2)
    assert breaker.window_counts() == WindowCounts(calls=28)
    clock.advance(9.0)  # 10.5: [0, 1) left the window with its 25 calls, [1, 2) is still in it
    assert breaker.window_counts() == WindowCounts(calls=3)


async def test_a_success_of_exactly_the_slow_call_seconds_is_slow_where_successes_cannot_trip() -> None:
    clock = FakeClock(0.0)
    breaker = rate_breaker(clock, circuit_slow_call_seconds=0.5)  # under a bucket (1 s)

    async def just_slow() -> str:
        clock.advance(0.5)  # ends at 0.5, in the bucket it began in
        return "hot"

    for _ in range(20):
        await breaker.call(ok)  # at 0.0: from here on, a fast success cannot trip
    await breaker.call(just_slow)
    assert breaker.window_counts() == WindowCounts(calls=21, slow=1)


class FleetStandIn:
    """A shared state whose Redis answers until the test says otherwise: while it does, the
    fleet decides the trip, not this process's window."""

    def __init__(self) -> None:
        self.generation = 0
        self.connected = True
        self.on_change: object = None

    def share_window(self, window: CallWindow) -> None:
        pass

    def fleet_window(self) -> WindowCounts | None:
        return None

    def seconds_until_trial(self) -> float:
        return RESET_TIMEOUT


async def test_totals_over_the_line_while_the_fleet_decides_trip_on_the_next_call_once_redis_is_gone() -> (
    None
):
    policy = RatePolicy(window=10.0, min_calls=4, failure_rate=0.5)
    machine = pybreaker.CircuitBreaker(fail_max=RATE_POLICY_FAIL_MAX)
    fleet = FleetStandIn()
    breaker = AsyncCircuitBreaker(machine, fleet, clock=FakeClock(0.0), policy=policy)  # type: ignore[arg-type]
    for call in [ok, fail, fail, fail, ok]:  # 3 failures of 5: over the line, Redis decides
        await outcome(breaker, call)
    assert breaker.state == "closed"
    fleet.connected = False
    await outcome(breaker, ok)  # 3 failures of 6, a success: judged all the same
    assert breaker.state == "open"


async def test_the_window_starts_again_after_the_circuit_closes() -> None:
    clock = FakeClock()
    breaker = rate_breaker(clock)
    for _ in range(20):
        await outcome(breaker, fail)
    assert breaker.state == "open"
    clock.advance(RESET_TIMEOUT)
    assert await breaker.call(ok) == "hot"
    assert breaker.state == "closed"
    assert breaker.snapshot()["window"]["calls"] == 0
    await outcome(breaker, fail)
    assert breaker.state == "closed"  # one failure in a fresh window, under min_calls


async def test_half_open_needs_every_one_of_its_calls_to_succeed() -> None:
    clock = FakeClock()
    breaker = rate_breaker(clock, circuit_half_open_calls=3)
    for _ in range(20):
        await outcome(breaker, fail)
    clock.advance(RESET_TIMEOUT)
    assert await breaker.call(ok) == "hot"
    assert await breaker.call(ok) == "hot"
    assert breaker.state == "half-open"
    assert await outcome(breaker, fail) == "failure"
    assert breaker.state == "open"  # the third trial failed: open again
    clock.advance(RESET_TIMEOUT)
    for _ in range(3):
        assert await breaker.call(ok) == "hot"
    assert breaker.state == "closed"


async def test_half_open_calls_go_one_at_a_time() -> None:
    clock = FakeClock()
    breaker = build_breaker(OfferSettings(circuit_half_open_calls=2), clock=clock)
    breaker.trip()
    clock.advance(15.0)
    trial = await breaker.admit()
    with pytest.raises(NotPermitted, match="trial-in-flight"):
        await breaker.admit()
    trial.success()
    second = await breaker.admit()
    assert second.is_trial
    second.success()
    assert breaker.state == "closed"


# Retry-After, in both policies.


def partner_busy(seconds: float) -> Callable[[], Awaitable[str]]:
    async def call() -> str:
        raise PartnerFailure("partner-status-503", retry_after=seconds)

    return call


# Enough failures to open the circuit in either policy (`circuit_min_calls` 4, rate 0.5).
TRIPS = {"consecutive": {"circuit_fail_max": 3}, "rate": {"circuit_policy": "rate", "circuit_min_calls": 4}}


def busy_breaker(policy: str, clock: FakeClock, **settings: object) -> AsyncCircuitBreaker:
    values: dict[str, object] = {"circuit_reset_timeout": RESET_TIMEOUT, **TRIPS[policy], **settings}
    return build_breaker(OfferSettings(**values), clock=clock)  # type: ignore[arg-type]


async def open_with(breaker: AsyncCircuitBreaker, call: Callable[[], Awaitable[str]]) -> None:
    """Fail through `breaker` until it opens: more than one call, at most 4 in either policy
    above (a single answer, whatever it says, never opens the circuit)."""
    made = 0
    while breaker.state != "open":
        assert made < 4, "the circuit did not open"
        with pytest.raises((PartnerFailure, PartnerDown)):
            await breaker.call(call)
        made += 1
    assert made > 1, "the circuit opened at a single answer"


@pytest.mark.parametrize("policy", ["consecutive", "rate"])
async def test_a_single_retry_after_counts_as_one_failure_and_does_not_open_the_circuit(policy: str) -> None:
    breaker = busy_breaker(policy, FakeClock())
    with pytest.raises(PartnerFailure):
        await breaker.call(partner_busy(60))
    assert breaker.state == "closed"
    counts = breaker.window_counts()
    assert (counts.failures if counts else breaker.fail_counter) == 1
    assert await breaker.call(ok) == "hot"


@pytest.mark.parametrize("policy", ["consecutive", "rate"])
async def test_a_retry_after_holds_the_circuit_open_for_that_long_when_it_opens(policy: str) -> None:
    clock = FakeClock()
    breaker = busy_breaker(policy, clock)
    await open_with(breaker, partner_busy(60))
    assert breaker.seconds_until_trial() == pytest.approx(60)
    clock.advance(59.5)
    with pytest.raises(NotPermitted, match="circuit-open"):
        await breaker.call(ok)
    clock.advance(0.5)
    assert await breaker.call(ok) == "hot"


@pytest.mark.parametrize("policy", ["consecutive", "rate"])
async def test_a_retry_after_is_counted_from_when_it_was_heard(policy: str) -> None:
    clock = FakeClock()
    breaker = busy_breaker(policy, clock)
    with pytest.raises(PartnerFailure):
        await breaker.call(partner_busy(60))
    clock.advance(30)
    await open_with(breaker, fail)
    assert breaker.seconds_until_trial() == pytest.approx(30)


async def test_a_success_after_a_retry_after_ends_it() -> None:
    clock = FakeClock()
    breaker = busy_breaker("consecutive", clock)
    with pytest.raises(PartnerFailure):
        await breaker.call(partner_busy(60))
    assert await breaker.call(ok) == "hot"
    await open_with(breaker, fail)
    assert breaker.seconds_until_trial() == pytest.approx(RESET_TIMEOUT)


@pytest.mark.parametrize("seconds", [2, 1e-300, 0, -5, float("nan")])
async def test_a_retry_after_shorter_than_the_reset_timeout_or_meaningless_keeps_the_reset_timeout(
    seconds: float,
) -> None:
    breaker = busy_breaker("consecutive", FakeClock())
    await open_with(breaker, partner_busy(seconds))
    assert breaker.seconds_until_trial() == pytest.approx(RESET_TIMEOUT)


async def test_a_retry_after_is_capped_and_can_be_ignored() -> None:
    capped = busy_breaker("consecutive", FakeClock(), circuit_retry_after_max=120)
    await open_with(capped, partner_busy(float("inf")))
    assert capped.seconds_until_trial() == pytest.approx(120)
    ignoring = busy_breaker("consecutive", FakeClock(), circuit_retry_after_max=0)
    await open_with(ignoring, partner_busy(60))
    assert ignoring.seconds_until_trial() == pytest.approx(RESET_TIMEOUT)


def test_the_retry_after_cap_is_at_most_ten_minutes() -> None:
    assert OfferSettings(circuit_retry_after_max=600).circuit_retry_after_max == 600
    with pytest.raises(ValueError, match="circuit_retry_after_max"):
        OfferSettings(circuit_retry_after_max=601)


async def test_a_reset_starts_the_rate_policys_window_afresh() -> None:
    breaker = build_breaker(OfferSettings(**{**RATE, "circuit_min_calls": 10}), clock=FakeClock())  # type: ignore[arg-type]
    for call in [ok] * 5 + [fail] * 4:
        await outcome(breaker, call)
    breaker.reset()
    assert await outcome(breaker, fail) == "failure"
    assert breaker.state == "closed"
    counts = breaker.window_counts()
    assert counts is not None and (counts.calls, counts.failures) == (1, 1)


def test_a_rate_policy_on_a_machine_that_trips_on_failures_in_a_row_is_refused() -> None:
    with pytest.raises(ValueError, match="fail_max=RATE_POLICY_FAIL_MAX"):
        AsyncCircuitBreaker(pybreaker.CircuitBreaker(), policy=RatePolicy(min_calls=100))


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("Wed, 21 Oct 2015 07:28:00", None),  # no zone: not an HTTP date
        ("9" * 100, None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(header: str | None, seconds: float | None) -> None:
    got = retry_after_seconds(header)
    if seconds is None:
        assert got is None
    else:
        assert got == pytest.approx(seconds, abs=2)


@pytest.mark.parametrize(("offset", "seconds"), [(90, 90.0), (-90, 0.0)])
def test_retry_after_as_an_http_date_is_the_time_until_then(offset: int, seconds: float) -> None:
    header = format_datetime(datetime.now(UTC) + timedelta(seconds=offset), usegmt=True)
    assert retry_after_seconds(header) == pytest.approx(seconds, abs=2)


# A fleet on a real Redis.


async def test_two_instances_each_under_the_threshold_trip_the_fleet_together(fleet: Fleet) -> None:
    settings = {**RATE, "circuit_min_calls": 20, "circuit_failure_rate": 0.5}
    first, second = await fleet(**settings), await fleet(**settings)
    for _ in range(8):  # 16 calls, 8 failures here: under min_calls alone
        await outcome(first, fail)
        await outcome(first, ok)
    shared = first.shared
    assert isinstance(shared, SharedCircuitState)
    await eventually(
        lambda: not ((shared._window and shared._window.unsent.calls) or shared._outbox or shared._in_flight),
        what="first's calls written",
    )
    assert first.state == second.state == "closed"  # 16 calls in the fleet's window: under min_calls
    for _ in range(8):  # 8 calls, 8 failures there: under min_calls alone
        await outcome(second, fail)
    # Together 24 calls and 16 failures (67%): over both thresholds.
    await eventually(lambda: first.state == "open" and second.state == "open", what="the fleet tripped")
    window = second.snapshot()["window"]
    assert window["calls"] == 0  # a new state starts a new window


async def test_the_fleets_window_is_at_most_one_flush_behind(fleet: Fleet) -> None:
    settings = {**RATE, "circuit_min_calls": 1000}
    first, second = await fleet(**settings), await fleet(**settings)
    for _ in range(30):
        await outcome(first, ok)
    shared = first.shared
    assert isinstance(shared, SharedCircuitState) and shared._window and shared._window.timer is not None
    # The calls leave within one flush interval of the first of them, never later.
    assert shared._window.timer.when() - asyncio.get_running_loop().time() <= WINDOW_FLUSH_INTERVAL
    assert first.snapshot()["window"]["calls"] == 30  # its own calls count at once
    # An instance hears the fleet's totals in the reply to its own write: second calls on.
    made = 0
    while second.snapshot()["window"]["calls"] != 30 + made:
        assert made < 100, "the fleet's total not heard after 100 calls"
        await outcome(second, ok)
        made += 1
        await asyncio.sleep(WINDOW_FLUSH_INTERVAL / 2)


async def test_the_fleet_trips_on_slow_calls_summed_across_instances(fleet: Fleet) -> None:
    settings = {
        **RATE,
        "circuit_min_calls": 10,
        "circuit_slow_call_seconds": 3.0,
        "circuit_slow_call_rate": 0.8,
    }
    clocks = [FakeClock(), FakeClock()]
    breakers = [await fleet(clock=clock, **settings) for clock in clocks]
    for i in range(10):
        clock = clocks[i % 2]

        async def slow_ok(clock: FakeClock = clock) -> str:
            clock.advance(4.0)
            return "hot"

        await breakers[i % 2].call(slow_ok)
    await eventually(lambda: all(b.state == "open" for b in breakers), what="the fleet tripped")


async def test_without_redis_an_instance_decides_on_its_own_window(
    fleet: Fleet, redis_server: object
) -> None:
    breaker = await fleet(**RATE)
    redis_server.stop()  # type: ignore[attr-defined]
    await outcome(breaker, fail)  # the write fails: the instance carries on alone
    await eventually(lambda: breaker.shared is not None and not breaker.shared.connected)
    for _ in range(19):
        await outcome(breaker, fail)
    assert breaker.state == "open"


async def test_a_retry_after_holds_the_whole_fleet_open_once_the_circuit_opens(fleet: Fleet) -> None:
    first, second = await fleet(circuit_reset_timeout=1.0), await fleet(circuit_reset_timeout=1.0)
    with pytest.raises(PartnerFailure):
        await first.call(partner_busy(30))
    assert first.state == "closed"  # one answer is a signal, not a verdict
    for _ in range(2):
        with pytest.raises((PartnerFailure, NotPermitted)):
            await first.call(partner_busy(30))
    await eventually(lambda: second.state == "open", what="the trip heard")
    await eventually(lambda: second.seconds_until_trial() > 20, what="the hold's length heard")
    await eventually(lambda: first.seconds_until_trial() > 20, what="the hold's length heard back")
    for breaker in (first, second):
        with pytest.raises(NotPermitted, match="circuit-open"):
            await breaker.call(ok)
    assert second.state == "open" and second.seconds_until_trial() > 1.0  # past the reset timeout's length


def test_pybreaker_success_threshold_is_the_half_open_calls_setting() -> None:
    breaker = build_breaker(OfferSettings(circuit_half_open_calls=4), clock=FakeClock())
    assert isinstance(breaker.state_machine, pybreaker.CircuitBreaker)
    assert breaker.state_machine.success_threshold == 4


async def test_a_fleet_closes_after_its_half_open_calls_succeed_one_at_a_time(fleet: Fleet) -> None:
    first = await fleet(circuit_half_open_calls=2, circuit_reset_timeout=0.3)
    second = await fleet(circuit_half_open_calls=2, circuit_reset_timeout=0.3)
    first.trip()
    await eventually(lambda: second.state == "open", what="the trip heard")
    await eventually(lambda: first.seconds_until_trial() == 0, what="the reset timeout")
    while True:  # Redis's clock decides: the first call it permits is the trial
        try:
            assert await first.call(ok) == "hot"
            break
        except NotPermitted:
            await asyncio.sleep(0.01)
    assert first.state == "half-open"  # one success of two
    assert await first.call(ok) == "hot"  # the lease went back after the first: no wait
    assert first.state == "closed"
    await eventually(lambda: second.state == "closed", what="the close heard")


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ({"min_calls": 0}, "min_calls must be 1 or more, not 0"),
        ({"failure_rate": 0.0}, "failure_rate must be > 0 and <= 1, not 0.0"),
        ({"slow_call_rate": 1.5}, "slow_call_rate must be > 0 and <= 1, not 1.5"),
        ({"window": 0.0}, "window must be > 0 seconds, not 0.0"),
        ({"slow_call_seconds": -1.0}, "slow_call_seconds must be > 0, not -1.0"),
        ({"slow_call_seconds": 0.0}, "slow_call_seconds must be > 0, not 0.0"),
        ({"window": -1.0}, "window must be > 0 seconds, not -1.0"),
        ({"min_calls": -5}, "min_calls must be 1 or more, not -5"),
        ({"failure_rate": 1.01}, "failure_rate must be > 0 and <= 1, not 1.01"),
        ({"slow_call_rate": 0.0}, "slow_call_rate must be > 0 and <= 1, not 0.0"),
    ],
)
def test_a_rate_policy_that_could_never_trip_as_documented_is_refused_at_construction(
    setting: dict[str, float], says: str
) -> None:
    with pytest.raises(ValueError, match=f"^RatePolicy {says}$".replace(".", r"\.")):
        RatePolicy(**setting)  # type: ignore[arg-type]


def test_a_rate_policy_at_the_edges_of_what_is_allowed_is_accepted() -> None:
    """The smallest minimum and the whole range of rates are settings a user may choose."""
    policy = RatePolicy(
        window=0.001, min_calls=1, failure_rate=1.0, slow_call_seconds=0.001, slow_call_rate=1.0
    )
    assert policy.exceeded(1, 1, 0) and not policy.exceeded(1, 0, 0)
    assert RatePolicy(failure_rate=1e-9, slow_call_rate=1e-9).exceeded(20, 1, 0)

"""The breaker wiring as a specification: transitions, exclusions, one trial, stale outcomes."""

from __future__ import annotations

import asyncio
import logging
import time

import pybreaker
import pytest

import circuit_breaker as circuit_breaker_module
from circuit_breaker import AsyncCircuitBreaker, CutShort, NotPermitted
from offer_service import build_breaker
from service.partner_client import PartnerDeclined
from service.settings import OfferSettings
from tests.breakers import trip
from tests.fake_clock import FakeClock
from tests.partner_stand_ins import PartnerDown, fail, hanging, ok, reject

RESET_TIMEOUT = 15.0
# Every wait in these tests is bounded: a broken guard fails, it never hangs.
BOUND = 5.0


def rewind(breaker: AsyncCircuitBreaker, seconds: float) -> None:
    """Let `seconds` pass on the breaker's clock, instead of sleeping through the reset timeout."""
    clock = breaker._clock
    assert isinstance(clock, FakeClock)
    clock.advance(seconds)


def make_breaker() -> AsyncCircuitBreaker:
    settings = OfferSettings(circuit_fail_max=3, circuit_reset_timeout=RESET_TIMEOUT)
    return build_breaker(settings, clock=FakeClock())


async def test_closed_circuit_passes_calls_through() -> None:
    breaker = make_breaker()
    assert await breaker.call(ok) == "hot"
    assert (breaker.snapshot())["current_state"] == "closed"


async def test_opens_after_fail_max_failures_and_then_rejects_without_calling() -> None:
    breaker = make_breaker()
    for expected_count in (1, 2):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
        assert breaker.fail_counter == expected_count
        assert breaker.state_name == "closed"
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    snapshot = breaker.snapshot()
    assert snapshot["current_state"] == "open"
    assert snapshot["fail_counter"] == 3
    assert snapshot["opened_at"] is not None
    assert 0 < snapshot["seconds_until_trial"] <= RESET_TIMEOUT

    calls = 0

    async def counted() -> str:
        nonlocal calls
        calls += 1
        return "hot"

    with pytest.raises(NotPermitted) as refused:
        await breaker.call(counted)
    assert refused.value.reason == "circuit-open"
    assert calls == 0


async def test_success_resets_the_fail_counter() -> None:
    breaker = make_breaker()
    for _ in range(2):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
    await breaker.call(ok)
    assert breaker.fail_counter == 0


async def test_a_partner_4xx_is_ignored_and_never_opens_the_circuit() -> None:
    breaker = make_breaker()
    for _ in range(10):
        with pytest.raises(PartnerDeclined):
            await breaker.call(reject)
    assert breaker.state_name == "closed"
    assert breaker.fail_counter == 0


async def test_half_open_trial_success_closes_the_circuit() -> None:
    breaker = make_breaker()
    await trip(breaker, alone=True)
    rewind(breaker, RESET_TIMEOUT - 1)
    with pytest.raises(NotPermitted):
        await breaker.call(ok)
    rewind(breaker, 1.01)
    assert (breaker.snapshot())["seconds_until_trial"] == 0
    assert await breaker.call(ok) == "hot"
    assert breaker.state_name == "closed"
    assert breaker.fail_counter == 0


async def test_half_open_trial_failure_opens_the_circuit_again() -> None:
    breaker = make_breaker()
    await trip(breaker, alone=True)
    rewind(breaker, RESET_TIMEOUT + 0.01)
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    assert breaker.state_name == "open"
    with pytest.raises(NotPermitted):
        await breaker.call(ok)


async def test_half_open_allows_one_trial_call_at_a_time() -> None:
    breaker = make_breaker()
    await trip(breaker, alone=True)
    rewind(breaker, RESET_TIMEOUT + 0.01)

    trial_started = asyncio.Event()
    release_trial = asyncio.Event()
    calls = 0

    async def slow_trial() -> str:
        nonlocal calls
        calls += 1
        trial_started.set()
        await release_trial.wait()
        return "hot"

    trial = asyncio.create_task(breaker.call(slow_trial))
    await asyncio.wait_for(trial_started.wait(), BOUND)
    others = await asyncio.wait_for(
        asyncio.gather(*(breaker.call(slow_trial) for _ in range(20)), return_exceptions=True), BOUND
    )
    assert all(isinstance(result, NotPermitted) and result.reason == "trial-in-flight" for result in others)
    assert calls == 1
    release_trial.set()
    assert await asyncio.wait_for(trial, BOUND) == "hot"
    assert breaker.state_name == "closed"


async def test_a_cancelled_trial_lets_the_next_caller_try() -> None:
    breaker = make_breaker()
    await trip(breaker, alone=True)
    rewind(breaker, RESET_TIMEOUT + 0.01)

    started = asyncio.Event()

    async def hang() -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    trial = asyncio.create_task(breaker.call(hang))
    await asyncio.wait_for(started.wait(), BOUND)
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    assert breaker.state_name == "half-open"
    assert await breaker.call(ok) == "hot"
    assert breaker.state_name == "closed"


async def test_a_stale_failure_does_not_count_against_a_newer_state() -> None:
    breaker = make_breaker()
    started = asyncio.Event()
    finish = asyncio.Event()

    async def slow_failure() -> str:
        started.set()
        await finish.wait()
        raise PartnerDown("late 500")

    slow = asyncio.create_task(breaker.call(slow_failure))
    await asyncio.wait_for(started.wait(), BOUND)
    breaker.reset()  # a new generation, as an operator's close makes one
    finish.set()
    with pytest.raises(PartnerDown):
        await asyncio.wait_for(slow, BOUND)
    assert breaker.state_name == "closed"
    assert breaker.fail_counter == 0


async def test_a_stale_success_does_not_reset_a_newer_states_failures() -> None:
    breaker = make_breaker()
    started = asyncio.Event()
    finish = asyncio.Event()

    async def slow_success() -> str:
        started.set()
        await finish.wait()
        return "late hot"

    slow = asyncio.create_task(breaker.call(slow_success))
    await asyncio.wait_for(started.wait(), BOUND)
    breaker.reset()
    for _ in range(2):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
    finish.set()
    assert await asyncio.wait_for(slow, BOUND) == "late hot"
    assert breaker.fail_counter == 2


async def test_concurrent_slow_calls_take_one_calls_latency_not_n() -> None:
    breaker = make_breaker()
    latency, concurrency = 0.2, 50

    async def slow() -> str:
        await asyncio.sleep(latency)
        return "hot"

    started = time.perf_counter()
    results = await asyncio.wait_for(asyncio.gather(*(breaker.call(slow) for _ in range(concurrency))), BOUND)
    elapsed = time.perf_counter() - started
    assert results == ["hot"] * concurrency
    # Serialized, this would take concurrency * latency = 10 s.
    assert elapsed < latency * 3


async def test_log_listener_reports_calls_at_debug_and_state_changes_at_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="circuit_breaker")
    breaker = make_breaker()
    await breaker.call(ok)
    await trip(breaker, alone=True)
    events = [(record.levelno, record.getMessage()) for record in caplog.records]
    assert (logging.DEBUG, "partner-offer: before call to ok") in events
    assert (logging.DEBUG, "partner-offer: call succeeded") in events
    assert any(level == logging.DEBUG and "call failed" in message for level, message in events)
    assert (logging.WARNING, "partner-offer: state changed from closed to open") in events


def test_pybreaker_is_the_state_machine() -> None:
    breaker = make_breaker()
    assert isinstance(breaker.state_machine, pybreaker.CircuitBreaker)
    assert breaker.state_machine.fail_max == 3
    assert breaker.state_machine.reset_timeout == RESET_TIMEOUT
    assert PartnerDeclined in breaker.state_machine.excluded_exceptions


async def test_calls_still_waiting_when_the_circuit_opens_are_cut_short() -> None:
    breaker = make_breaker()
    partner_calls = 0

    async def hang() -> str:
        nonlocal partner_calls
        partner_calls += 1
        await asyncio.sleep(30)
        return "too late"

    waiting = [asyncio.create_task(breaker.call(hang)) for _ in range(10)]
    await asyncio.sleep(0)
    assert partner_calls == 10
    started = time.perf_counter()
    await trip(breaker, alone=True)
    results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), BOUND)
    assert time.perf_counter() - started < 1
    assert all(isinstance(result, CutShort) for result in results)
    assert breaker.fail_counter == 3  # cut calls are not failures


async def test_a_timeout_raised_by_the_call_itself_is_a_failure_not_a_cut() -> None:
    breaker = make_breaker()

    async def times_out() -> str:
        raise TimeoutError

    with pytest.raises(TimeoutError):
        await breaker.call(times_out)
    assert breaker.fail_counter == 1


async def test_the_open_period_is_measured_on_the_injected_clock_not_the_wall_clock() -> None:
    breaker = make_breaker()
    await trip(breaker, alone=True)
    assert breaker.seconds_until_trial() == RESET_TIMEOUT
    rewind(breaker, 5)
    assert breaker.seconds_until_trial() == RESET_TIMEOUT - 5


async def test_forcing_open_twice_is_one_transition_and_no_error() -> None:
    breaker = make_breaker()
    transitions: list[str] = []

    class Recorder(pybreaker.CircuitBreakerListener):
        def state_change(self, cb: object, old: object, new: pybreaker.CircuitBreakerState) -> None:
            transitions.append(new.name)

    breaker.add_listener(Recorder())
    waiting = asyncio.create_task(breaker.call(lambda: asyncio.sleep(30, "late")))
    await asyncio.sleep(0)
    breaker.trip()
    breaker.trip()  # while the first one's cut is still ending the waiting call
    with pytest.raises(CutShort):
        await asyncio.wait_for(waiting, BOUND)
    breaker.trip()
    assert transitions == ["open"]
    breaker.reset()
    breaker.reset()
    assert transitions == ["open", "closed"]


async def test_errors_that_are_not_counted_neither_fail_nor_succeed() -> None:
    class OutOfFileDescriptors(Exception):
        pass

    async def local_trouble() -> str:
        raise OutOfFileDescriptors

    settings = OfferSettings(circuit_fail_max=3, circuit_reset_timeout=RESET_TIMEOUT)
    breaker = build_breaker(settings, not_counted=(OutOfFileDescriptors,), clock=FakeClock())
    for _ in range(2):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
    for _ in range(10):
        with pytest.raises(OutOfFileDescriptors):
            await breaker.call(local_trouble)
    assert breaker.fail_counter == 2  # neither counted nor reset
    assert breaker.state_name == "closed"
    await trip_once_more(breaker)
    rewind(breaker, RESET_TIMEOUT)
    with pytest.raises(OutOfFileDescriptors):
        await breaker.call(local_trouble)  # the trial's permit is handed back
    assert await breaker.call(ok) == "hot"
    assert breaker.state_name == "closed"


async def trip_once_more(breaker: AsyncCircuitBreaker) -> None:
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    assert breaker.state_name == "open"


# The public surface a copier uses: circuit_breaker.py alone, with pybreaker.


def standalone(clock: FakeClock | None = None, **kwargs: object) -> AsyncCircuitBreaker:
    machine = pybreaker.CircuitBreaker(fail_max=3, reset_timeout=RESET_TIMEOUT, **kwargs)  # type: ignore[arg-type]
    return AsyncCircuitBreaker(machine, clock=clock or FakeClock())


def test_the_breaker_module_imports_only_pybreaker_and_the_standard_library() -> None:
    import ast
    import sys
    from pathlib import Path

    source = Path(circuit_breaker_module.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported - sys.stdlib_module_names == {"pybreaker"}


async def test_two_steps_record_a_failure_and_a_success() -> None:
    breaker = standalone()
    permit = await breaker.admit()
    permit.failure(PartnerDown("500"))
    assert breaker.fail_counter == 1
    permit = await breaker.admit()
    permit.success()
    assert breaker.fail_counter == 0


async def test_a_permit_reports_once() -> None:
    breaker = standalone()
    permit = await breaker.admit()
    permit.failure(PartnerDown("500"))
    permit.failure(PartnerDown("500"))
    permit.success()
    assert breaker.fail_counter == 1


async def test_a_permit_from_before_a_reset_counts_for_nothing() -> None:
    breaker = standalone()
    permit = await breaker.admit()
    breaker.reset()
    permit.failure(PartnerDown("500"))
    assert breaker.fail_counter == 0


async def test_an_error_in_exclude_is_ignored_through_a_permit() -> None:
    breaker = standalone(exclude=[PartnerDeclined])
    (await breaker.admit()).failure(PartnerDown("500"))
    (await breaker.admit()).failure(PartnerDeclined("404"))
    assert breaker.fail_counter == 0  # pybreaker counts an excluded error as a success


async def test_a_released_trial_permit_lets_the_next_caller_be_the_trial() -> None:
    clock = FakeClock()
    breaker = standalone(clock)
    await trip(breaker, alone=True)
    with pytest.raises(NotPermitted, match="circuit-open"):
        await breaker.admit()
    clock.advance(RESET_TIMEOUT)
    trial = await breaker.admit()
    assert trial.is_trial
    with pytest.raises(NotPermitted, match="trial-in-flight"):
        await breaker.admit()
    trial.release()
    assert breaker.state == "half-open"  # no outcome: still half-open
    (await breaker.admit()).success()
    assert breaker.state == "closed"


async def test_the_decorator_guards_an_async_function_with_its_arguments() -> None:
    breaker = standalone()
    calls: list[tuple[int, str]] = []

    @breaker
    async def fetch(n: int, *, flavour: str) -> str:
        calls.append((n, flavour))
        if flavour == "bad":
            raise PartnerDown("500")
        return f"offer {n}"

    assert fetch.__name__ == "fetch"
    assert await fetch(1, flavour="hot") == "offer 1"
    for n in range(3):
        with pytest.raises(PartnerDown):
            await fetch(n, flavour="bad")
    with pytest.raises(NotPermitted):
        await fetch(9, flavour="hot")
    assert calls[-1] == (2, "bad") and len(calls) == 4
    assert breaker.state == "open"


async def test_trip_opens_and_a_trial_follows_after_the_reset_timeout() -> None:
    clock = FakeClock()
    breaker = standalone(clock)
    breaker.trip()
    assert breaker.state == "open"
    with pytest.raises(NotPermitted, match="circuit-open"):
        await breaker.call(ok)
    clock.advance(RESET_TIMEOUT)
    assert await breaker.call(ok) == "hot"
    assert breaker.state == "closed"


# The closed circuit's fast path: cheaper, and telling the listeners all they would hear.


class CallCounter(pybreaker.CircuitBreakerListener):
    """A listener that hears each call, as a metrics exporter would."""

    def __init__(self) -> None:
        self.before_calls = self.successes = self.failures = 0

    def before_call(
        self, cb: pybreaker.CircuitBreaker, func: object, *args: object, **kwargs: object
    ) -> None:
        self.before_calls += 1

    def success(self, cb: pybreaker.CircuitBreaker) -> None:
        self.successes += 1

    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        self.failures += 1


async def test_a_closed_circuits_success_skips_pybreakers_handlers_when_no_listener_hears_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handled = []
    monkeypatch.setattr(pybreaker.CircuitClosedState, "_handle_success", lambda state: handled.append(state))
    breaker = make_breaker()  # the breaker itself and a LogListener, DEBUG off
    assert await breaker.call(ok) == "hot"
    async with breaker.calling():
        pass
    (await breaker.admit()).success()
    assert handled == []


async def test_a_listener_that_hears_calls_is_told_of_every_call_even_when_added_later() -> None:
    breaker = make_breaker()
    await breaker.call(ok)  # the fast path taken first, with nobody listening to calls
    counter = CallCounter()
    breaker.add_listener(counter)
    await breaker.call(ok)
    async with breaker.calling():
        pass
    (await breaker.admit()).success()
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    await breaker.call(ok)  # a success after a failure resets the count, through pybreaker
    assert (counter.before_calls, counter.successes, counter.failures) == (5, 4, 1)
    assert breaker.fail_counter == 0
    breaker.state_machine.remove_listener(counter)
    await breaker.call(ok)
    assert counter.successes == 4


async def test_log_listener_logs_calls_once_debug_is_enabled_at_run_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    breaker = make_breaker()
    caplog.set_level(logging.INFO, logger="circuit_breaker")
    await breaker.call(ok)
    assert not caplog.records
    caplog.set_level(logging.DEBUG, logger="circuit_breaker")
    await breaker.call(ok)
    await breaker.call(ok)  # logging has cached DEBUG as enabled by now: still heard
    assert [record.getMessage() for record in caplog.records] == [
        "partner-offer: before call to ok",
        "partner-offer: call succeeded",
    ] * 2


async def test_log_listener_logs_a_call_made_while_loggings_cache_is_empty(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A level set on any logger empties every logger's cache of answers: the breaker asks
    logging again then, rather than taking the empty cache for DEBUG off."""
    breaker = make_breaker()
    caplog.set_level(logging.DEBUG, logger="circuit_breaker")
    logging.getLogger("tests.elsewhere").setLevel(logging.NOTSET)
    await breaker.call(ok)
    assert [record.getMessage() for record in caplog.records] == [
        "partner-offer: before call to ok",
        "partner-offer: call succeeded",
    ]


async def test_a_permit_admitted_once_the_state_is_read_again_tells_listeners_of_its_success() -> None:
    """Two breakers on one storage, as two workers see one state: the one that last saw the
    circuit open, after the other closed it, admits through the full path, and a listener
    that hears calls hears that call end too."""
    storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
    closer, behind = standalone(state_storage=storage), standalone(state_storage=storage)
    await trip(closer, alone=True)
    with pytest.raises(NotPermitted):
        await behind.call(ok)  # it reads the open state
    closer.reset()
    counter = CallCounter()
    behind.add_listener(counter)
    (await behind.admit()).success()
    assert (counter.before_calls, counter.successes) == (1, 1)


async def test_a_cut_short_call_leaves_its_task_free_to_await_again() -> None:
    breaker = make_breaker()
    inside = asyncio.Event()

    hang = hanging(inside)

    async def caller() -> str:
        with pytest.raises(CutShort):
            await breaker.call(hang)
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # the breaker's cancellation is undone
        await asyncio.sleep(0)  # and no cancellation is left pending for the next await
        return "after"

    task = asyncio.create_task(caller())
    await asyncio.wait_for(inside.wait(), BOUND)
    breaker.trip()
    assert await asyncio.wait_for(task, BOUND) == "after"
    assert not breaker._waiting and not breaker._cut


async def test_a_cancellation_from_outside_while_cut_short_stays_a_cancellation() -> None:
    breaker = make_breaker()
    inside = asyncio.Event()

    hang = hanging(inside)

    task = asyncio.create_task(breaker.call(hang))
    await asyncio.wait_for(inside.wait(), BOUND)
    breaker.trip()
    await asyncio.sleep(0)  # the breaker cancels the call on the loop's next turn
    task.cancel()  # and its caller gives up too: that cancellation must not become a CutShort
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, BOUND)


async def test_a_call_inside_a_calling_block_is_cut_short_and_so_is_the_block() -> None:
    breaker = make_breaker()
    inside = asyncio.Event()

    hang = hanging(inside)

    async def block() -> str:
        async with breaker.calling():
            return await breaker.call(hang)

    task = asyncio.create_task(block())
    await asyncio.wait_for(inside.wait(), BOUND)
    breaker.trip()
    with pytest.raises(CutShort):
        await asyncio.wait_for(task, BOUND)
    assert not breaker._waiting and not breaker._cut

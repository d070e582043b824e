"""The breaker's contract, call by call: what each state lets through, what it counts, what
it says on `/offer/circuit` and in the log, and what it asks of the fleet's shared state.

In-process and on an injected clock; the shared state is a stand-in that records what the
breaker asks of it, so each rule is checked on its own (tests/test_fleet_state.py checks
the same rules against a real redis-server).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
from typing import Any

import pybreaker
import pytest

from circuit_breaker import AsyncCircuitBreaker, CutShort, LogListener, NotPermitted
from offer_service import BREAKER_NAME, build_breaker
from service.partner_client import PartnerDeclined
from service.settings import OfferSettings
from tests.fake_clock import FakeClock
from tests.partner_stand_ins import Busy, PartnerDown, busy, fail, ok

RESET_TIMEOUT = 15.0
BOUND = 5.0


def make_breaker(
    clock: FakeClock | None = None, not_counted: tuple[type[BaseException], ...] = ()
) -> AsyncCircuitBreaker:
    settings = OfferSettings(circuit_fail_max=3, circuit_reset_timeout=RESET_TIMEOUT)
    return build_breaker(settings, not_counted=not_counted, clock=clock or FakeClock())


async def trip(breaker: AsyncCircuitBreaker) -> None:
    for _ in range(breaker.state_machine.fail_max):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
    assert breaker.state_name == "open"


class FleetStandIn:
    """What `AsyncCircuitBreaker` asks of a shared state, answered as a test decides.

    It is also the pybreaker storage, as `SharedCircuitState` is: the state lives here."""

    def __init__(self, clock: FakeClock, verdict: str = "granted") -> None:
        self.clock = clock
        self.verdict = verdict
        self.generation = 0
        self.connected = True
        self.until_trial = 0.0
        self.forced: list[str] = []
        self.released = 0
        self.trials_asked = 0
        self.holds: list[float] = []
        self.on_change: Any = None

    async def acquire_trial(self) -> str:
        self.trials_asked += 1
        await asyncio.sleep(0)
        return self.verdict

    def release_trial(self) -> None:
        self.released += 1

    def seconds_until_trial(self) -> float:
        return self.until_trial

    def force(self, state: str) -> None:
        self.forced.append(state)

    def hold_open(self, seconds: float) -> None:
        self.holds.append(seconds)


def fleet_breaker(clock: FakeClock, verdict: str = "granted") -> tuple[AsyncCircuitBreaker, FleetStandIn]:
    fleet = FleetStandIn(clock, verdict)
    breaker = pybreaker.CircuitBreaker(
        fail_max=3,
        reset_timeout=RESET_TIMEOUT,
        exclude=[PartnerDeclined],
        state_storage=pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED),
        name=BREAKER_NAME,
    )
    return AsyncCircuitBreaker(breaker, fleet, clock=clock), fleet  # type: ignore[arg-type]


class Gate:
    """A partner call that waits until the test lets it end."""

    def __init__(self, result: str = "late hot", error: Exception | None = None) -> None:
        self.started = asyncio.Event()
        self.finish = asyncio.Event()
        self.result = result
        self.error = error
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        self.started.set()
        await self.finish.wait()
        if self.error is not None:
            raise self.error
        return self.result


# What NotPermitted carries


def test_circuit_open_carries_its_reason_as_attribute_and_message() -> None:
    error = NotPermitted("trial-in-flight")
    assert error.reason == "trial-in-flight"
    assert str(error) == "trial-in-flight"
    assert isinstance(error, pybreaker.CircuitBreakerError)


# The open period


async def test_an_open_circuit_refuses_until_the_last_moment_of_its_reset_timeout() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    await trip(breaker)
    gate = Gate()
    clock.advance(RESET_TIMEOUT - 0.5)
    assert breaker.seconds_until_trial() == pytest.approx(0.5)
    with pytest.raises(NotPermitted, match="circuit-open"):
        await breaker.call(gate)
    clock.advance(0.4999)
    with pytest.raises(NotPermitted, match="circuit-open"):
        await breaker.call(gate)
    assert gate.calls == 0
    clock.advance(0.0001)
    assert breaker.seconds_until_trial() == 0
    assert await breaker.call(ok) == "hot"


async def test_seconds_until_trial_is_zero_before_the_circuit_ever_opened_and_never_negative() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    assert breaker.seconds_until_trial() == 0.0
    await trip(breaker)
    clock.advance(RESET_TIMEOUT * 10)
    assert breaker.seconds_until_trial() == 0.0


async def test_a_reopened_circuit_starts_a_full_new_open_period() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    await trip(breaker)
    clock.advance(RESET_TIMEOUT + 3)
    with pytest.raises(PartnerDown):
        await breaker.call(fail)  # the trial fails: open again, from now
    assert breaker.state_name == "open"
    assert breaker.seconds_until_trial() == RESET_TIMEOUT


async def test_with_shared_state_the_open_period_is_the_fleets() -> None:
    clock = FakeClock()
    breaker, fleet = fleet_breaker(clock)
    await trip(breaker)
    fleet.until_trial = 4.25
    assert breaker.seconds_until_trial() == 4.25
    with pytest.raises(NotPermitted, match="circuit-open"):
        await breaker.call(ok)
    assert fleet.trials_asked == 0
    fleet.until_trial = 0.0
    assert await breaker.call(ok) == "hot"
    assert fleet.trials_asked == 1


# The half-open trial


async def test_the_trial_call_is_the_one_that_half_opens_the_circuit() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    await trip(breaker)
    clock.advance(RESET_TIMEOUT)
    gate = Gate()
    trial = asyncio.create_task(breaker.call(gate))
    await asyncio.wait_for(gate.started.wait(), BOUND)
    assert breaker.state_name == "half-open"
    assert breaker.snapshot()["trial_in_flight"] is True
    with pytest.raises(NotPermitted, match="trial-in-flight"):
        await breaker.call(ok)
    gate.finish.set()
    assert await asyncio.wait_for(trial, BOUND) == "late hot"
    assert breaker.snapshot()["trial_in_flight"] is False
    assert breaker.state_name == "closed"


async def test_a_partner_rejection_during_the_trial_closes_the_circuit() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    await trip(breaker)
    clock.advance(RESET_TIMEOUT)

    async def no() -> str:
        raise PartnerDeclined("404")

    with pytest.raises(PartnerDeclined):
        await breaker.call(no)
    assert breaker.state_name == "closed"  # the partner answered: it is up
    assert breaker.snapshot()["trial_in_flight"] is False


async def test_a_failed_trial_frees_the_trial_for_the_next_open_period() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    await trip(breaker)
    clock.advance(RESET_TIMEOUT)
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    assert breaker.snapshot()["trial_in_flight"] is False
    clock.advance(RESET_TIMEOUT)
    assert await breaker.call(ok) == "hot"


async def test_a_trial_cut_short_by_a_forced_open_frees_the_trial() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    await trip(breaker)
    clock.advance(RESET_TIMEOUT)
    gate = Gate()
    trial = asyncio.create_task(breaker.call(gate))
    await asyncio.wait_for(gate.started.wait(), BOUND)
    breaker.trip()
    with pytest.raises(CutShort):
        await asyncio.wait_for(trial, BOUND)
    assert breaker.snapshot()["trial_in_flight"] is False
    clock.advance(RESET_TIMEOUT)
    assert await breaker.call(ok) == "hot"


async def test_the_fleet_grants_the_trial_and_the_process_half_opens() -> None:
    clock = FakeClock()
    breaker, fleet = fleet_breaker(clock, verdict="granted")
    await trip(breaker)
    gate = Gate()
    trial = asyncio.create_task(breaker.call(gate))
    await asyncio.wait_for(gate.started.wait(), BOUND)
    assert breaker.state_name == "half-open"
    with pytest.raises(NotPermitted, match="trial-in-flight"):
        await breaker.call(ok)  # this process's one trial: the fleet is not even asked
    assert fleet.trials_asked == 1
    gate.finish.set()
    assert await asyncio.wait_for(trial, BOUND) == "late hot"
    assert breaker.state_name == "closed"
    assert fleet.released == 0  # an outcome was recorded: the transition ends the lease


@pytest.mark.parametrize(("verdict", "reason"), [("busy", "trial-in-flight"), ("open", "circuit-open")])
async def test_a_trial_the_fleet_refuses_is_never_made_and_can_be_asked_again(
    verdict: str, reason: str
) -> None:
    clock = FakeClock()
    breaker, fleet = fleet_breaker(clock, verdict=verdict)
    await trip(breaker)
    gate = Gate()
    for asked in (1, 2):
        with pytest.raises(NotPermitted) as refused:
            await breaker.call(gate)
        assert refused.value.reason == reason
        assert fleet.trials_asked == asked
    assert gate.calls == 0
    assert breaker.state_name == "open"
    assert breaker.snapshot()["trial_in_flight"] is False


async def test_a_circuit_the_fleet_already_closed_lets_the_call_through_as_no_trial() -> None:
    clock = FakeClock()
    breaker, fleet = fleet_breaker(clock, verdict="closed")
    await trip(breaker)
    gate = Gate()
    call = asyncio.create_task(breaker.call(gate))
    await asyncio.wait_for(gate.started.wait(), BOUND)
    assert breaker.snapshot()["trial_in_flight"] is False
    call.cancel()  # not a trial: nothing to hand back to the fleet
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(call, BOUND)
    assert fleet.released == 0


async def test_a_cancelled_trial_hands_the_fleets_lease_back() -> None:
    clock = FakeClock()
    breaker, fleet = fleet_breaker(clock)
    await trip(breaker)
    gate = Gate()
    trial = asyncio.create_task(breaker.call(gate))
    await asyncio.wait_for(gate.started.wait(), BOUND)
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(trial, BOUND)
    assert fleet.released == 1
    assert breaker.snapshot()["trial_in_flight"] is False


async def test_a_trial_that_never_ran_or_was_cut_short_hands_the_fleets_lease_back() -> None:
    clock = FakeClock()
    breaker, fleet = fleet_breaker(clock)
    await trip(breaker)

    async def takes_one(arg: str) -> str:
        return arg

    def not_async() -> str:
        return "hot"

    with pytest.raises(TypeError):
        await breaker.call(takes_one)  # type: ignore[call-arg]  # it could not even start
    assert fleet.released == 1 and not breaker.trial_in_flight
    with pytest.raises(TypeError):
        await breaker.call(not_async)  # type: ignore[arg-type]
    assert fleet.released == 2 and not breaker.trial_in_flight
    gate = Gate()
    trial = asyncio.create_task(breaker.call(gate))
    await asyncio.wait_for(gate.started.wait(), BOUND)
    breaker.trip()
    with pytest.raises(CutShort):
        await asyncio.wait_for(trial, BOUND)
    assert fleet.released == 3 and not breaker.trial_in_flight


async def test_a_trial_that_ends_in_an_outcome_keeps_the_lease_for_the_transition() -> None:
    clock = FakeClock()
    breaker, fleet = fleet_breaker(clock)
    await trip(breaker)
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    assert fleet.released == 0
    assert breaker.state_name == "open"


async def test_a_trial_that_reports_nothing_hands_the_lease_back_as_a_failed_trial_not_a_force() -> None:
    clock = FakeClock()
    breaker, fleet = fleet_breaker(clock)
    await trip(breaker)
    permit = await breaker.admit()
    assert permit.is_trial and breaker.state_name == "half-open"
    clock.advance(breaker.max_trial_seconds)
    fleet.until_trial = RESET_TIMEOUT  # the fleet's record, open again after the failed trial
    with pytest.raises(NotPermitted) as refused:
        await breaker.admit()
    assert refused.value.reason == "circuit-open"
    assert breaker.state_name == "open"
    assert fleet.released == 1
    # Counted as the trial's failure, as any failed trial is: an operator's force would
    # overwrite whatever the fleet's record says by now.
    assert fleet.forced == []
    del permit  # dropped here, logged here


async def test_a_call_the_fleet_let_through_as_no_trial_is_not_watched_as_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    breaker, _ = fleet_breaker(clock, verdict="closed")
    await trip(breaker)
    gc.collect()  # what earlier tests left is not this test's to log
    with caplog.at_level(logging.WARNING, logger="circuit_breaker"):
        permit = await breaker.admit()
        assert not permit.is_trial
        del permit  # it held no place: nothing to log
        gc.collect()
    assert caplog.records == []


async def test_the_fleet_is_held_open_for_what_is_left_of_a_retry_after_and_not_once_it_ran_out() -> None:
    clock = FakeClock()
    breaker, fleet = fleet_breaker(clock)
    with pytest.raises(Busy):
        await breaker.call(busy, 5.0)
    clock.advance(5.0)  # it has run out when the circuit opens
    for _ in range(2):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
    assert breaker.state_name == "open"
    assert fleet.holds == []
    breaker.reset()
    with pytest.raises(Busy):
        await breaker.call(busy, 30.0)
    clock.advance(10.0)
    for _ in range(2):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
    assert breaker.state_name == "open"
    assert fleet.holds == [20.0]


async def test_a_caller_cancelled_while_the_fleet_decides_frees_the_trial() -> None:
    clock = FakeClock()
    breaker, fleet = fleet_breaker(clock)
    await trip(breaker)
    asked = asyncio.Event()

    async def slow_verdict() -> str:
        fleet.trials_asked += 1
        asked.set()
        await asyncio.sleep(30)
        return "granted"

    fleet.acquire_trial = slow_verdict  # type: ignore[method-assign]
    claiming = asyncio.create_task(breaker.call(ok))
    await asyncio.wait_for(asked.wait(), BOUND)
    assert breaker.snapshot()["trial_in_flight"] is True
    claiming.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(claiming, BOUND)
    assert breaker.snapshot()["trial_in_flight"] is False
    fleet.acquire_trial = FleetStandIn(clock).acquire_trial  # type: ignore[method-assign]
    assert await breaker.call(ok) == "hot"


# Outcomes, and which generation they count against


async def test_a_not_counted_error_in_the_trial_frees_it_without_an_outcome() -> None:
    class LocalTrouble(Exception):
        pass

    async def trouble() -> str:
        raise LocalTrouble

    clock = FakeClock()
    breaker = make_breaker(clock, not_counted=(LocalTrouble,))
    await trip(breaker)
    clock.advance(RESET_TIMEOUT)
    with pytest.raises(LocalTrouble):
        await breaker.call(trouble)
    assert breaker.state_name == "half-open"
    assert breaker.snapshot()["trial_in_flight"] is False
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    assert breaker.state_name == "open"


async def test_a_failure_that_trips_the_circuit_is_raised_as_the_partners_own_error() -> None:
    breaker = make_breaker()
    for _ in range(2):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
    with pytest.raises(PartnerDown, match="500"):
        await breaker.call(fail)
    assert breaker.state_name == "open"


async def test_every_operators_close_starts_a_new_generation_even_of_a_closed_circuit() -> None:
    breaker = make_breaker()
    gates = [Gate(error=PartnerDown("late 500")) for _ in range(3)]
    late = [asyncio.create_task(breaker.call(gate)) for gate in gates]
    for gate in gates:
        await asyncio.wait_for(gate.started.wait(), BOUND)
    breaker.reset()
    later = Gate(error=PartnerDown("late 500"))
    more = asyncio.create_task(breaker.call(later))
    await asyncio.wait_for(later.started.wait(), BOUND)
    breaker.reset()  # a second close: the call admitted between the two is stale too
    for gate in (*gates, later):
        gate.finish.set()
    results = await asyncio.wait_for(asyncio.gather(*late, more, return_exceptions=True), BOUND)
    assert all(isinstance(result, PartnerDown) for result in results)
    assert breaker.fail_counter == 0
    assert breaker.state_name == "closed"


async def test_an_operators_close_of_a_closed_circuit_clears_its_failures() -> None:
    breaker = make_breaker()
    for _ in range(2):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
    breaker.reset()
    assert breaker.fail_counter == 0
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    assert breaker.state_name == "closed"  # one failure after the close, not three


async def test_an_outcome_admitted_in_one_state_is_ignored_once_the_state_moved_on() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    gate = Gate()
    slow = asyncio.create_task(breaker.call(gate))
    await asyncio.wait_for(gate.started.wait(), BOUND)
    breaker.trip()  # cut short, so let the waiting call be recorded from here
    with pytest.raises(CutShort):
        await asyncio.wait_for(slow, BOUND)
    breaker.reset()
    assert breaker.state_name == "closed"
    assert breaker.fail_counter == 0


async def test_with_shared_state_an_outcome_from_an_older_fleet_generation_is_ignored() -> None:
    clock = FakeClock()
    breaker, fleet = fleet_breaker(clock)
    for _ in range(2):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
    gate = Gate()
    slow = asyncio.create_task(breaker.call(gate))
    await asyncio.wait_for(gate.started.wait(), BOUND)
    fleet.generation += 1  # a transition elsewhere in the fleet, heard here
    gate.finish.set()
    assert await asyncio.wait_for(slow, BOUND) == "late hot"
    assert breaker.fail_counter == 2  # the stale success reset nothing


async def test_an_operators_close_and_a_fleet_transition_heard_after_it_are_two_generations() -> None:
    clock = FakeClock()
    breaker, fleet = fleet_breaker(clock)
    gate = Gate(error=PartnerDown("late 500"))
    slow = asyncio.create_task(breaker.call(gate))
    await asyncio.wait_for(gate.started.wait(), BOUND)
    breaker.reset()  # closed already: a new generation here
    fleet.generation += 1  # and the fleet's version of that close, heard back
    gate.finish.set()
    with pytest.raises(PartnerDown):
        await asyncio.wait_for(slow, BOUND)
    assert breaker.fail_counter == 0


async def test_an_ignored_outcome_is_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="circuit_breaker")
    breaker = make_breaker()
    gate = Gate()
    slow = asyncio.create_task(breaker.call(gate))
    await asyncio.wait_for(gate.started.wait(), BOUND)
    breaker.reset()
    gate.finish.set()
    assert await asyncio.wait_for(slow, BOUND) == "late hot"
    ignored = [r for r in caplog.records if "earlier state" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in ignored] == [
        (logging.DEBUG, "partner-offer: ignoring an outcome from an earlier state")
    ]


async def test_a_call_cut_short_by_the_circuit_opening_counts_for_nothing() -> None:
    breaker = make_breaker()
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    gate = Gate()
    waiting = asyncio.create_task(breaker.call(gate))
    await asyncio.wait_for(gate.started.wait(), BOUND)
    breaker.trip()
    with pytest.raises(CutShort) as cut:
        await asyncio.wait_for(waiting, BOUND)
    assert cut.value.reason == "cut-short"
    assert cut.value.__cause__ is None and cut.value.__suppress_context__
    assert breaker.fail_counter == 1


async def test_closing_cuts_no_call_short() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    await trip(breaker)
    clock.advance(RESET_TIMEOUT)
    gate = Gate()
    trial = asyncio.create_task(breaker.call(gate))
    await asyncio.wait_for(gate.started.wait(), BOUND)
    breaker.reset()  # half-open to closed while the trial waits on the partner
    await asyncio.sleep(0.01)
    assert not trial.done()
    gate.finish.set()
    assert await asyncio.wait_for(trial, BOUND) == "late hot"
    assert breaker.state_name == "closed"


async def test_an_opening_that_nobody_waits_on_still_starts_the_open_period() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    breaker.trip()
    assert breaker.seconds_until_trial() == RESET_TIMEOUT
    clock.advance(1)
    assert breaker.seconds_until_trial() == RESET_TIMEOUT - 1


# The operator's hand, for the whole fleet


async def test_forcing_a_state_is_written_for_the_fleet_even_when_the_process_is_already_there() -> None:
    clock = FakeClock()
    breaker, fleet = fleet_breaker(clock)
    breaker.reset()
    breaker.trip()
    breaker.trip()
    breaker.reset()
    assert fleet.forced == ["closed", "open", "open", "closed"]
    assert breaker.state_name == "closed"


async def test_heard_from_the_fleet_the_process_notices_a_change_at_once() -> None:
    clock = FakeClock()
    breaker, fleet = fleet_breaker(clock)
    gate = Gate()
    waiting = asyncio.create_task(breaker.call(gate))
    await asyncio.wait_for(gate.started.wait(), BOUND)
    breaker.state_machine._state_storage.state = pybreaker.STATE_OPEN  # as a message from Redis sets it
    assert callable(fleet.on_change)
    fleet.on_change()
    assert breaker.state_name == "open"
    with pytest.raises(CutShort):
        await asyncio.wait_for(waiting, BOUND)


# What /offer/circuit shows


async def test_the_snapshot_of_a_closed_circuit() -> None:
    breaker = make_breaker()
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    assert breaker.snapshot() == {
        "name": "partner-offer",
        "current_state": "closed",
        "fail_counter": 1,
        "fail_max": 3,
        "reset_timeout": RESET_TIMEOUT,
        "opened_at": None,
        "seconds_until_trial": None,
        "trial_in_flight": False,
        "storage": "memory",
        "degraded": False,
        "policy": "consecutive",
        "window": None,
    }


async def test_the_snapshot_of_an_open_circuit_rounds_the_wait_to_milliseconds() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    await trip(breaker)
    clock.advance(1.23456)
    snapshot = breaker.snapshot()
    assert snapshot["current_state"] == "open"
    assert snapshot["seconds_until_trial"] == round(RESET_TIMEOUT - 1.23456, 3)
    assert isinstance(snapshot["opened_at"], str) and "T" in snapshot["opened_at"]


async def test_the_snapshot_says_degraded_while_the_fleet_is_unreachable() -> None:
    clock = FakeClock()
    breaker, fleet = fleet_breaker(clock)
    assert breaker.snapshot()["degraded"] is False
    fleet.connected = False
    assert breaker.snapshot()["degraded"] is True


# The log


async def test_the_log_names_the_failure_and_the_count_against_the_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="circuit_breaker")
    breaker = make_breaker()
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    messages = [record.getMessage() for record in caplog.records]
    assert "partner-offer: call failed: PartnerDown('500') (fail_counter 1 of 3)" in messages


async def test_the_log_names_a_call_without_a_name_by_what_it_is(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="circuit_breaker")
    breaker = make_breaker()
    partial = functools.partial(ok)
    assert await breaker.call(partial) == "hot"
    messages = [record.getMessage() for record in caplog.records]
    assert f"partner-offer: before call to {partial!r}" in messages


def test_the_log_says_when_a_state_had_no_predecessor(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="circuit_breaker")
    breaker = make_breaker()
    LogListener().state_change(breaker.state_machine, None, breaker.state_machine.state)
    records = [(record.levelno, record.getMessage()) for record in caplog.records]
    assert records == [(logging.WARNING, "partner-offer: state changed from None to closed")]


# The walkthrough's breaker


def test_the_walkthroughs_breaker_logs_through_its_listener_and_counts_partner_rejections_as_successes() -> (
    None
):
    breaker = make_breaker()
    assert breaker.state_machine.name == BREAKER_NAME == "partner-offer"
    assert any(isinstance(listener, LogListener) for listener in breaker.state_machine.listeners)
    assert breaker.state_machine.excluded_exceptions == (PartnerDeclined,)
    assert breaker.shared is None
    assert breaker.state_machine._state_storage.name == "memory"


def test_the_walkthroughs_breaker_takes_its_limits_from_the_settings() -> None:
    settings = OfferSettings(circuit_fail_max=7, circuit_reset_timeout=2.5)
    breaker = build_breaker(settings, clock=FakeClock())
    assert breaker.state_machine.fail_max == 7
    assert breaker.state_machine.reset_timeout == 2.5
    assert breaker.snapshot()["fail_max"] == 7

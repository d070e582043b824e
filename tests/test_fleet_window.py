"""What an instance keeps for the fleet, decided before any round trip to Redis: the rate
policy's window as it is shared (`service/fleet_window.py`), the outbox of writes, and a
Retry-After hold; on an injected clock."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from circuit_breaker import CallWindow, RatePolicy, WindowCounts
from service.fleet_window import FleetWindow
from service.redis_outbox import MAX_OUTBOX, Hold, Outbox, Source
from service.redis_state import SharedCircuitState
from tests.fake_clock import FakeClock

POLICY = RatePolicy(window=10.0, min_calls=4, failure_rate=0.5, slow_call_seconds=1.0, slow_call_rate=0.5)
RULE = "10000,4,0.5,0.5"


def fleet_window(clock: FakeClock) -> tuple[FleetWindow, CallWindow]:
    shared = FleetWindow(POLICY, clock, on_due=lambda: None)
    calls = CallWindow(POLICY.window, clock)
    shared.share(calls)
    return shared, calls


def test_before_the_breaker_shares_its_window_nothing_is_unsent() -> None:
    shared = FleetWindow(POLICY, FakeClock(0.0), on_due=lambda: None)  # nothing heard, at any time
    assert shared.unsent == WindowCounts()
    assert shared.counts() == WindowCounts()
    assert shared.take() is None


def test_the_calls_counted_since_the_last_take_are_sent_once_each() -> None:
    clock = FakeClock()
    shared, calls = fleet_window(clock)
    calls.record(failed=True, slow=False)
    calls.record(failed=False, slow=True)
    assert shared.take() == ("window", f"2,1,1,{RULE}")
    assert shared.take() is None
    calls.record(failed=False, slow=False)
    assert shared.take() == ("window", f"1,0,0,{RULE}")


def test_the_fleets_totals_as_heard_count_its_slow_calls_with_the_unsent_ones() -> None:
    clock = FakeClock()
    shared, calls = fleet_window(clock)
    shared.heard(calls=10, failures=2, slow=6)
    calls.record(failed=True, slow=True)
    assert shared.counts() == WindowCounts(calls=11, failures=3, slow=7)


def test_fleet_totals_heard_more_than_a_window_ago_are_not_counted() -> None:
    clock = FakeClock()
    shared, calls = fleet_window(clock)
    shared.heard(calls=10, failures=5, slow=0)
    clock.advance(POLICY.window)
    assert shared.counts() == WindowCounts(calls=10, failures=5, slow=0)  # a window ago exactly: still
    clock.advance(0.5)
    calls.record(failed=False, slow=False)
    assert shared.counts() == WindowCounts(calls=1, failures=0, slow=0)


def test_a_reset_forgets_the_fleets_totals_and_the_unsent_calls() -> None:
    clock = FakeClock()
    shared, calls = fleet_window(clock)
    shared.heard(calls=10, failures=5, slow=0)
    calls.record(failed=True, slow=False)
    shared.clear()
    assert shared.counts() == WindowCounts()
    assert shared.take() is None


async def test_a_recount_is_sent_at_once_and_never_trips_until_a_call_ends_after_it() -> None:
    clock = FakeClock()
    due = asyncio.Event()
    shared = FleetWindow(POLICY, clock, on_due=due.set)
    calls = CallWindow(POLICY.window, clock)
    shared.share(calls)
    try:
        for failed in (True, True, False):
            calls.record(failed=failed, slow=False)
        shared.take()
        shared.recount("seeding-1")
        assert shared.timer is not None and shared.timer.when() <= asyncio.get_running_loop().time()
        await asyncio.wait_for(due.wait(), 5)  # not a flush interval later: now
        assert shared.recounted == "seeding-1"
        assert shared.take() == ("recount", f"3,2,0,{RULE}")  # counted again: may not trip

        shared.recount("seeding-2")
        calls.record(failed=True, slow=False)  # a call ended since: the fleet decides on its window
        assert shared.take() == ("window", f"4,3,0,{RULE}")
    finally:
        shared.cancel()


def test_a_new_state_starts_the_breakers_window_afresh_and_sends_nothing_of_the_old_one() -> None:
    clock = FakeClock()
    shared, calls = fleet_window(clock)
    calls.record(failed=True, slow=False)
    shared.new_state()
    assert calls.counts() == WindowCounts()
    assert shared.take() is None


async def test_a_cancelled_window_is_never_due_again() -> None:
    shared = FleetWindow(POLICY, FakeClock(), on_due=lambda: None)
    shared.start()
    timer = shared.timer
    shared.cancel()
    assert timer is not None and timer.cancelled() and shared.timer is None


# The outbox (`service/redis_outbox.py`): what waits to be written.


def test_a_full_outbox_drops_its_oldest_entries_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    """Only transitions pile up (counts coalesce), during a long outage: the oldest are stale
    by then, and the log says so at the first drop, not at each."""
    outbox = Outbox()
    for base in range(MAX_OUTBOX + 2):
        outbox.send("open", base)
    assert [base for _, base, _ in outbox.entries] == list(range(2, MAX_OUTBOX + 2))
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert dropped == ["circuit updates dropped: 1 so far (Redis unreachable too long)"]


def test_a_close_drops_the_retry_after_holds_waiting_and_nothing_else() -> None:
    outbox = Outbox()
    outbox.send("hold", 3, Hold(seconds=30, heard=0.0))
    outbox.count(reset=False, base=3)
    outbox.send("open", 3)
    outbox.send("hold", 4, Hold(seconds=10, heard=0.0))
    outbox.drop_holds()
    assert [op for op, _, _ in outbox.entries] == ["failures", "open"]


def test_counts_and_window_entries_leave_the_version_as_it_is_and_every_other_entry_moves_it() -> None:
    """What `transitions_pending` says decides the version the next entries are based on:
    taken for a transition, a pending count would keep the next failures on an old version,
    which Redis refuses as stale; a pending transition missed would base them on one too old."""
    outbox = Outbox()
    outbox.count(reset=False, base=3)
    outbox.count(reset=True, base=4)
    outbox.send("window", 4, "1,1,0,10000,5,0.5,1.0")
    outbox.send("recount", 4, "1,1,0,10000,5,0.5,1.0")
    assert not outbox.transitions_pending()
    for op in ("open", "trip", "close", "force-open", "force-close", "hold"):
        with_one = Outbox()
        with_one.count(reset=False, base=3)
        with_one.send(op, 3, 0)
        assert with_one.transitions_pending(), op
        with_one.next_batch()  # in flight, its reply not heard: still pending
        assert with_one.transitions_pending(), op


def test_a_snapshot_read_at_the_version_heard_waits_for_what_is_pending_but_a_writes_reply_does_not() -> None:
    outbox = Outbox()
    outbox.count(reset=False, base=5)  # a failure, not a transition
    for source in (Source.READ, Source.MESSAGE, Source.SEED):
        assert outbox.still_to_apply(5, 5, source), source  # it would roll the count back
    assert not outbox.still_to_apply(5, 5, Source.WRITE)  # the reply to the write that carries it
    assert not outbox.still_to_apply(6, 5, Source.READ)  # a newer version: the count is in it


# A Retry-After hold, as this instance sees it before Redis answers.


def unconnected_shared_state(clock: FakeClock) -> SharedCircuitState:
    """Built, never started: what it decides before any round trip."""
    client = Redis(host="127.0.0.1", port=1)  # never reached: nothing here awaits Redis
    return SharedCircuitState(client, "hold-test", fail_max=3, reset_timeout=15, lease_seconds=5, clock=clock)


def test_a_hold_that_opens_the_circuit_permits_no_trial_until_it_ends() -> None:
    clock = FakeClock()
    state = unconnected_shared_state(clock)
    state.connected = True  # deciding with the fleet: no delay of its own on top
    state.hold_open(30)
    assert state.state == "open"
    assert state.seconds_until_trial() == 30
    clock.advance(20)
    assert state.seconds_until_trial() == 10


def test_a_second_hold_while_open_counts_from_the_open_periods_start() -> None:
    clock = FakeClock()
    state = unconnected_shared_state(clock)
    state.connected = True
    state.hold_open(30)
    clock.advance(20)
    state.hold_open(30)  # heard 20 s into the period: it ends 30 s from now, 50 s from the start
    assert state.seconds_until_trial() == 30
    state.hold_open(5)  # a shorter one shortens nothing
    assert state.seconds_until_trial() == 30

"""The rate policy's window as one instance shares it with the fleet.

A call costs the fleet nothing: the breaker counts it in its own window
(`CallWindow`), and every `FLUSH_INTERVAL` the calls counted there since the
last flush (the difference of its `counted()` figures, which only grow) leave
for Redis as one entry of the shared state's next batch; the script adds them
to the fleet's buckets and trips on the fleet's rates. So the fleet's totals,
and its trip, are at most one flush interval and a round trip behind. Counting
into the fleet's window on every call made the rate policy with Redis state
cost 2.1 times the consecutive policy per guarded call (callgrind,
tools/bench/micro.py); the flush's timer runs whether calls come or not, five
wake-ups a second that send nothing when there is nothing to send. Counts wait
while Redis is out of reach (and go when it is back, if they are still inside
the window), and a window Redis lost (a FLUSHALL, an eviction, a failover) is
counted again from the breakers' own windows, the calls of the last window
since the circuit last changed state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from circuit_breaker import CallWindow, RatePolicy, WindowCounts

# How often an instance adds its calls to the fleet's window: the fleet's totals, and so
# its trip, are at most this far behind, plus one round trip.
FLUSH_INTERVAL = 0.2


class FleetWindow:
    """This instance's unsent calls, read from the breaker's window (`share`), and the
    fleet's totals as the last write heard them. `on_due` is called every flush interval
    from `start` to `cancel`, for the unsent calls to leave."""

    def __init__(self, policy: RatePolicy, clock: Callable[[], float], on_due: Callable[[], None]) -> None:
        self.policy = policy
        self._clock = clock
        self._on_due = on_due
        # The thresholds travel with each entry: Redis decides the trip on them.
        self._rule = f"{int(policy.window * 1000)},{policy.min_calls},{policy.failure_rate!r},{policy.slow_call_rate!r}"
        self._calls: CallWindow | None = None  # the breaker's window, once it shares it
        self._taken = (0, 0, 0)  # its `counted()` when the unsent calls were last taken
        self._carried = WindowCounts()  # unsent calls besides those: a recount's
        self._fleet: tuple[WindowCounts, float] | None = None  # the fleet's totals, and when heard
        self.timer: asyncio.TimerHandle | None = None
        self.recounted = ""  # the seeding this instance's recent calls were added to

    def share(self, calls: CallWindow) -> None:
        """Count the calls counted in `calls` from now on."""
        self._calls, self._taken = calls, calls.counted()

    @property
    def unsent(self) -> WindowCounts:
        """Calls counted here, not yet added to the fleet's window."""
        carried = self._carried
        if self._calls is None:
            return WindowCounts(carried.calls, carried.failures, carried.slow)
        (calls, failures, slow), (calls_then, failures_then, slow_then) = self._calls.counted(), self._taken
        return WindowCounts(
            carried.calls + calls - calls_then,
            carried.failures + failures - failures_then,
            carried.slow + slow - slow_then,
        )

    def take(self) -> tuple[str, str] | None:
        """The unsent calls as an entry (op, count), None if there are none; they are sent.
        A recount with no call ended since is a `recount`, which never trips the fleet
        (see `recount`): a call's end is what lets the fleet decide on its window."""
        unsent = self.unsent
        # Carried calls are a recount's (nothing else carries any): alone, they may not trip.
        recount_only = bool(self._carried.calls) and (
            self._calls is None or self._calls.counted() == self._taken
        )
        self._drop_unsent()
        if not unsent.calls:
            return None
        op = "recount" if recount_only else "window"
        return op, f"{unsent.calls},{unsent.failures},{unsent.slow},{self._rule}"

    def _drop_unsent(self) -> None:
        self._carried = WindowCounts()
        if self._calls is not None:
            self._taken = self._calls.counted()

    def counts(self) -> WindowCounts:
        """The fleet's window as last heard, plus this instance's unsent calls."""
        fleet = WindowCounts()  # nothing heard within a window: only this process's calls
        if self._fleet is not None:
            heard, heard_at = self._fleet
            if self._clock() - heard_at <= self.policy.window:
                fleet = heard
        unsent = self.unsent
        return WindowCounts(
            fleet.calls + unsent.calls, fleet.failures + unsent.failures, fleet.slow + unsent.slow
        )

    def heard(self, calls: int, failures: int, slow: int) -> None:
        self._fleet = WindowCounts(calls, failures, slow), self._clock()

    def new_state(self) -> None:
        """A new state or generation (an operator's reset anywhere in the fleet) starts a new
        window in Redis: calls counted before it are not added to it, neither now nor when a
        lost window is counted again, so the breaker's own window starts afresh here too,
        as it does at its own transitions (found by the fleet model: a trip's failures,
        re-added after a FLUSHALL that came after the trial closed the circuit, tripped it
        again; and calls made before another instance's reset, re-added after a FLUSHALL)."""
        if self._calls is not None:
            self._calls.clear()
        self.clear()

    def clear(self) -> None:
        """An operator's reset: the window starts afresh here too."""
        self._drop_unsent()
        self._fleet = None

    def drop_if_older_than_window(self, since: float) -> None:
        if self._clock() - since > self.policy.window:
            self._drop_unsent()

    def recount(self, seeding: str) -> None:
        """Redis lost the window: add this instance's calls of the last window again. Calls
        flushed between the loss and this can count twice (at most one flush interval of
        them, and only towards a trip). The instances' calls come back one instance at a
        time, so a recount does not trip the fleet by itself (found by the fleet model: the
        first instance's share alone, 10 calls of which half failed, tripped a fleet whose
        window held 20, a quarter failed): the next call's end decides."""
        self.recounted = seeding
        if self._calls is None:
            return
        self._drop_unsent()
        self._carried = self._calls.counts()
        if self._carried.calls:
            self._due_in(0)

    def start(self) -> None:
        """Flush every `FLUSH_INTERVAL` from now on."""
        self._due_in(FLUSH_INTERVAL)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _due_in(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(seconds, self._due)

    def _due(self) -> None:
        self.timer = None
        self._due_in(FLUSH_INTERVAL)
        self._on_due()

"""The rate policy's window as one instance shares it with the fleet.

Calls are counted here at no cost but a few additions, and leave for Redis
every `FLUSH_INTERVAL` as one entry of the shared state's next batch; the
script adds them to the fleet's buckets and trips on the fleet's rates. So
the fleet's totals, and its trip, are at most one flush interval and a round
trip behind. Counts wait while Redis is out of reach (and go when it is back,
if they are still inside the window), and this instance's calls of the last
window are kept, so that a window Redis lost (a FLUSHALL, an eviction, a
failover) is counted again from the instances that made them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from circuit_breaker import CallWindow, RatePolicy, WindowCounts

# How often an instance adds its calls to the fleet's window: the fleet's totals, and so
# its trip, are at most this far behind, plus one round trip.
FLUSH_INTERVAL = 0.2


class FleetWindow:
    """This instance's unsent calls, its calls of the last window, and the fleet's totals as
    the last write heard them. `on_due` is called when the unsent calls should leave."""

    def __init__(self, policy: RatePolicy, clock: Callable[[], float], on_due: Callable[[], None]) -> None:
        self.policy = policy
        self._clock = clock
        self._on_due = on_due
        # The thresholds travel with each entry: Redis decides the trip on them.
        self._rule = f"{int(policy.window * 1000)},{policy.min_calls},{policy.failure_rate!r},{policy.slow_call_rate!r}"
        self.unsent = WindowCounts()  # counted here, not yet added to the fleet's window
        self._recent = CallWindow(policy.window, clock)
        self._fleet: WindowCounts | None = None
        self._fleet_heard = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.recounted = ""  # the seeding this instance's recent calls were added to
        self._recounting = False  # the unsent calls are a recount only: they may not trip

    def add(self, failed: bool, slow: bool) -> None:
        unsent = self.unsent
        unsent.calls += 1
        unsent.failures += failed
        unsent.slow += slow
        self._recounting = False  # a call's end: the fleet decides on its window now
        self._recent.record(failed, slow)
        self._due_in(FLUSH_INTERVAL)

    def take(self) -> tuple[str, str] | None:
        """The unsent calls as an entry (op, count), None if there are none; they are sent.
        A recount alone is a `recount`, which never trips the fleet (see `recount`)."""
        unsent, self.unsent = self.unsent, WindowCounts()
        if not unsent.calls:
            return None
        op = "recount" if self._recounting else "window"
        self._recounting = False
        return op, f"{unsent.calls},{unsent.failures},{unsent.slow},{self._rule}"

    def counts(self) -> WindowCounts:
        """The fleet's window as last heard, plus this instance's unsent calls."""
        fleet = self._fleet
        if fleet is None or self._clock() - self._fleet_heard > self.policy.window:
            fleet = WindowCounts()  # nothing heard within a window: only this process's calls
        unsent = self.unsent
        return WindowCounts(
            fleet.calls + unsent.calls, fleet.failures + unsent.failures, fleet.slow + unsent.slow
        )

    def heard(self, calls: int, failures: int, slow: int) -> None:
        self._fleet, self._fleet_heard = WindowCounts(calls, failures, slow), self._clock()

    def new_state(self) -> None:
        """A new state (or an operator's reset) starts a new window in Redis: calls counted
        before it are not added to it, neither now nor when a lost window is counted again
        (found by the fleet model: a trip's failures, re-added after a FLUSHALL that came
        after the trial closed the circuit, tripped it again)."""
        self.clear()

    def clear(self) -> None:
        """An operator's reset: the window starts afresh here too."""
        self.unsent, self._fleet = WindowCounts(), None
        self._recounting = False
        self._recent.clear()

    def drop_if_older_than_window(self, since: float) -> None:
        if self._clock() - since > self.policy.window:
            self.unsent = WindowCounts()

    def recount(self, seeding: str) -> None:
        """Redis lost the window: add this instance's calls of the last window again. Calls
        flushed between the loss and this can count twice (at most one flush interval of
        them, and only towards a trip). The instances' calls come back one instance at a
        time, so a recount does not trip the fleet by itself (found by the fleet model: the
        first instance's share alone, 10 calls of which half failed, tripped a fleet whose
        window held 20, a quarter failed): the next call's end decides."""
        self.recounted = seeding
        recent = self._recent.counts()
        self.unsent = WindowCounts(recent.calls, recent.failures, recent.slow)
        self._recounting = True
        if recent.calls:
            self._due_in(0)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _due_in(self, seconds: float) -> None:
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(seconds, self._due)

    def _due(self) -> None:
        self.timer = None
        self._on_due()

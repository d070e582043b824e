"""An asyncio circuit breaker on top of pybreaker. Copy this file: it needs Python 3.11 or
later (`asyncio.timeout`) and pybreaker only.

    breaker = AsyncCircuitBreaker(
        pybreaker.CircuitBreaker(fail_max=3, reset_timeout=15, listeners=[LogListener()])
    )

    # One call, the outcome recorded for you (pybreaker's convention: the function, then
    # its arguments); `fallback` gets the exception when the call was not permitted, was
    # cut short or failed, and its result is returned instead:
    offer = await breaker.call(fetch_offer, "sku-1", fallback=lambda exc: COLD_OFFER)

    # Or on the function, as pybreaker users write it:
    @breaker(fallback=lambda exc: COLD_OFFER)
    async def fetch_offer(sku: str) -> str: ...

    # Or around a block: recorded on exit (an exception is a failure, a cancellation
    # no outcome), and cut short like `call` when the circuit opens meanwhile:
    async with breaker.calling():
        response = await client.get(url)
        response.raise_for_status()

    # Or in two steps, when the outcome is yours to judge (not cut short: see `admit`):
    permit = await breaker.admit()        # NotPermitted if the circuit says no
    try:
        response = await client.get(url)
    except httpx.TransportError as exc:
        permit.failure(exc)
        raise
    permit.success() if response.status_code < 500 else permit.failure(PartnerDown())

Every call ends in one of five ways, and these words are used everywhere, from
this module to the metrics and the dashboard:

- **success**: the call returned; pybreaker resets its failure count.
- **failure**: it raised; pybreaker counts it, and trips at `fail_max`.
- **ignored**: it raised an error listed in pybreaker's `exclude` (a "no"
  from a healthy dependency, like a 4xx); pybreaker counts it as a success.
- **not permitted**: the circuit is open, or another call is the half-open
  trial; nothing was attempted (`NotPermitted`).
- **cut short**: it was attempted, and ended when the circuit opened
  (`CutShort`); it counts neither way.

pybreaker is the state machine: closed, open, half-open, the failure count,
the reset timeout, the listeners and the storage all stay pybreaker's. What
this module adds is what an asyncio service needs and pybreaker lacks:

1. **Two steps instead of one call.** `pybreaker.CircuitBreaker.call` holds a
   threading lock for the whole guarded call; around an `await` that would
   serialize every request. Here, as in gobreaker's two-step breaker and
   resilience4j's `tryAcquirePermission`/`onSuccess`/`onError`, `admit`
   decides, the call is awaited with no lock held, and the `Permit` records
   its outcome afterwards.
2. **Stale outcomes are ignored.** pybreaker builds a new state object on
   every transition, so the state object that admitted a call is its
   generation. A slow call that started before the circuit opened must not
   count against the new state, so an outcome counts only while the same
   generation is current.
3. **One trial call while half-open.** pybreaker lets every concurrent caller
   through while half-open; a dependency that is just recovering would get a
   stampede. Here one trial is in flight at a time; the others are not
   permitted. With a `SharedState` that holds for a whole fleet. A trial that
   reports nothing within `max_trial_seconds` (a permit dropped on an early
   `return`) counts as a failed trial, as resilience4j's
   `maxWaitDurationInHalfOpenState` does: no answer in that time is what a
   timeout is, and the circuit must not wait forever on its caller's good
   behaviour. A trial's permit collected unreported is logged (once per breaker).
4. **Calls still waiting when the circuit opens are cut short.** The breaker
   has just decided the dependency is sick; those callers get their fallback
   now instead of waiting out their timeout.
5. **One clock for the open period.** pybreaker compares `opened_at` with
   `datetime.now()`: a wall clock that can jump. Here the open period is
   measured on a monotonic clock (injectable, so tests move time instead of
   waiting).
6. **A dependency that says when to come back.** An error with a
   `retry_after` attribute (seconds) is a signal, not a verdict: one failure
   like any other, so one answer cannot open a fleet; if the circuit opens
   while it stands, it stays open until then at least (capped at
   `max_retry_after`). The rule in full: docs/breaker.md, "Retry-After".

A hand on the state machine stays pybreaker's: `breaker.state_machine.open()`
opens the circuit as `trip()` does, for the whole fleet with shared state.

**Two policies decide when to trip.** `consecutive` is pybreaker's own,
`fail_max` failures in a row: under load it trips on noise, and never on a
dependency that fails every other call or answers slowly. `RatePolicy` is
the rule of Hystrix, resilience4j and Polly: the share of failures, or of
slow calls, over the last `window` seconds. It plugs into pybreaker without
changing it: the machine is built with a `fail_max` it never reaches
(`RATE_POLICY_FAIL_MAX`), so pybreaker keeps the states, the listeners and
the storage, and the policy calls its `open()` when the window says so. The
rest (half-open, a fleet's window): docs/breaker.md, "Partial failures: the
rate policy".

**A closed circuit's success skips pybreaker when nothing would change.**
Most calls are successes in a closed circuit, and pybreaker's handling of one
changes nothing there: it resets a failure count that is already 0, its
closed state's `on_success` does nothing, and it tells listeners that do
nothing with it. So while the circuit is closed (pybreaker's state object and
its storage both say so: the storage is still read on every call, as
pybreaker's `state` does, so a change heard elsewhere is not missed; a storage
that keeps it in memory is read from its field, not through its property), the
generation is the one that admitted the call, and no listener hears calls,
the breaker does what pybreaker would, without its calls: the storage's
`reset_counter()`, and the rate policy's window. Every other outcome (a
failure, an excluded error, a half-open trial, a stale generation) goes
through pybreaker's own handlers, so transitions, listeners and storage stay
pybreaker's. "Hears calls": a listener whose class overrides `before_call`,
`success` or `failure`, or a `LogListener` while DEBUG is on for this
module's logger; the breaker itself and the service's observer listen to
transitions only. The check is a comparison of pybreaker's listener list
with the one last classified, so `add_listener` takes effect on the next
call. Measured with callgrind on `tools/bench/micro.py`: 48,600 instructions
per `call` before, 8,800 after (aiobreaker: 13,600).

**Cut short without a timer per call.** Each guarded call registers its task
(a dict entry, no `asyncio.timeout` object and no context manager); when the
circuit opens, the tasks still waiting are cancelled on the loop's next turn,
and the call tells its own cancellation from any other as `asyncio.timeout`
does, with `Task.uncancel()`: a cancellation from outside still propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from asyncio import current_task
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from types import CoroutineType, GeneratorType, TracebackType
from typing import Any, Literal, ParamSpec, Protocol, TypeGuard, TypeVar, cast, overload

import pybreaker

__all__ = [
    "RATE_POLICY_FAIL_MAX",
    "AsyncCircuitBreaker",
    "Calling",
    "CutShort",
    "LogListener",
    "NotPermitted",
    "Permit",
    "RatePolicy",
    "SharedState",
    "TrialExpired",
    "WindowCounts",
]

log = logging.getLogger("circuit_breaker")
# What `log.isEnabledFor` answered, by level, since levels last changed: logging's private
# `_cache`, which it empties (never replaces) on any change; an empty dict if a release
# drops it, and then `isEnabledFor` answers every time.
_LOG_CACHE: dict[int, bool] = getattr(log, "_cache", {})

T = TypeVar("T")
P = ParamSpec("P")


class NotPermitted(pybreaker.CircuitBreakerError):
    """The call was not attempted. `reason`: `circuit-open`, or `trial-in-flight` when
    another call is the half-open trial."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CutShort(pybreaker.CircuitBreakerError):
    """The call was attempted and ended early because the circuit opened meanwhile."""

    reason = "cut-short"

    def __init__(self) -> None:
        super().__init__(self.reason)


class TrialExpired(pybreaker.CircuitBreakerError):
    """What a half-open trial that reported nothing within `max_trial_seconds` counts as:
    a failure, so the circuit opens again for a reset timeout."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the half-open trial reported no outcome within {seconds:g}s")


class LogListener(pybreaker.CircuitBreakerListener):
    """Logs every breaker event. Per-call events are DEBUG so load doesn't drown
    the log; state changes are WARNING because someone should notice them."""

    def before_call(
        self, cb: pybreaker.CircuitBreaker, func: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        log.debug("%s: before call to %s", cb.name, getattr(func, "__name__", func))

    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        log.debug("%s: call failed: %r (fail_counter %d of %d)", cb.name, exc, cb.fail_counter, cb.fail_max)

    def success(self, cb: pybreaker.CircuitBreaker) -> None:
        log.debug("%s: call succeeded", cb.name)

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        old = old_state.name if old_state else None
        log.warning("%s: state changed from %s to %s", cb.name, old, new_state.name)


# With a rate policy pybreaker still counts failures in a row, but never trips on them.
RATE_POLICY_FAIL_MAX = 2**31 - 1
# The longest Retry-After honoured by default, in seconds: a wrong header (a day, say)
# cannot keep the circuit open for longer; trials re-measure after.
MAX_RETRY_AFTER = 300.0


@dataclass(frozen=True)
class RatePolicy:
    """Trip when, over the last `window` seconds and at least `min_calls` calls, the share
    of failures reaches `failure_rate` or the share of calls that took `slow_call_seconds`
    or more reaches `slow_call_rate` (shares from 0 to 1; 1 means "all of them")."""

    window: float = 10.0
    min_calls: int = 20
    failure_rate: float = 0.5
    slow_call_seconds: float = 5.0
    slow_call_rate: float = 1.0

    def __post_init__(self) -> None:
        """Refuse what could never trip as documented: with no minimum or a zero rate, a
        window of successes alone would "reach" the rate, and the window's shortcut for
        successes that cannot trip would hide it."""
        if not self.window > 0:
            raise ValueError(f"RatePolicy window must be > 0 seconds, not {self.window!r}")
        if self.min_calls < 1:
            raise ValueError(f"RatePolicy min_calls must be 1 or more, not {self.min_calls!r}")
        for name in ("failure_rate", "slow_call_rate"):
            rate = getattr(self, name)
            if not 0 < rate <= 1:
                raise ValueError(f"RatePolicy {name} must be > 0 and <= 1, not {rate!r}")
        if not self.slow_call_seconds > 0:
            raise ValueError(f"RatePolicy slow_call_seconds must be > 0, not {self.slow_call_seconds!r}")

    def exceeded(self, calls: int, failures: int, slow: int) -> bool:
        """Whether these counts trip the circuit."""
        return calls >= self.min_calls and (
            failures >= self.failure_rate * calls or slow >= self.slow_call_rate * calls
        )


@dataclass(slots=True)
class WindowCounts:
    """Calls in a window, and how many of them failed or were slow."""

    calls: int = 0
    failures: int = 0
    slow: int = 0

    def rate(self, part: int) -> float | None:
        """`part` as a share of the calls; None before the first call."""
        return part / self.calls if self.calls else None


class CallWindow:
    """The last `window` seconds of calls, as `BUCKETS` buckets on the breaker's clock. It
    keeps running totals: a call costs a few additions, and the window slides by
    subtracting whole buckets, never by summing them again.

    A success that cannot change the verdict costs one addition: until `quiet_until` on
    the clock (see `judged`), the breaker adds it to `quiet_successes`, and the window
    folds those into its newest bucket before it is next read or written. That took the
    rate policy from 1.28x the consecutive one's cost per guarded call to 1.17x (callgrind);
    slots (the breaker reads two fields on every call) and its clock read as a field (see
    `AsyncCircuitBreaker.call`) took it to 1.15x-1.17x, and under 1.2x in time."""

    BUCKETS = 10
    __slots__ = (
        "_buckets",
        "_clock",
        "_gone",
        "_last_until",
        "_totals",
        "_width",
        "quiet_successes",
        "quiet_until",
    )

    def __init__(self, window: float, clock: Callable[[], float]) -> None:
        self._width = window / self.BUCKETS
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [bucket number, calls, failures, slow]
        self._totals = [0, 0, 0]  # calls, failures, slow over the buckets above
        self._last_until = float("-inf")  # when the newest bucket ends, on the clock
        self._gone = [0, 0, 0]  # calls, failures, slow that left the totals: see `counted`
        self.quiet_until = float("-inf")
        self.quiet_successes = 0

    def record(self, failed: bool, slow: bool, now: float | None = None) -> list[int]:
        """Count one call that ended `now` (on the clock: read here if not given); the
        window's calls, failures and slow calls, this one included."""
        if self.quiet_successes:
            self._fold()
        number = int((self._clock() if now is None else now) // self._width)
        buckets = self._buckets
        if not buckets or buckets[-1][0] != number:
            self._last_until = (number + 1) * self._width
            buckets.append([number, 0, 0, 0])
            self._drop_before(number)
        bucket, totals = buckets[-1], self._totals
        bucket[1] += 1
        totals[0] += 1
        if failed:
            bucket[2] += 1
            totals[1] += 1
        if slow:
            bucket[3] += 1
            totals[2] += 1
        return totals

    def judged(self, exceeded: bool, min_calls: int) -> None:
        """A policy judged the totals just recorded. Under its thresholds with `min_calls`
        calls or more, a success that is not slow lowers both shares and cannot trip: so
        until the newest bucket ends (no bucket slides out before), such successes are quiet."""
        quiet = not exceeded and self._totals[0] >= min_calls
        self.quiet_until = self._last_until if quiet else float("-inf")

    def counts(self) -> WindowCounts:
        """The window's totals now."""
        self._fold()
        self._drop_before(int(self._clock() // self._width))
        return WindowCounts(*self._totals)

    def counted(self) -> tuple[int, int, int]:
        """Calls, failures and slow calls counted since the window was made, slid out or
        cleared or not: figures that only grow, so a reader that keeps the last ones has
        the calls since by subtraction, at no cost to the call (the fleet's window does)."""
        self._fold()
        totals, gone = self._totals, self._gone
        return totals[0] + gone[0], totals[1] + gone[1], totals[2] + gone[2]

    def clear(self) -> None:
        """Start the window afresh: a new state, or an operator's reset."""
        self._gone = list(self.counted())
        self._buckets.clear()
        self._totals = [0, 0, 0]
        self._last_until = self.quiet_until = float("-inf")

    def _fold(self) -> None:
        """The quiet successes, into the newest bucket: they all ended in it."""
        if self.quiet_successes:
            self._buckets[-1][1] += self.quiet_successes
            self._totals[0] += self.quiet_successes
            self.quiet_successes = 0

    def _drop_before(self, number: int) -> None:
        buckets, totals, gone = self._buckets, self._totals, self._gone
        while buckets and buckets[0][0] <= number - self.BUCKETS:
            _, calls, failures, slow = buckets.popleft()
            totals[0] -= calls
            totals[1] -= failures
            totals[2] -= slow
            gone[0] += calls
            gone[1] += failures
            gone[2] += slow


TrialVerdict = Literal["granted", "busy", "open", "closed"]


class SharedState(Protocol):
    """A pybreaker storage shared by a fleet, and what the breaker needs of it beyond that.

    `redis_state.SharedCircuitState` is one. The breaker asks it for the
    fleet's one trial lease, forces states through it, and reads its
    generation: a number that changes whenever the fleet's circuit does, so
    that an outcome admitted before a change elsewhere is ignored here. It
    calls `on_change` when it heard of a change, so that pybreaker notices
    now rather than on the next call."""

    generation: int
    connected: bool
    on_change: Callable[[], object]
    # When it is the breaker's storage too: the state `state` returns, read by the breaker on
    # every call without the property's call.
    _state: str

    def seconds_until_trial(self) -> float:
        """How long the fleet's circuit stays open before it permits a trial; 0 when not open."""

    async def acquire_trial(self) -> TrialVerdict:
        """Ask for the fleet's one trial lease."""

    def release_trial(self) -> None:
        """Hand the lease back: the trial ended without an outcome."""

    def force(self, state: str) -> None:
        """Open or close the fleet's circuit whatever its version: an operator's hand."""

    def hold_open(self, seconds: float) -> None:
        """Open now, if not open already, and permit no trial for `seconds`."""

    def share_window(self, window: CallWindow) -> None:
        """Add the calls this process counts in `window` to the fleet's window, read from its
        `counted()` at each flush (so a call costs the fleet nothing); the shared state
        trips on the fleet's totals."""

    def fleet_window(self) -> WindowCounts | None:
        """The fleet's window as last heard, or None when it cannot be heard (then the
        breaker decides on its own window)."""


def _two_step_call() -> None:
    """What listeners' `before_call` is told of a call made with `admit` and a `Permit`."""


def _not_awaitable(func: object) -> str:
    name = getattr(func, "__qualname__", None) or repr(func)
    return (
        f"{name} is not a coroutine function: the breaker awaits what it guards; write "
        f"`async def {getattr(func, '__name__', 'f')}`, or use pybreaker's own "
        f"`@state_machine` / `state_machine.call(f)` for a plain def"
    )


class Permit:
    """Permission for one call. Report its outcome once: `success()`, `failure(exc)`, or
    `release()` when it ended without one (cancelled, or the caller's own trouble). A
    second report is ignored, and so is one that arrives after the circuit moved on.

    A permit never reported is a bug in the caller. A closed circuit's holds nothing, and
    loses only its outcome; a half-open trial's holds the circuit's one place, so it is
    logged when collected, and freed after the breaker's `max_trial_seconds` (counted a
    failure) whether collected or not.

    The breaker fills the fields itself: a class called without `__init__` costs a
    closed circuit's admission about 1,100 instructions less on Python 3.11 (callgrind)."""

    __slots__ = ("_breaker", "_quiet", "generation", "started", "state")
    is_trial = False  # a half-open trial's permit is a `_TrialPermit`
    _breaker: AsyncCircuitBreaker | None  # None once reported
    state: pybreaker.CircuitBreakerState  # pybreaker's state object when the call was admitted
    generation: int
    started: float  # on the breaker's clock (rate policy): a slow call is told by its duration
    _quiet: bool  # no listener heard this call begin: none hears its success

    def success(self) -> None:
        """The call succeeded: pybreaker resets its failure count (half-open: counts towards
        `success_threshold`)."""
        breaker = self._breaker
        if breaker is not None:
            self._breaker = None
            breaker._succeeded(self.state, self.generation, False, self.started, self._quiet)

    def failure(self, error: BaseException) -> None:
        """Counts as a failure, or as ignored if `error` is in pybreaker's `exclude`."""
        breaker = self._breaker
        if breaker is not None:
            self._breaker = None
            breaker._record(self.state, self.generation, self.is_trial, self.started, error)

    def release(self) -> None:
        """No outcome: a trial hands its place (and the fleet's lease) to the next caller."""
        breaker = self._breaker
        if breaker is not None:
            self._breaker = None
            breaker._free_trial(self.is_trial, hand_back=True)


class _TrialPermit(Permit):
    """A half-open trial's permit: only these watch for being dropped unreported, since
    a `__del__` on every permit costs the hot path 1.5% (callgrind, 650 instructions
    of 43,000 per call) to log a bug that holds nothing."""

    __slots__ = ()
    is_trial = True

    def success(self) -> None:
        breaker = self._breaker
        if breaker is not None:
            self._breaker = None
            breaker._succeeded(self.state, self.generation, True, self.started, self._quiet)

    def __del__(self) -> None:
        if self._breaker is not None:
            self._breaker._dropped()


PermitT = TypeVar("PermitT", bound=Permit)


def _permit(
    kind: type[PermitT],
    breaker: AsyncCircuitBreaker,
    state: pybreaker.CircuitBreakerState,
    generation: int,
    started: float,
) -> PermitT:
    """A permit of `kind` past a closed circuit's admission (which fills its own)."""
    permit = kind()
    permit._breaker, permit.state, permit.generation = breaker, state, generation
    permit.started, permit._quiet = started, False
    return permit


class Calling(Permit):
    """`async with breaker.calling():` guards the block as `call` guards a function.

    Entering asks for a permit (`NotPermitted` if refused) and gives it; leaving
    records how the block ended: no exception a success, an exception a failure
    (or ignored, per pybreaker's `exclude`; released for the breaker's
    `not_counted`), a cancellation no outcome. When the circuit opens meanwhile,
    the block is cancelled at its next await and `CutShort` is raised.

    In a closed circuit it is its own permit: one object per block, not two."""

    __slots__ = ("_owner", "_permit", "_task")
    _owner: AsyncCircuitBreaker
    _permit: Permit | None  # the permit when not this object: a half-open trial's, say
    _task: asyncio.Task[Any]

    async def __aenter__(self) -> Permit:
        breaker = self._owner
        permit: Permit | None = breaker._admit_closed(_two_step_call, self)
        if permit is None:
            permit = await breaker.admit(_two_step_call)
            self._permit = permit
        else:
            self._permit = None
        # The task now waits on a guarded block, cut short if the circuit opens (as in `call`,
        # inline: a fifth of what a block costs is calls).
        task = current_task()
        assert task is not None, "a guarded block runs in an asyncio task"
        waiting = breaker._waiting
        waiting[task] = waiting.get(task, 0) + 1
        self._task = task
        return permit

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        breaker, permit, task = self._owner, self._permit, self._task
        waiting = breaker._waiting
        if breaker._cut or waiting[task] > 1:  # as in `call`: the common case needs no call
            if breaker._done_waiting(task, exc):  # the circuit opened: this block was cancelled
                (permit or self).release()
                raise CutShort() from None
        else:
            del waiting[task]
        if exc is not None:
            breaker._settle(permit or self, exc)
        elif permit is not None:
            permit.success()
        elif self._breaker is not None:  # `self.success()`, inline: a tenth of a block's cost
            self._breaker = None
            breaker._succeeded(self.state, self.generation, False, self.started, self._quiet)


class AsyncCircuitBreaker(pybreaker.CircuitBreakerListener):
    """Guards coroutine calls with a `pybreaker.CircuitBreaker` (`state_machine`).

    The bookkeeping before and after a call is synchronous, takes a few
    microseconds and reads only memory (a shared state keeps a local view),
    so it runs on the event loop and needs no lock. The one exception is a
    half-open trial with shared state: the fleet's lease costs one round
    trip, once per reset timeout.
    """

    def __init__(
        self,
        state_machine: pybreaker.CircuitBreaker,
        shared: SharedState | None = None,
        not_counted: tuple[type[BaseException], ...] = (),
        clock: Callable[[], float] = time.monotonic,
        policy: RatePolicy | None = None,
        max_retry_after: float = MAX_RETRY_AFTER,
        max_trial_seconds: float = 60.0,
    ) -> None:
        """`shared`: the storage `state_machine` was built with, when it is shared by a fleet.
        `not_counted`: errors that say nothing about the dependency (this process's own
        trouble): `call` releases their permit, recording neither success nor failure.
        `policy`: trip on rates over a window instead of `fail_max` in a row (build
        `state_machine` with `fail_max=RATE_POLICY_FAIL_MAX`, or this raises `ValueError`).
        `max_retry_after`: the longest `retry_after` honoured, in seconds; 0 ignores them.
        `max_trial_seconds`: a half-open trial that reports nothing for that long counts as
        a failed trial (make it longer than the guarded call's own timeout)."""
        if policy is not None and state_machine.fail_max != RATE_POLICY_FAIL_MAX:
            raise ValueError(
                f"a RatePolicy trips on rates, never on {state_machine.fail_max} failures in a row: "
                "build the state machine with pybreaker.CircuitBreaker(fail_max=RATE_POLICY_FAIL_MAX, ...)"
            )
        if not max_trial_seconds > 0:
            raise ValueError(f"max_trial_seconds must be more than 0, not {max_trial_seconds!r}")
        self.state_machine = state_machine
        self.shared = shared
        self.policy = policy
        self.max_retry_after = max_retry_after
        self.max_trial_seconds = max_trial_seconds
        self._window = CallWindow(policy.window, clock) if policy else None
        self._slow_call_seconds = policy.slow_call_seconds if policy else 0.0
        self._not_counted = not_counted
        self._clock = clock
        self._opened_clock: float | None = None
        self._hold_until: float | None = None  # a `retry_after` longer than the reset timeout
        self._retry_after_until: float | None = None  # a `retry_after` heard, until a success
        self._resets = 0  # a reset of a closed circuit starts a generation too
        self._trial_in_flight = False
        self._trial_started = 0.0
        self._dropped_logged = False
        self._own_transition = False  # opened by this breaker or heard from the fleet
        # Calls under way, by task (how many of that task's), to cut short when the circuit
        # opens; and the tasks cut short, with their `cancelling()` count from before.
        self._waiting: dict[asyncio.Task[Any], int] = {}
        self._cut: dict[asyncio.Task[Any], int] = {}
        self._storage = _storage(state_machine)
        # The storage's state is read on every call. pybreaker's memory storage and a shared
        # state keep it in `_state`, read directly (through the property, the read was a tenth
        # of a guarded call); any other storage (pybreaker's Redis one) is asked.
        storage: Any = self._storage
        self._state_in_field = type(storage) is pybreaker.CircuitMemoryStorage or storage is shared
        self._listeners_seen: list[Any] = []  # pybreaker's list when `_hear_calls` last looked
        self._listeners_loud = False  # some listener hears every call
        self._listeners_log = False  # a LogListener does, when DEBUG is enabled
        state_machine.add_listener(self)
        if shared is not None:
            shared.on_change = self._heard_from_fleet
            if self._window is not None:
                shared.share_window(self._window)

    # The two steps.

    async def admit(self, func: Callable[..., Any] = _two_step_call) -> Permit:
        """A permit for one call, or `NotPermitted`. `func` is only for listeners' `before_call`.

        What you do with the permit is not watched: the call is not cut short when the
        circuit opens (use `calling()` or `call` for that), and its outcome is whatever you
        report. Report exactly once, on every path."""
        permit = self._admit_closed(func, Permit())
        if permit is not None:
            return permit
        state, is_trial = await self._admit_not_closed(func)
        return _permit(_TrialPermit if is_trial else Permit, self, state, self._generation(), self._clock())

    def _admit_closed(self, func: Callable[..., Any], permit: PermitT) -> PermitT | None:
        """`admit` in a closed circuit, which needs no await: `permit` filled in; None when
        not closed. pybreaker's `state` property, without its calls (the storage is still read)."""
        state = self.state_machine._state
        storage: Any = self._storage
        if (
            type(state) is not pybreaker.CircuitClosedState
            or (storage._state if self._state_in_field else storage.state) != pybreaker.STATE_CLOSED
        ):
            return None
        # `not self._hear_calls()`, and no call when the listeners are as last seen and none
        # hears calls at this log level (a call here is a tenth of a guarded call).
        quiet = (
            self.state_machine._listeners == self._listeners_seen
            and not self._listeners_loud
            and (not self._listeners_log or _LOG_CACHE.get(logging.DEBUG) is False)
        ) or not self._hear_calls()
        if not quiet:
            self._before_call(func)
        shared = self.shared
        permit._breaker = self
        permit.state = state
        permit.generation = self._resets + shared.generation if shared else self._resets
        permit.started = self._clock() if self._window is not None else 0.0
        permit._quiet = quiet
        return permit

    async def _admit_not_closed(self, func: Callable[..., Any]) -> tuple[pybreaker.CircuitBreakerState, bool]:
        """`admit` past a closed circuit's fast path: the state admitted in, and whether
        the call is the half-open trial."""
        if self._refusing():
            raise NotPermitted("circuit-open")
        state: pybreaker.CircuitBreakerState = self.state_machine.state
        is_trial = state.name != pybreaker.STATE_CLOSED
        if is_trial:
            state = await self._begin_trial()
            is_trial = state.name == pybreaker.STATE_HALF_OPEN
        self._before_call(func)
        return state, is_trial

    def _refusing(self, state: pybreaker.CircuitBreakerState | None = None, stored: str = "") -> bool:
        """Whether the circuit is open and permits no trial yet.

        pybreaker's `state` refreshes the state object from the storage; a caller that has
        read both (`state`, and the storage's `stored`) and found them open skips it: that
        is every call of an outage."""
        seen_open = type(state) is pybreaker.CircuitOpenState and stored == pybreaker.STATE_OPEN
        if not seen_open and self.state_machine.state.name != pybreaker.STATE_OPEN:
            return False
        return self.seconds_until_trial() > 0

    async def call(
        self,
        func: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        fallback: Callable[[Exception], T | Awaitable[T]] | None = None,
        **kwargs: Any,
    ) -> T:
        """Await `func(*args, **kwargs)` if the circuit permits it, and record how it ended.

        `fallback`, if given, is called with the exception (`NotPermitted`, `CutShort`, or
        an error counted as a failure) and its result, awaited if need be, is returned
        instead; ignored and `not_counted` errors and cancellations still propagate."""
        if not callable(func):
            if inspect.iscoroutine(func):
                func.close()  # no "never awaited" warning on top of this error
            raise TypeError(
                "call() takes the function and its arguments, not a coroutine: "
                "write `await breaker.call(fetch, arg)`, not `await breaker.call(fetch(arg))`"
            )
        # A closed circuit's call needs no Permit object: the fields below are the permit.
        # (`_admit_closed`, inline: a third of what a call costs is Python calls.)
        # `not self._hear_calls()`, and no call when the listeners are as last seen and none
        # hears calls at this log level (a call here is a tenth of a guarded call).
        quiet = (
            self.state_machine._listeners == self._listeners_seen
            and not self._listeners_loud
            and (not self._listeners_log or _LOG_CACHE.get(logging.DEBUG) is False)
        ) or not self._hear_calls()
        state: pybreaker.CircuitBreakerState = self.state_machine._state
        storage: Any = self._storage
        stored = storage._state if self._state_in_field else storage.state
        if type(state) is pybreaker.CircuitClosedState and stored == pybreaker.STATE_CLOSED:
            is_trial = False
            if not quiet:
                self._before_call(func)
        elif self._refusing(state, stored):  # refused without an await: during an outage, every call
            refused = NotPermitted("circuit-open")
            if fallback is None:
                raise refused
            # `_fall_back`, inline: awaiting it cost 1,600 instructions a refused request (callgrind).
            answer = fallback(refused)
            return cast(T, await answer if _awaitable(answer) else answer)
        else:
            try:
                state, is_trial = await self._admit_not_closed(func)
            except NotPermitted as exc:
                if fallback is None:
                    raise
                return await _fall_back(fallback, exc)
        generation = self._resets + self.shared.generation if self.shared else self._resets
        started = 0.0
        if self._window is not None:
            # `self._clock()` is a method lookup, which 3.11 cannot specialize when the method
            # is an instance's own field: read the field, then call it.
            clock = self._clock
            started = clock()
        try:
            awaitable = func(*args, **kwargs) if args or kwargs else func()
        except BaseException:  # the call could not even start: the caller's own trouble
            self._free_trial(is_trial, hand_back=True)
            raise
        if type(awaitable) is not CoroutineType and not inspect.isawaitable(awaitable):
            self._free_trial(is_trial, hand_back=True)
            raise TypeError(_not_awaitable(func))
        task = current_task()
        assert task is not None, "a guarded call runs in an asyncio task"
        waiting = self._waiting
        waiting[task] = waiting.get(task, 0) + 1
        try:
            result = await awaitable
        except BaseException as exc:
            if self._done_waiting(task, exc):
                self._free_trial(is_trial, hand_back=True)
                if fallback is None:
                    raise CutShort() from None
                return await _fall_back(fallback, CutShort())
            permit = _permit(_TrialPermit if is_trial else Permit, self, state, generation, started)
            if not self._settle(permit, exc) or fallback is None:
                raise
            assert isinstance(exc, Exception)
            return await _fall_back(fallback, exc)
        if self._cut or waiting[task] > 1:
            self._done_waiting(task, None)
        else:
            del waiting[task]
        self._succeeded(state, generation, is_trial, started, quiet)
        return result

    def calling(self) -> Calling:
        """`async with breaker.calling():` the block is the guarded call (see `Calling`)."""
        calling = Calling()
        calling._owner = self
        return calling

    @overload
    def __call__(self, func: Callable[P, Awaitable[T]], /) -> Callable[P, Awaitable[T]]: ...

    @overload
    def __call__(
        self, /, *, fallback: Callable[[Exception], T | Awaitable[T]]
    ) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]: ...

    def __call__(
        self,
        func: Callable[P, Awaitable[T]] | None = None,
        /,
        *,
        fallback: Callable[[Exception], T | Awaitable[T]] | None = None,
    ) -> Any:
        """`@breaker` or `@breaker(fallback=...)` on an `async def`: every call of it goes
        through `call`. A plain `def` is refused here rather than failing at each call."""
        if func is None:
            return functools.partial(self._decorate, fallback=fallback)
        return self._decorate(func, fallback)

    def _decorate(
        self, func: Callable[P, Awaitable[T]], fallback: Callable[[Exception], T | Awaitable[T]] | None
    ) -> Callable[P, Awaitable[T]]:
        method = type(func).__call__  # an instance whose `__call__` is an `async def` guards too
        if not (inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(method)):
            raise TypeError(_not_awaitable(func))

        if fallback is None:  # no keyword of its own to add to each call's

            @functools.wraps(func)
            async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
                return await self.call(func, *args, **kwargs)  # type: ignore[arg-type]

            return guarded

        @functools.wraps(func)
        async def guarded_with_fallback(*args: P.args, **kwargs: P.kwargs) -> T:
            return await self.call(func, *args, fallback=fallback, **kwargs)

        return guarded_with_fallback

    # An operator's hand on the circuit: for the whole fleet with shared state.

    def trip(self) -> None:
        """Open now, as `fail_max` failures would: a trial follows after the reset timeout.
        Tripping an open circuit records no transition."""
        if self.state_machine.state.name != pybreaker.STATE_OPEN:
            self._open()
        if self.shared:
            self.shared.force(pybreaker.STATE_OPEN)

    def reset(self) -> None:
        """Close now with a failure count of zero and (rate policy) an empty window in this
        process; calls admitted before count for nothing."""
        self._retry_after_until = None
        if self.state_machine.state.name != pybreaker.STATE_CLOSED:
            self.state_machine.close()
        else:
            self._resets += 1
            _storage(self.state_machine).reset_counter()
            if self._window is not None:
                self._window.clear()
        if self.shared:
            self.shared.force(pybreaker.STATE_CLOSED)

    # What the circuit looks like.

    @property
    def name(self) -> str | None:
        return self.state_machine.name

    @property
    def state(self) -> str:
        """`closed`, `open` or `half-open`, refreshed from the storage as pybreaker does."""
        return self.state_machine.state.name

    @property
    def state_name(self) -> str:
        """The state as this process last saw it, without asking the storage."""
        return _state_object(self.state_machine).name

    @property
    def fail_counter(self) -> int:
        """pybreaker's count of failures in a row."""
        return self.state_machine.fail_counter

    @property
    def opened_at(self) -> datetime | None:
        """When the circuit opened, on this host's wall clock, while it is open: for display
        only. (pybreaker's memory storage keeps the last time after the circuit closes.)"""
        if self.state_name != pybreaker.STATE_OPEN:
            return None
        return _storage(self.state_machine).opened_at

    @property
    def trial_in_flight(self) -> bool:
        """Whether this process's half-open trial is under way."""
        return self._trial_in_flight

    def seconds_until_trial(self) -> float:
        """How long the open circuit refuses calls before it permits a trial; 0 when it
        would permit one now (or is not open)."""
        if self.shared is not None:
            return self.shared.seconds_until_trial()
        if self._opened_clock is None:
            return 0.0
        until = self._opened_clock + self.state_machine.reset_timeout
        if self._hold_until is not None and self._hold_until > until:
            until = self._hold_until
        left = until - self._clock()
        return left if left > 0.0 else 0.0

    def window_counts(self) -> WindowCounts | None:
        """The rate policy's window: the fleet's with shared state, else this process's."""
        if self._window is None:
            return None
        fleet = self.shared.fleet_window() if self.shared is not None else None
        return fleet if fleet is not None else self._window.counts()

    def add_listener(self, listener: pybreaker.CircuitBreakerListener) -> None:
        """Add a pybreaker listener to the state machine: it hears calls made here too."""
        self.state_machine.add_listener(listener)

    def snapshot(self) -> dict[str, Any]:
        """Everything above in one dict, for a status page."""
        state = self.state
        opened_at = self.opened_at
        return {
            "name": self.name,
            "current_state": state,
            "fail_counter": self.fail_counter,
            "fail_max": self.state_machine.fail_max,
            "reset_timeout": self.state_machine.reset_timeout,
            "opened_at": opened_at.isoformat() if opened_at else None,
            "seconds_until_trial": round(self.seconds_until_trial(), 3)
            if state == pybreaker.STATE_OPEN
            else None,
            "trial_in_flight": self._trial_in_flight,
            "storage": _storage(self.state_machine).name,
            "degraded": self.shared is not None and not self.shared.connected,
            "policy": "rate" if self.policy else "consecutive",
            "window": self._window_snapshot(),
        }

    def _window_snapshot(self) -> dict[str, Any] | None:
        counts, policy = self.window_counts(), self.policy
        if counts is None or policy is None:
            return None
        return {
            "seconds": policy.window,
            "calls": counts.calls,
            "failures": counts.failures,
            "slow_calls": counts.slow,
            "failure_rate": counts.rate(counts.failures),
            "slow_call_rate": counts.rate(counts.slow),
            "min_calls": policy.min_calls,
            "failure_rate_threshold": policy.failure_rate,
            "slow_call_rate_threshold": policy.slow_call_rate,
            "slow_call_seconds": policy.slow_call_seconds,
        }

    # pybreaker's listener hook.

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        """When the circuit opens, here or elsewhere in the fleet, cut short every call
        still waiting, and hold it open for a `retry_after` that still stands."""
        if self._window is not None:
            self._window.clear()  # a new state starts a new window
        if new_state.name != pybreaker.STATE_OPEN:
            return
        now = self._clock()
        self._opened_clock = now
        self._hold_until = None
        if self.shared is not None and not self._own_transition:
            # A hand `state_machine.open()`: the fleet's record refuses a plain open of a
            # closed circuit below `fail_max`, and would undo it here; an operator's is forced.
            self.shared.force(pybreaker.STATE_OPEN)
        until = self._retry_after_until
        if until is not None and until > now:
            if self.shared is not None:
                self.shared.hold_open(until - now)
            else:
                self._hold_until = until
        if self._waiting:
            # On the loop's next turn, as a deadline of now would: a call that ends meanwhile
            # (the one that tripped it, say) is not cancelled after it ended.
            asyncio.get_running_loop().call_soon(self._cut_short, tuple(self._waiting))

    # The half-open trial and the generation.

    async def _begin_trial(self) -> pybreaker.CircuitBreakerState:
        """Claim the one trial call: this process's, then (shared state) the fleet's."""
        if self._trial_in_flight:
            if self._clock() - self._trial_started < self.max_trial_seconds:
                raise NotPermitted("trial-in-flight")
            self._expire_trial()
            if self.seconds_until_trial() > 0:  # the expired trial opened it again
                raise NotPermitted("circuit-open")
        self._trial_in_flight = True  # claimed before the await, so no other caller slips in
        self._trial_started = self._clock()
        try:
            # A caller cancelled while asking Redis gets its CancelledError here,
            # whatever the Redis client does with it, and the lease goes back.
            verdict = await self.shared.acquire_trial() if self.shared else "granted"
        except BaseException:
            self._trial_in_flight = False
            raise
        if verdict != "granted":
            self._trial_in_flight = False
            if verdict != "closed":
                raise NotPermitted("circuit-open" if verdict == "open" else "trial-in-flight")
        elif self.state_machine.state.name == pybreaker.STATE_OPEN:
            self.state_machine.half_open()
        return self.state_machine.state

    def _record(
        self,
        state: pybreaker.CircuitBreakerState,
        generation: int,
        is_trial: bool,
        started: float,
        error: BaseException | None,
    ) -> None:
        """Count one outcome against the generation that admitted it, or not at all."""
        machine = self.state_machine
        try:
            if not self._is_current(state, generation):
                log.debug("%s: ignoring an outcome from an earlier state", self.name)
                return
            if error is None:
                self._retry_after_until = None  # the dependency answered: its "later" is past
                _count_success(state)
                failed = False
            else:
                failed = machine.is_system_error(error)
                if failed:
                    self._heard_retry_after(getattr(error, "retry_after", None))
                outer, self._own_transition = self._own_transition, True
                try:
                    _count_failure(state, error)
                finally:
                    self._own_transition = outer
            if self._window is not None and state.name == pybreaker.STATE_CLOSED:
                self._count_in_window(failed, started, self._clock())
        finally:
            self._free_trial(is_trial, hand_back=False)

    def _succeeded(
        self,
        state: pybreaker.CircuitBreakerState,
        generation: int,
        is_trial: bool,
        started: float,
        quiet: bool,
    ) -> None:
        """Count a success. In a closed circuit still current, with no listener to tell (the
        common case), what pybreaker's `_handle_success` would do, without its calls: reset
        the count (the closed state's `on_success` does nothing)."""
        storage: Any = self._storage
        if (
            quiet
            and not is_trial
            and state is self.state_machine._state
            and (storage._state if self._state_in_field else storage.state) == pybreaker.STATE_CLOSED
            and generation == (self._resets + self.shared.generation if self.shared else self._resets)
        ):
            self._retry_after_until = None
            storage.reset_counter()
            window = self._window
            if window is not None:
                clock = self._clock  # see `call`
                now = clock()
                if now < window.quiet_until and now - started < self._slow_call_seconds:
                    window.quiet_successes += 1  # cannot trip: see `CallWindow.judged`
                else:
                    self._count_in_window(False, started, now)
            return
        self._record(state, generation, is_trial, started, None)

    def _heard_retry_after(self, retry_after: object) -> None:
        """Remember a "come back later" until then; it holds the circuit only if it opens
        meanwhile (`state_change`), never opens it by itself."""
        if retry_after is None or self.max_retry_after <= 0:
            return
        try:
            seconds = min(float(retry_after), self.max_retry_after)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return
        if not seconds > 0:  # 0, negative, NaN
            return
        until = self._clock() + seconds
        if self._retry_after_until is None or until > self._retry_after_until:
            self._retry_after_until = until

    def _settle(self, permit: Permit, error: BaseException) -> bool:
        """Record a call that raised `error`; whether it counted as a failure (a fallback's
        case)."""
        if isinstance(error, self._not_counted) or not isinstance(error, Exception):
            permit.release()  # this process's trouble, or cancelled: no outcome, free the trial
            return False
        permit.failure(error)
        return self.state_machine.is_system_error(error)

    def _expire_trial(self) -> None:
        """The trial reported nothing within `max_trial_seconds`: count it a failure."""
        self._trial_in_flight = False
        log.warning(
            "%s: the half-open trial reported no outcome within %gs; counted as a failure",
            self.name,
            self.max_trial_seconds,
        )
        state = self.state_machine.state
        if self.shared is not None:
            self.shared.release_trial()
        if state.name == pybreaker.STATE_HALF_OPEN:
            outer, self._own_transition = self._own_transition, True
            try:
                _count_failure(state, TrialExpired(self.max_trial_seconds))
            finally:
                self._own_transition = outer

    def _dropped(self) -> None:
        """A trial's permit collected unreported: a caller's bug that held the circuit's one
        trial until `max_trial_seconds`; logged once per breaker."""
        if not self._dropped_logged:
            self._dropped_logged = True
            log.warning(
                "%s: a trial's permit was dropped without success(), failure() or release(); "
                "report every permit (or use call() or calling()); further ones are not logged",
                self.name,
            )

    def _heard_from_fleet(self) -> None:
        """Let pybreaker notice a change heard from the fleet now (listeners, cut-short
        calls), not on this process's next call."""
        outer, self._own_transition = self._own_transition, True
        try:
            self.state_machine.state  # noqa: B018 - the read syncs pybreaker with the storage
        finally:
            self._own_transition = outer

    def _open(self) -> None:
        outer, self._own_transition = self._own_transition, True
        try:
            self.state_machine.open()
        finally:
            self._own_transition = outer

    def _count_in_window(self, failed: bool, started: float, now: float) -> None:
        """Count a call that began at `started` on the breaker's clock, and ended `now`."""
        window, policy = self._window, self.policy
        assert window is not None and policy is not None
        slow = now - started >= policy.slow_call_seconds
        calls, failures, slow_calls = window.record(failed, slow, now)
        exceeded = policy.exceeded(calls, failures, slow_calls)
        # Totals over the line are judged on every call, even while the fleet's decide (shared
        # state, Redis connected): if Redis goes, the next call trips on them here.
        window.judged(exceeded, policy.min_calls)
        shared = self.shared
        if exceeded and (shared is None or not shared.connected):
            self._open()

    def _free_trial(self, is_trial: bool, hand_back: bool) -> None:
        """`hand_back`: the trial ended without an outcome, so the fleet's lease goes back
        and another caller may try at once."""
        if is_trial:
            self._trial_in_flight = False
            if hand_back and self.shared:
                self.shared.release_trial()

    def _hear_calls(self) -> bool:
        """Whether a listener hears each call (`before_call`, `success`, `failure`): not the
        breaker itself, nor a `LogListener` while DEBUG is off. Then a closed circuit's
        call tells nobody, and costs a third less (callgrind)."""
        listeners = self.state_machine._listeners
        if listeners != self._listeners_seen:  # added or removed: classify them again
            self._listeners_seen = list(listeners)
            hooks = [_per_call_hooks(type(listener)) for listener in listeners]
            self._listeners_loud = "always" in hooks
            self._listeners_log = "debug" in hooks
        if self._listeners_loud or not self._listeners_log:
            return self._listeners_loud
        # `log.isEnabledFor(DEBUG)` is a tenth of a guarded call (callgrind); its answer is
        # in the logger's cache until a level changes anywhere (logging clears it then).
        enabled = _LOG_CACHE.get(logging.DEBUG)
        return log.isEnabledFor(logging.DEBUG) if enabled is None else enabled

    def _before_call(self, func: Callable[..., Any]) -> None:
        machine = self.state_machine
        for listener in machine.listeners:
            listener.before_call(machine, func)

    def _done_waiting(self, task: asyncio.Task[Any], error: BaseException | None) -> bool:
        """The guarded call ended, with `error`; whether that was the cancellation of a cut
        short (what `asyncio.timeout` tells by `uncancel`, so a cancellation from outside
        meanwhile still propagates)."""
        waiting = self._waiting
        calls = waiting.pop(task)
        if calls > 1:
            waiting[task] = calls - 1
        if not self._cut or task not in self._cut:
            return False
        before = self._cut.pop(task)
        return task.uncancel() <= before and isinstance(error, asyncio.CancelledError)

    def _cut_short(self, tasks: tuple[asyncio.Task[Any], ...]) -> None:
        """Cancel the calls that were waiting when the circuit opened and still are."""
        for task in tasks:
            if task in self._waiting and task not in self._cut and not task.done():
                self._cut[task] = task.cancelling()
                task.cancel()

    def _generation(self) -> int:
        # Both counters only grow, so their sum changes whenever either does.
        return self._resets + (self.shared.generation if self.shared else 0)

    def _is_current(self, state: pybreaker.CircuitBreakerState, generation: int) -> bool:
        return self.state_machine.state is state and self._generation() == generation


async def _fall_back(fallback: Callable[[Exception], T | Awaitable[T]], error: Exception) -> T:
    result = fallback(error)
    return cast(T, await result if _awaitable(result) else result)


# Whether objects of a type are awaitable, as `inspect.isawaitable` found it: its check
# against `collections.abc.Awaitable` was a fifth of what refusing a call costs, and a
# fallback answers with the same few types call after call. Bounded, for a program that
# makes classes as it runs.
_AWAITABLE_TYPES: dict[type, bool] = {}
_AWAITABLE_TYPES_KEPT = 256


def _awaitable(value: object) -> TypeGuard[Awaitable[Any]]:
    """`inspect.isawaitable(value)`, remembered per type. A generator is asked every time:
    whether it is awaitable is a flag of its code, not of its type."""
    kind = type(value)
    known = _AWAITABLE_TYPES.get(kind)
    if known is None:
        known = inspect.isawaitable(value)
        if kind is not GeneratorType and len(_AWAITABLE_TYPES) < _AWAITABLE_TYPES_KEPT:
            _AWAITABLE_TYPES[kind] = known
    return known


# pybreaker's private names, each used here only, but for the hot path's, read inline where a
# call would cost a tenth of a guarded call: `CircuitBreaker._state`, `_listeners` and
# `CircuitMemoryStorage._state`. Checked against pybreaker 1.4.1;
# tests/test_pybreaker_private.py fails if a release renames or changes them.


def _per_call_hooks(listener: type) -> Literal["none", "debug", "always"]:
    """Which per-call events `listener` acts on: none of them (pybreaker's no-op methods),
    only DEBUG logs (`LogListener`'s own), or some other."""
    base = pybreaker.CircuitBreakerListener
    overridden = [
        name
        for name in ("before_call", "success", "failure")
        if getattr(listener, name) is not getattr(base, name)
    ]
    if not overridden:
        return "none"
    if all(getattr(listener, name) is getattr(LogListener, name) for name in overridden):
        return "debug"
    return "always"


def _state_object(machine: pybreaker.CircuitBreaker) -> pybreaker.CircuitBreakerState:
    """The current state object without `machine.state`'s refresh from the storage."""
    return machine._state


def _storage(machine: pybreaker.CircuitBreaker) -> pybreaker.CircuitBreakerStorage:
    """The storage `machine` was built with; pybreaker has no public accessor."""
    return machine._state_storage


def _count_success(state: pybreaker.CircuitBreakerState) -> None:
    """pybreaker's own per-state success handling, the one its `call` uses: resets the
    count, and in half-open counts towards `success_threshold` and closes."""
    state._handle_success()


def _count_failure(state: pybreaker.CircuitBreakerState, error: BaseException) -> None:
    """pybreaker's own per-state error handling: an excluded error counts as a success,
    any other as a failure, which may trip the circuit (the `CircuitBreakerError` pybreaker
    raises then is for its own `call`, not ours)."""
    with contextlib.suppress(pybreaker.CircuitBreakerError):
        state._handle_error(error, reraise=False)

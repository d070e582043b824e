"""The circuit breaker between the offer service and its partner.

pybreaker is the state machine: closed, open, half-open, the failure counter,
the reset timeout, the listeners and the storage all stay pybreaker's. What
this module adds is what an asyncio service needs and pybreaker lacks:

1. **Two steps instead of one call.** `pybreaker.CircuitBreaker.call` holds a
   threading lock for the whole guarded call. Around an `await` that would
   serialize every request through the breaker. Here, as in gobreaker's
   TwoStepCircuitBreaker, `admit` decides whether a call may go ahead, the
   call is awaited with no lock held, and the outcome is recorded afterwards.
2. **Stale outcomes are ignored.** pybreaker builds a new state object on
   every transition, so the state object that admitted a call is its
   generation. A slow call that started before the circuit opened must not
   count against the new state, so an outcome is only recorded while the
   same state object is current.
3. **One trial call while half-open.** pybreaker lets every concurrent caller
   through while half-open; a partner that is just recovering would get a
   stampede. Here one trial call is in flight at a time; the others are
   rejected at once, as if the circuit were still open. With shared Redis
   state (`redis_state.py`) that holds for the whole fleet.
4. **Calls still waiting when the circuit opens are cut short.** The breaker
   has just decided the partner is sick; those callers get the fallback now
   instead of waiting out their timeout.
5. **One clock for the open period.** pybreaker compares `opened_at` with
   `datetime.now()`: a wall clock that can jump, and with shared state the
   clock of another host. Here the open period is measured on the event
   loop's monotonic clock (injectable, so tests move time instead of waiting).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pybreaker
from redis.asyncio import Redis, RedisCluster

from service.redis_state import SharedCircuitState
from service.settings import OfferSettings

log = logging.getLogger("circuit_breaker")

T = TypeVar("T")

BREAKER_NAME = "partner-offer"


class PartnerRejected(Exception):
    """The partner answered 4xx: a business "no", not a sick partner.

    Listed in pybreaker's `exclude`, so it never counts as a failure. pybreaker
    treats an excluded error as a success: the partner is up and answering.
    """


class CircuitOpen(pybreaker.CircuitBreakerError):
    """The call was not attempted; `reason` says why (`circuit-open`, `trial-in-flight`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


@dataclass(frozen=True)
class Ticket:
    """Permission for one call: the generation that admitted it, and whether it is the trial.

    The generation is pybreaker's state object (a new one on every local
    transition) and, with shared state, the fleet's version of the circuit
    (a new one on every transition anywhere in the fleet)."""

    state: pybreaker.CircuitBreakerState
    generation: int
    is_trial: bool


class AsyncCircuitBreaker(pybreaker.CircuitBreakerListener):
    """Guards coroutine calls with a `pybreaker.CircuitBreaker`.

    The bookkeeping before and after a call is synchronous, takes a few
    microseconds and reads only memory (the shared Redis state keeps a local
    view), so it runs on the event loop and needs no lock. The one exception
    is a half-open trial with shared state: the fleet's lease costs one Redis
    round trip, once per reset timeout.

    When the circuit opens, calls still waiting on the partner are cut short
    (`CircuitOpen("circuit-opened")`): the breaker has just decided the
    partner is sick, and waiting out their timeouts would keep those callers
    slow for up to another `PARTNER_TIMEOUT` for nothing.
    """

    def __init__(
        self,
        breaker: pybreaker.CircuitBreaker,
        shared: SharedCircuitState | None = None,
        not_counted: tuple[type[BaseException], ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`not_counted`: errors that say nothing about the partner (this process's own
        trouble): the call's permit is handed back, neither success nor failure is recorded."""
        self.breaker = breaker
        self.shared = shared
        self._not_counted = not_counted
        self._clock = clock
        self._opened_clock: float | None = None
        self._forced = 0  # an operator's close of a closed circuit starts a generation too
        self._trial_in_flight = False
        self._waiting: set[asyncio.Timeout] = set()
        breaker.add_listener(self)
        if shared is not None:
            # Heard from the fleet: let pybreaker notice now (listeners, cut-short calls),
            # not on this process's next request.
            shared.on_change = lambda: self.breaker.state

    async def call(self, func: Callable[[], Awaitable[T]]) -> T:
        """Await `func()` if the circuit allows it; raise `CircuitOpen` if not."""
        ticket = await self._admit(func)
        waiting = asyncio.timeout(None)  # no deadline of its own: `state_change` may set one
        try:
            async with waiting:
                self._waiting.add(waiting)
                try:
                    result = await func()
                finally:
                    self._waiting.discard(waiting)
        except TimeoutError as exc:
            if not waiting.expired():
                self._record(ticket, exc)
                raise
            self._release(ticket)
            raise CircuitOpen("circuit-opened") from None
        except self._not_counted:
            self._release(ticket, hand_back=True)
            raise
        except Exception as exc:
            self._record(ticket, exc)
            raise
        except BaseException:  # cancelled: no outcome to record, but free the trial
            self._release(ticket, hand_back=True)
            raise
        self._record(ticket, None)
        return result

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        """pybreaker's listener hook: when the circuit opens, here or elsewhere in the
        fleet, end every call still waiting on the partner now."""
        if new_state.name != pybreaker.STATE_OPEN:
            return
        self._opened_clock = self._clock()
        if self._waiting:
            now = asyncio.get_running_loop().time()
            for waiting in self._waiting:
                if not waiting.expired():  # one already ending cannot be rescheduled
                    waiting.reschedule(now)

    @property
    def state_name(self) -> str:
        """The state as this process last saw it, without refreshing it."""
        return self.breaker._state.name

    async def _admit(self, func: Callable[..., Any]) -> Ticket:
        state: pybreaker.CircuitBreakerState = self.breaker.state
        if state.name == pybreaker.STATE_OPEN and self.seconds_until_trial() > 0:
            raise CircuitOpen("circuit-open")
        is_trial = state.name != pybreaker.STATE_CLOSED
        if is_trial:
            state = await self._begin_trial()
            is_trial = state.name == pybreaker.STATE_HALF_OPEN
        for listener in self.breaker.listeners:
            listener.before_call(self.breaker, func)
        return Ticket(state, self._generation(), is_trial)

    def _generation(self) -> int:
        # Both counters only grow, so their sum changes whenever either does.
        return self._forced + (self.shared.generation if self.shared else 0)

    async def _begin_trial(self) -> pybreaker.CircuitBreakerState:
        """Claim the one trial call: this process's, then (shared state) the fleet's."""
        if self._trial_in_flight:
            raise CircuitOpen("trial-in-flight")
        self._trial_in_flight = True  # claimed before the await, so no other caller slips in
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
                raise CircuitOpen("circuit-open" if verdict == "open" else "trial-in-flight")
        elif self.breaker.state.name == pybreaker.STATE_OPEN:
            self.breaker.half_open()
        return self.breaker.state

    def _record(self, ticket: Ticket, error: Exception | None) -> None:
        try:
            if self.breaker.state is not ticket.state or self._generation() != ticket.generation:
                log.debug("%s: ignoring an outcome from an earlier state", self.breaker.name)
            elif error is None:
                ticket.state._handle_success()
            else:
                # pybreaker's own per-state handler, the one its `call` uses;
                # it raises CircuitBreakerError when this failure trips the circuit.
                ticket.state._handle_error(error, reraise=False)
        except pybreaker.CircuitBreakerError:
            pass
        finally:
            self._release(ticket)

    def _release(self, ticket: Ticket, hand_back: bool = False) -> None:
        """Free the trial. `hand_back`: it ended without an outcome (cancelled, or this
        process's own trouble), so the fleet's lease goes back and another caller may try."""
        if ticket.is_trial:
            self._trial_in_flight = False
            if hand_back and self.shared:
                self.shared.release_trial()

    def seconds_until_trial(self) -> float:
        if self.shared is not None:
            return self.shared.seconds_until_trial()
        if self._opened_clock is None:
            return 0.0
        return max(0.0, self._opened_clock + self.breaker.reset_timeout - self._clock())

    # An operator's hand on the circuit: for the whole fleet with shared state.

    def force_open(self) -> None:
        """Open now. Forcing a state the circuit is already in records no transition."""
        if self.breaker.state.name != pybreaker.STATE_OPEN:
            self.breaker.open()
        if self.shared:
            self.shared.force(pybreaker.STATE_OPEN)

    def force_close(self) -> None:
        """Close now, fail counter at zero; outcomes of calls admitted before count for nothing."""
        if self.breaker.state.name != pybreaker.STATE_CLOSED:
            self.breaker.close()
        else:
            self._forced += 1
            self.breaker._state_storage.reset_counter()
        if self.shared:
            self.shared.force(pybreaker.STATE_CLOSED)

    def snapshot(self) -> dict[str, Any]:
        """The circuit as `/offer/circuit` shows it."""
        state = self.breaker.state.name
        opened_at = self.breaker._state_storage.opened_at
        return {
            "name": self.breaker.name,
            "current_state": state,
            "fail_counter": self.breaker.fail_counter,
            "fail_max": self.breaker.fail_max,
            "reset_timeout": self.breaker.reset_timeout,
            "opened_at": opened_at.isoformat() if opened_at else None,
            "seconds_until_trial": round(self.seconds_until_trial(), 3)
            if state == pybreaker.STATE_OPEN
            else None,
            "trial_in_flight": self._trial_in_flight,
            "storage": self.breaker._state_storage.name,
            "degraded": self.shared is not None and not self.shared.connected,
        }


def build_breaker(
    settings: OfferSettings,
    redis_client: Redis | RedisCluster | None = None,
    not_counted: tuple[type[BaseException], ...] = (),
    clock: Callable[[], float] = time.monotonic,
) -> AsyncCircuitBreaker:
    """The breaker of the walkthrough: fail_max=3, reset_timeout=15 unless configured.

    State lives in memory, per process, unless a Redis client is given: then
    in Redis, shared by every process that uses it (`redis_state.py`); call
    `await breaker.shared.start()` before serving.
    """
    shared = None
    storage: pybreaker.CircuitBreakerStorage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
    if redis_client is not None:
        # The trial's lease outlives the longest trial call, and expires if its holder dies.
        lease = settings.partner_timeout + 1
        storage = shared = SharedCircuitState(
            redis_client,
            BREAKER_NAME,
            settings.circuit_fail_max,
            settings.circuit_reset_timeout,
            lease,
            clock,
        )
    breaker = pybreaker.CircuitBreaker(
        fail_max=settings.circuit_fail_max,
        reset_timeout=settings.circuit_reset_timeout,
        exclude=[PartnerRejected],
        listeners=[LogListener()],
        state_storage=storage,
        name=BREAKER_NAME,
    )
    return AsyncCircuitBreaker(breaker, shared, not_counted, clock)

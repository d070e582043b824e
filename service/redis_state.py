"""Circuit state shared by a fleet through Redis, at no Redis round trip per request.

pybreaker's own `CircuitRedisStorage` asks Redis on every call (two blocking
round trips per guarded call, measured at ~200 us each on a local Redis) and
lets every process in half-open state call the partner. This storage keeps
pybreaker as the state machine and changes where the state lives; it is the
`SharedState` that `circuit_breaker.AsyncCircuitBreaker` takes:

- **A local view.** pybreaker reads state and fail counter from memory, so a
  request in a closed or open circuit never touches Redis.
- **Writes coalesce in the background** (`service/redis_outbox.py`). A
  failure, a reset or a transition changes the local view at once and joins
  an outbox; a background task sends the whole outbox as one Lua script call
  (one round trip per batch, however many calls failed meanwhile), so the
  outbox never grows with the request rate. The script decides the trip on
  the fleet's count, atomically, and PUBLISHes the new state; every instance
  subscribes, and a refresh every second catches a message that pub/sub
  dropped (`service/redis_subscriber.py`). A batch whose reply was lost is
  sent again after a reconnect with its id, and Redis applies it once: never
  dropped silently, never counted twice.
- **Generations the fleet agrees on.** Every transition bumps a `version` in
  Redis. Each write carries the version it was based on and Redis refuses a
  write based on another one, so an outcome counts only against the
  generation that admitted its call, whatever happened elsewhere meanwhile.
- **One clock.** Redis stamps `opened_at` with its own clock and every
  snapshot carries the open period's *age* on that clock; an instance turns
  it into a deadline on its own monotonic clock the moment it hears it. Wall
  clocks never meet, so skew between hosts changes nothing; the error is the
  one-way delay of the message (milliseconds), and always errs on the side of
  staying open a little longer.
- **The rate policy's window, fleet-wide** (`service/fleet_window.py`). Calls
  are counted locally and added to the fleet's buckets (ten per window, on
  Redis's clock) every `WINDOW_FLUSH_INTERVAL`, as one more entry of the
  batch; the script sums the window and trips the circuit on the fleet's
  rates, atomically. The fleet's totals are at most one flush interval and a
  round trip behind. The buckets have one width, the first instance's
  (`CIRCUIT_WINDOW` differing across a rollout is said in one warning line).
  An operator's reset empties the window, in Redis and here. A trip an
  instance decided on its own window while Redis was out of reach is a
  `trip` entry, and opens the fleet when Redis is back, as an open does under
  the consecutive policy.
- **Retry-After for the fleet.** A `hold` entry opens the circuit (whatever
  its version) and stretches the open period to at least that long; every
  snapshot carries it, so no instance lets a trial through before. A hold
  that waited in the outbox (Redis out of reach) leaves with what is left of
  it, counted from when it was heard, and not at all once it is over or a
  success closed the circuit here.
- **A record that can vanish, or that cannot be read** (`service/redis_record.py`,
  `service/record_seeding.py`).
  A flush, an eviction, a `DEL` or a failover to a replica that missed writes
  leaves Redis with no circuit, or an older one. An instance notices within
  one refresh and seeds Redis from its own view: open wins, with its
  Retry-After hold, and half-open counts as open (its trial's lease is gone
  too). Every instance then adds its calls of the last window again. A field
  this version cannot read is logged in one line and the record is written
  again from this instance's view; if Redis refuses that too, the instance
  goes degraded (`/health` says so) and tries again from there.
- **Lua in files of its own** (`service/lua/*.lua`, read once at import by
  `service/redis_scripts.py`): each decision is one script call, one round trip.
- **One trial per fleet** (`service/trial_lease.py`). When the reset
  timeout has passed, the caller that
  wins a lease in Redis (SET NX with an expiry, so a prober that crashes
  cannot wedge the circuit) makes the trial call; every other caller in the
  fleet gets the fallback. A released lease is published, so instances that
  were told "busy" may try again at once.
- **Redis outages.** On the first error (short timeouts, no retries) the
  storage logs one line and carries on with the local view alone; it keeps
  trying in the background, logs one line when Redis is back and reconciles:
  an open circuit anywhere stays open. The window's counts waiting for their
  flush wait on, and go when Redis is back if they are still inside the
  window. Deciding alone, an instance makes its trial a random part of the
  reset timeout (up to `ALONE_JITTER`, half) after the timeout: a fleet that
  lost Redis together would otherwise send one trial per instance at once.
  A pub/sub connection that drops while Redis still answers a read is no
  outage: the instance subscribes again.
- **A shutdown that always ends.** With redis-py 8.1 on Python 3.11, a task
  cancelled while it awaits a reply often goes on running, so every round
  trip is awaited through `asyncio.shield` (`service/redis_calls.py` says
  what was measured), which delivers the caller's cancellation whatever the
  client does with its own; the loops also check a stop flag, and `stop()`
  lets the writer send what is left, closes the connections to break
  pending reads and waits a bounded time, saying in one log line what it
  abandoned or left unwritten.

Keys share the hash tag `{name}` so that one breaker lives in one Redis
Cluster slot. The circuit needs its two keys to stay: run Redis with a
`maxmemory-policy` of `noeviction` or a `volatile-*` one (the keys have no
expiry, so those never evict them). Under `allkeys-*` an eviction is survived
as a lost record (re-seeded within a second) but costs that second.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pybreaker
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError, ResponseError

from circuit_breaker import MAX_RETRY_AFTER, CallWindow, RatePolicy, TrialVerdict, WindowCounts
from service import redis_scripts as scripts
from service.fleet_window import FLUSH_INTERVAL, FleetWindow
from service.record_seeding import Seeder, View
from service.redis_calls import shielded
from service.redis_outbox import MAX_OUTBOX, Hold, Outbox, Source, batch_args
from service.redis_record import Shared, UnreadableRecord, settings_in_use, settings_warning
from service.redis_subscriber import Subscriber
from service.trial_lease import TrialLease

__all__ = ["MAX_OUTBOX", "REDIS_TIMEOUT", "STOP_TIMEOUT", "Shared", "SharedCircuitState", "shielded"]

log = logging.getLogger("redis_state")

WINDOW_FLUSH_INTERVAL = FLUSH_INTERVAL  # where it was before the window had a module of its own

# Redis is local infrastructure: if it cannot answer in a quarter of a second
# it is down for our purposes, and no request should wait longer on it.
REDIS_TIMEOUT = 0.25
REFRESH_INTERVAL = 1.0
RECONNECT_INTERVAL = 0.5
STOP_TIMEOUT = 2.0
# An instance deciding alone (Redis unreachable) waits a random part of the reset timeout,
# up to this share, beyond it before its trial: a fleet that lost Redis together would
# otherwise send one trial per instance at the same moment, the stampede the lease prevents.
ALONE_JITTER = 0.5


class SharedCircuitState(pybreaker.CircuitBreakerStorage):
    """A pybreaker storage whose truth is in Redis and whose reads never leave the process."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        name: str,
        fail_max: int,
        reset_timeout: float,
        lease_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        policy: RatePolicy | None = None,
        max_hold: float = MAX_RETRY_AFTER,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        """`max_hold`: the longest Retry-After hold taken from Redis (CIRCUIT_RETRY_AFTER_MAX):
        a record is input, and a `hold_ms` written by hand must not hold the fleet for days.
        `jitter`: a number from 0 to 1, drawn for each open period decided alone."""
        super().__init__("redis")
        self._max_hold = max_hold
        self._jitter = jitter
        self._alone_delay = 0.0  # deciding alone, the trial waits this long beyond the period
        self._client = client
        self._breaker_name = name
        self._fail_max = fail_max
        self._reset_timeout_ms = int(reset_timeout * 1000)
        self._lease_ms = int(lease_seconds * 1000)
        self._clock = clock
        self._owner = uuid.uuid4().hex
        self._keys = [f"{{{name}}}:circuit", f"{{{name}}}:trial"]
        self._window_key = f"{{{name}}}:window"
        self._policy = policy
        self._window = FleetWindow(policy, clock, self._flush_window) if policy else None
        self._lost_at: float | None = None  # when Redis became unreachable, on `clock`
        self._unreadable: UnreadableRecord | None = None
        self._channel = f"{{{name}}}:changes"
        self._apply = client.register_script(scripts.APPLY)
        self._read_script = client.register_script(scripts.READ)
        self._lease = TrialLease(
            client,
            self._keys,
            self._channel,
            self._owner,
            self._reset_timeout_ms,
            self._lease_ms,
            clock,
            self.release_trial,
        )
        self._subscriber = Subscriber(
            client,
            self._channel,
            lambda: self._read(),  # looked up at each read: a test may stand in for it
            lambda shared: self._heard(shared, Source.MESSAGE),
            lambda shared: self._heard(shared, Source.READ),
            lambda: self._stopping,
        )
        self._init = client.register_script(scripts.INIT)
        self._seeder = Seeder(client, self._keys, self._channel)

        self._state = pybreaker.STATE_CLOSED
        self._fail_counter = 0
        self._success_counter = 0
        self._opened_clock: float | None = None  # when the open period began, on `clock`
        self._hold = 0.0  # the open period lasts at least this long (a Retry-After)
        self._version = 0  # the latest version heard from Redis
        self._seq = 0  # the latest change heard from Redis
        self._next_base = 0  # the version the next write is based on
        self.generation = 0  # bumped whenever the state or its version changes
        self.on_change: Callable[[], object] = lambda: None

        self.connected = False
        self._out = Outbox()
        self._written_key = f"{{{name}}}:written:{self._owner}"
        self._stopping = False
        self._lost_record = False
        self._supervisor: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Future[None]] = set()  # fire-and-forget writes (a lease released)

    # pybreaker's interface: the local view, plus a write in the outbox for each change.

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, state: str) -> None:
        if state == self._state:
            return
        if state in (pybreaker.STATE_OPEN, pybreaker.STATE_CLOSED):
            # A transition made here: Redis applies it only if no other got there first.
            self._send(self._transition_op(state))
            self._next_base += 1
        # A Retry-After holds the open period it was heard in, no later one: every transition
        # ends it, here as in Redis (`transition` in the scripts). Kept, a hold heard during
        # an outage held the next open period too, after a success had closed the circuit.
        self._hold = 0.0
        if state == pybreaker.STATE_CLOSED:
            self._out.drop_holds()  # a success closed it: a Retry-After heard before is over
        if state == pybreaker.STATE_OPEN:
            self._opened_clock = self._clock()
            self._draw_alone_delay()  # a new period: a trial made alone waits anew
        self._change(state)

    def _transition_op(self, state: str) -> str:
        if state == pybreaker.STATE_CLOSED:
            return "close"
        # Connected, the rate policy's trip is decided in Redis: one decided here was made on
        # this instance's own window while Redis was out of reach, and wins when it is back.
        return "trip" if self._policy is not None and self._state == pybreaker.STATE_CLOSED else "open"

    def increment_counter(self) -> None:
        self._fail_counter += 1
        self._count(reset=False)

    def reset_counter(self) -> None:
        if self._fail_counter:
            self._fail_counter = 0
            self._count(reset=True)

    def increment_success_counter(self) -> None:
        self._success_counter += 1

    def reset_success_counter(self) -> None:
        self._success_counter = 0

    @property
    def counter(self) -> int:
        return self._fail_counter

    @property
    def success_counter(self) -> int:
        return self._success_counter

    @property
    def opened_at(self) -> datetime | None:
        """For display: when the circuit opened, on this host's wall clock."""
        if self._state != pybreaker.STATE_OPEN or self._opened_clock is None:
            return None
        return datetime.now(UTC) - timedelta(seconds=self._clock() - self._opened_clock)

    @opened_at.setter
    def opened_at(self, opened_at: datetime) -> None:
        pass  # Redis stamps its own time; this process measures from the moment it opened

    def seconds_until_trial(self) -> float:
        if self._opened_clock is None:
            return 0.0
        period = max(self._reset_timeout_ms / 1000, self._hold)
        if not self.connected:
            period += self._alone_delay
        return max(0.0, self._opened_clock + period - self._clock())

    def _draw_alone_delay(self) -> None:
        self._alone_delay = self._jitter() * ALONE_JITTER * self._reset_timeout_ms / 1000

    def force(self, state: str) -> None:
        """An operator's open or close: written to Redis whatever the version. A close starts
        the window afresh, here and in Redis, as it starts the count of failures afresh."""
        if state == pybreaker.STATE_CLOSED and self._window is not None:
            self._window.clear()
        op = "force-open" if state == pybreaker.STATE_OPEN else "force-close"
        plain = ("open", "trip") if state == pybreaker.STATE_OPEN else ("close",)
        entries = self._out.entries
        if entries and entries[-1][0] in plain and entries[-1][1] == self._next_base - 1:
            # pybreaker's own entry for this very change, just made (`trip()`, `reset()`):
            # the forced one takes its place, so Redis makes one generation of the change,
            # as this instance counted, and its next writes are not refused as stale.
            entries[-1][0] = op
            self._out.wake.set()
            return
        self._send(op)
        if state == pybreaker.STATE_CLOSED:
            # A close of a closed circuit is a new generation in Redis too (a clean count).
            self._next_base += 1

    def hold_open(self, seconds: float) -> None:
        """A Retry-After: open now if not open, no trial for `seconds`; for the whole fleet."""
        self._send("hold", Hold(seconds, self._clock()))
        if self._state != pybreaker.STATE_OPEN:
            self._next_base += 1  # the hold opens it: a transition, as Redis will count it
            self._opened_clock = self._clock()
            self._draw_alone_delay()
            self._hold = seconds
            self._change(pybreaker.STATE_OPEN)
            return
        started = self._opened_clock if self._opened_clock is not None else self._clock()
        self._hold = max(self._hold, self._clock() - started + seconds)

    # The rate policy's window, fleet-wide.

    def share_window(self, window: CallWindow) -> None:
        """Every `WINDOW_FLUSH_INTERVAL` the calls counted in `window` since join the fleet's
        window in one write, and Redis trips the circuit on the fleet's totals."""
        if self._window is not None:
            self._window.share(window)

    def fleet_window(self) -> WindowCounts | None:
        if not self.connected or self._window is None:
            return None
        return self._window.counts()

    def _flush_window(self) -> None:
        """Counts waiting while Redis is unreachable wait on, and go when it is back."""
        if not self.connected or self._window is None:
            return
        entry = self._window.take()
        if entry is not None and self._state == pybreaker.STATE_CLOSED:
            self._send(*entry)

    # The fleet's half-open trial.

    async def acquire_trial(self) -> TrialVerdict:
        """Ask Redis whether this caller may make the trial call; one round trip, only when
        the reset timeout has passed. Without Redis, the process decides alone."""
        if not self.connected:
            return "granted"
        if self._lease.told_busy():
            return "busy"
        try:
            verdict, snapshot, token = await self._lease.ask()
        except (RedisError, OSError) as exc:
            # Not "granted": a fleet-wide slowdown (a failover, a slow command) would then
            # let every instance that asked make a trial (measured: 75 trials at N = 300).
            # This caller gets the fallback; the next one, with Redis lost, decides alone.
            self._lose(exc)
            return "busy"
        if verdict == "lost":
            self._suspect_lost()
            return "open"
        try:
            self._heard(Shared.parse(snapshot), Source.READ)
        except UnreadableRecord as bad:
            self._found_unreadable(bad)
            return "open"
        self._lease.settle(verdict, token)
        return verdict  # type: ignore[return-value]

    def release_trial(self, token: str | None = None) -> None:
        """A trial that ended without an outcome (cancelled): let another caller try."""
        if self.connected:
            self._background(self._lease.release(token))

    # Keeping the local view and Redis in step.

    async def start(self) -> None:
        """Load the shared state (Redis must answer now), then keep in step in the background."""
        policy, window_ms = (
            ("rate", str(int(self._policy.window * 1000))) if self._policy else ("consecutive", "")
        )
        args: list[str | int] = [self._channel, self._fail_max, self._reset_timeout_ms, policy, window_ms]
        reply = await shielded(self._init(keys=self._keys, args=args))
        self._warn_if_settings_differ(*(field.decode() for field in reply[-4:]))  # b"" where none
        self.connected = True
        try:
            self._heard(Shared.parse(reply), Source.SEED)
        except UnreadableRecord as bad:
            self._found_unreadable(bad)
            await self._check_record()
        self._supervisor = asyncio.create_task(self._supervise(), name="redis-state")
        if self._window is not None:
            self._window.start()

    async def stop(self) -> None:
        """Write what is left, then end the background work: within STOP_TIMEOUT whatever
        the Redis client does with the cancellation of its tasks."""
        self._stopping = True
        if self._window is not None:
            self._window.cancel()
            self._flush_window()  # the calls counted since the last flush go with what is left
        self._out.wake.set()  # the writer sends what is left, then returns
        started = time.monotonic()
        tasks = {t for t in (self._supervisor, *self._pending) if t is not None and not t.done()}
        _, running = await asyncio.wait(tasks, timeout=STOP_TIMEOUT / 4) if tasks else (set(), set())
        for task in running:
            task.cancel()
        # Closing the connections breaks any read still pending.
        closing = asyncio.ensure_future(self._client.aclose())
        left = max(0.05, STOP_TIMEOUT - (time.monotonic() - started))
        _, abandoned = await asyncio.wait({closing, *running}, timeout=left)
        unwritten = len(self._out.entries) + len(self._out.in_flight)
        if unwritten:
            # Safe to lose: the fleet goes on deciding on its own counts, and a lost
            # transition is made again by the next failures or the next trial.
            log.warning("stopped with %d circuit update(s) not written to Redis", unwritten)
        if abandoned:
            log.warning(
                "stopped with %d Redis task(s) still running after %.1fs: abandoned", len(abandoned), left
            )

    def _heard(self, shared: Shared, source: Source) -> None:
        """Take Redis's view, plus this process's writes that have not reached it yet.

        Only the reply to this process's own write settles the writes it
        carried. A read or a pub/sub message may have been made before a write
        of ours landed: at the same version, while writes are on their way, it
        would roll back the failures counted since, so it is left for the
        write's reply. Nor does any snapshot undo a transition made here that
        Redis will still apply on top of it (`Outbox.still_to_apply`), whatever its
        version. A seed (start-up, a re-seeded record) is taken whole.
        """
        if source is not Source.SEED and (not shared.exists or shared.version < self._version):
            self._suspect_lost()
            return
        if source is not Source.SEED and shared.seq < self._seq:
            return  # taken before a snapshot already heard: a reply or a message that came late
        if source is Source.MESSAGE:
            self._lease.heard_change()
        if source is not Source.SEED and self._out.still_to_apply(shared.version, self._version, source):
            return  # Redis has not seen some writes of ours yet: the reply to them settles it
        state_changed = shared.state != self._state
        version_changed = shared.version != self._version
        new_write = shared.seq != self._seq
        self._version, self._seq = shared.version, shared.seq
        if not self._out.transitions_pending():
            self._next_base = shared.version
        self._fail_counter = self._out.with_unsent_failures(shared.fail_counter, self._next_base)
        self._hold = min(shared.hold, self._max_hold)
        if (state_changed or version_changed) and self._window is not None:
            self._window.new_state()
        if shared.seeded and self._window is not None and shared.seeded != self._window.recounted:
            self._window.recount(shared.seeded)
        if shared.state != pybreaker.STATE_OPEN or shared.open_age is None:
            self._opened_clock = None
        elif version_changed or self._opened_clock is None:
            self._opened_clock = self._clock() - shared.open_age
        elif new_write:
            # Never earlier than what this process already knew: err on staying open. A copy
            # of the write already heard (the periodic read, this process's own pub/sub
            # message) says nothing new, and one that came late would restart the period.
            self._opened_clock = max(self._clock() - shared.open_age, self._opened_clock)
        if state_changed or version_changed:
            self._change(shared.state)

    def _change(self, state: str) -> None:
        changed = state != self._state
        self._state = state
        self.generation += 1
        if changed:
            self.on_change()

    def _send(self, op: str, count: int | str | Hold = 0) -> None:
        self._out.send(op, self._next_base, count)

    def _count(self, reset: bool) -> None:
        self._out.count(reset, self._next_base)

    def _writes_pending(self) -> bool:
        return self._out.pending()

    @property
    def _outbox(self) -> list[list[Any]]:
        """The entries not sent yet (for the tests' eyes)."""
        return self._out.entries

    @property
    def _in_flight(self) -> list[list[Any]]:
        return self._out.in_flight

    def _suspect_lost(self) -> None:
        self._lost_record = True
        self._out.wake.set()

    async def _read(self) -> Shared:
        return Shared.parse(await shielded(self._read_script(keys=self._keys)))

    async def _write(self, batch: list[list[Any]], batch_id: int) -> None:
        """Send the batch in flight; its reply settles it (nothing of it is pending any more
        when the reply is heard, or a transition in it would keep this instance's next
        writes on the version before it)."""
        args = [self._channel, self._fail_max, batch_id, *batch_args(batch, self._clock)]
        keys = [*self._keys, self._written_key, self._window_key]
        reply = await shielded(self._apply(keys=keys, args=args))
        self._out.in_flight = []
        self._heard(Shared.parse(reply), Source.WRITE)
        if len(reply) > 8 and self._window is not None:
            self._window.heard(*(int(count) for count in reply[8:11]))

    async def _supervise(self) -> None:
        while not self._stopping:
            if not self.connected:
                await self._reconnect()
                continue
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._write_outbox())
                    group.create_task(self._subscriber.follow(REFRESH_INTERVAL, RECONNECT_INTERVAL))
            except* UnreadableRecord as bad:
                first = bad.exceptions[0]
                assert isinstance(first, UnreadableRecord)
                self._found_unreadable(first)
            except* ResponseError as failed:
                # A script that fails on the record's fields is an unreadable record too.
                self._found_unreadable(UnreadableRecord("a field", str(failed.exceptions[0])))
            except* (RedisError, OSError) as failure:
                self._lose(failure.exceptions[0])

    async def _write_outbox(self) -> None:
        out = self._out
        while True:
            await out.wake.wait()
            out.wake.clear()
            if self._lost_record and not self._stopping:
                await self._check_record()
            if not out.pending():
                if self._stopping:
                    return
                continue
            await self._write(out.next_batch(), out.batch_id)
            if out.entries or self._stopping:
                out.wake.set()  # once more: send what came in meanwhile, or return

    async def _check_record(self) -> None:
        """A snapshot said the circuit is gone or older than ours: confirm with a read made
        now (versions never go down in Redis), then seed it from this process's view."""
        self._lost_record = False
        if self._unreadable is not None:
            bad, self._unreadable = self._unreadable, None
            await self._replace_unreadable(bad)
            return
        try:
            shared = await self._read()
        except UnreadableRecord as bad:
            await self._replace_unreadable(bad)
            return
        if shared.exists and shared.version >= self._version:
            self._heard(shared, Source.READ)
            return
        await self._seed_from_view(reason="missing" if not shared.exists else "older than this instance's")

    def _found_unreadable(self, bad: UnreadableRecord) -> None:
        self._unreadable = bad
        self._suspect_lost()

    async def _replace_unreadable(self, bad: UnreadableRecord) -> None:
        """Write this instance's view over a record it cannot read; if Redis refuses that too,
        go degraded (deciding alone, `/health` says so) and try again from there."""
        try:
            await self._seed_from_view(reason=f"unreadable ({bad})", replace=True)
        except (ResponseError, UnreadableRecord) as exc:
            raise ConnectionError(f"the circuit's record in Redis cannot be replaced: {exc}") from exc

    async def _seed_from_view(self, reason: str, replace: bool = False) -> None:
        age = None if self._opened_clock is None else self._clock() - self._opened_clock
        view = View(self._state, self._fail_counter, age, self._hold, self._version, self._seq)
        counted = len(self._out.entries)  # what the seed's count includes
        seeded, shared = await self._seeder.seed(view, replace)
        if not seeded:
            # Another instance seeded it first (an open view here still won): what this
            # process has not written yet goes on top, as it would have on the lost record.
            self._heard(shared, Source.READ)
            return
        log.warning(
            "the circuit's record in Redis was %s: seeded from this instance's view (%s), now %s",
            reason,
            self._state,
            shared.state,
        )
        # Counted in the seed already; what came in during the round trip (a trip, say)
        # stays, and is sent on top of the seed, as on any record.
        del self._out.entries[:counted]
        self._out.in_flight = []
        self._heard(shared, Source.WRITE)

    def _lose(self, error: BaseException) -> None:
        if not self.connected:
            return
        log.warning("Redis lost (%r): the circuit carries on with this process's state", error)
        self.connected = False
        self._lost_at = self._clock()
        self._draw_alone_delay()
        if self._supervisor and asyncio.current_task() is not self._supervisor and not self._stopping:
            # Lost from a request's call: restart the background work, which reconnects first.
            self._supervisor.cancel()
            self._supervisor = asyncio.create_task(self._supervise(), name="redis-state")

    async def _reconnect(self) -> None:
        """Retry until Redis answers, then reconcile. Redis as this process left it: the
        outbox replays what happened here meanwhile (an open here wins). Redis moved on:
        the fleet's newer generation wins. Redis lost the circuit: seed it from here."""
        while not self._stopping:
            await asyncio.sleep(RECONNECT_INTERVAL)
            try:
                try:
                    shared = await self._read()
                except UnreadableRecord as bad:
                    await self._replace_unreadable(bad)
                    shared = await self._read()
                if not shared.exists or shared.version < self._version:
                    await self._seed_from_view(reason="reset while it was unreachable")
                elif shared.version > self._version:
                    self._out.clear()  # based on a generation the fleet has left
                    self._heard(shared, Source.SEED)
            except (RedisError, OSError):
                continue
            self.connected = True
            if self._window is not None and self._lost_at is not None:
                self._window.drop_if_older_than_window(self._lost_at)
                self._flush_window()  # the counts that waited for their flush
            self._out.wake.set()  # send what was not written before the outage
            log.warning("Redis is back: the circuit is shared again (%s)", self._state)
            return

    def _warn_if_settings_differ(self, fail_max: str, reset_ms: str, policy: str, window_ms: str) -> None:
        ours = settings_in_use(
            "rate" if self._policy else "consecutive",
            str(self._fail_max),
            str(int(self._policy.window * 1000)) if self._policy else "",
            str(self._reset_timeout_ms),
        )
        theirs = settings_in_use(policy or "consecutive", fail_max, window_ms, reset_ms)
        warning = settings_warning(self._breaker_name, theirs, ours)
        if warning:
            log.warning("%s", warning)

    def _background(self, awaitable: Awaitable[object]) -> None:
        async def run() -> None:
            try:
                await shielded(awaitable)
            except (RedisError, OSError) as exc:
                self._lose(exc)

        task = asyncio.ensure_future(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

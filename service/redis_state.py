"""Circuit state shared by a fleet through Redis, at no Redis round trip per request.

pybreaker's own `CircuitRedisStorage` asks Redis on every call (two blocking
round trips per guarded call, measured at ~200 us each on a local Redis) and
lets every process in half-open state call the partner. This storage keeps
pybreaker as the state machine and changes where the state lives; it is the
`SharedState` that `circuit_breaker.AsyncCircuitBreaker` takes:

- **A local view.** pybreaker reads state and fail counter from memory, so a
  request in a closed or open circuit never touches Redis.
- **Writes coalesce in the background.** A failure, a reset or a transition
  changes the local view at once and joins an outbox; a background task sends
  the whole outbox as one Lua script call (one round trip per batch, however
  many calls failed meanwhile), so the outbox never grows with the request
  rate. The script decides the trip on the fleet's count, atomically, and
  PUBLISHes the new state; every instance subscribes, and a refresh every
  second catches a message that pub/sub dropped. A batch whose reply was
  lost is sent again after a reconnect with its id, and Redis applies it
  once: never dropped silently, never counted twice.
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
- **The rate policy's window, fleet-wide.** Calls are counted locally and
  added to the fleet's buckets (ten per window, on Redis's clock) every
  `WINDOW_FLUSH_INTERVAL`, as one more entry of the batch; the script sums
  the window and trips the circuit on the fleet's rates, atomically. The
  fleet's totals are at most one flush interval and a round trip behind.
- **Retry-After for the fleet.** A `hold` entry opens the circuit (whatever
  its version) and stretches the open period to at least that long; every
  snapshot carries it, so no instance lets a trial through before.
- **A record that can vanish.** A flush, an eviction, a `DEL` or a failover to
  a replica that missed writes leaves Redis with no circuit, or an older one.
  An instance notices within one refresh and seeds Redis from its own view:
  open wins, and half-open counts as open (its trial's lease is gone too).
- **One trial per fleet.** When the reset timeout has passed, the caller that
  wins a lease in Redis (SET NX with an expiry, so a prober that crashes
  cannot wedge the circuit) makes the trial call; every other caller in the
  fleet gets the fallback. A released lease is published, so instances that
  were told "busy" may try again at once.
- **Redis outages.** On the first error (short timeouts, no retries) the
  storage logs one line and carries on with the local view alone; it keeps
  trying in the background, logs one line when Redis is back and reconciles:
  an open circuit anywhere stays open.
- **A shutdown that always ends.** With redis-py 8.1 on Python 3.11, a task
  cancelled while it awaits a reply often goes on running: in a loop of
  EVALSHAs through `register_script`, 176 of 200 cancelled tasks kept
  running on 3.11.7, and 34 of 50 around `pubsub.subscribe`; on 3.12.1 with
  the same redis-py, none (`tools/bench/cancel_swallow.py` measures it). The
  symptom is the one of redis/redis-py#2028 and #2551; the exact line in the
  client is not pinned down here. So every round trip is awaited through
  `asyncio.shield`, which delivers the caller's cancellation whatever the
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
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import pybreaker
from redis.asyncio import Redis, RedisCluster
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from circuit_breaker import RatePolicy, TrialVerdict, WindowCounts

log = logging.getLogger("redis_state")

T = TypeVar("T")

# Redis is local infrastructure: if it cannot answer in a quarter of a second
# it is down for our purposes, and no request should wait longer on it.
REDIS_TIMEOUT = 0.25
REFRESH_INTERVAL = 1.0
RECONNECT_INTERVAL = 0.5
# Failures and resets coalesce into one entry, so the outbox holds a handful of
# entries whatever the load; this bound only matters if transitions pile up
# during a long outage, and the oldest of those are stale by then anyway.
MAX_OUTBOX = 64
STOP_TIMEOUT = 2.0
Source = Literal["write", "read", "message", "seed"]
COUNTS = ("failures", "reset-failures")  # outbox entries that count failures in a row
NOT_TRANSITIONS = (*COUNTS, "window")  # the others are transitions
# How often an instance adds its calls to the fleet's window (rate policy): the fleet's
# totals, and so its trip, are at most this far behind, plus one round trip.
WINDOW_FLUSH_INTERVAL = 0.2

_SNAPSHOT = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- state, fail counter, age of the open period in ms on Redis's clock, version, exists,
-- seq, bumped by every change, so that an older snapshot is told from a newer one, and
-- hold_ms: how long from its start the open period lasts at least (a Retry-After)
local function snapshot()
  local s = redis.call('HMGET', KEYS[1], 'state', 'fail_counter', 'opened_at', 'version', 'seq', 'hold_ms')
  local age = ''
  if s[3] then age = tostring(now_ms() - tonumber(s[3])) end
  local exists = tostring(redis.call('EXISTS', KEYS[1]))
  return {s[1] or 'closed', s[2] or '0', age, s[4] or '0', exists, s[5] or '0', s[6] or '0'}
end
local function publish()
  redis.call('HINCRBY', KEYS[1], 'seq', 1)
  redis.call('PUBLISH', ARGV[1], table.concat(snapshot(), ','))
end
local function transition(to, open_age_ms)
  redis.call('HSET', KEYS[1], 'state', to)
  redis.call('HINCRBY', KEYS[1], 'version', 1)
  redis.call('HDEL', KEYS[1], 'seeded', 'hold_ms')
  -- A new state starts a new window (KEYS[4], in the scripts that keep one).
  if KEYS[4] and to ~= 'half-open' then redis.call('DEL', KEYS[4]) end
  if to == 'open' then redis.call('HSET', KEYS[1], 'opened_at', now_ms() - (open_age_ms or 0)) end
  if to == 'closed' then redis.call('HSET', KEYS[1], 'fail_counter', 0) end
  if to ~= 'half-open' then redis.call('DEL', KEYS[2]) end
end
"""

# KEYS: circuit hash, trial lease, this writer's last batch, the fleet's call window.
# ARGV: channel, fail_max, the batch's id, then entries of three: op, the version it is
# based on, a count. An entry based on another version is stale and refused; a forced
# one (and a Retry-After's hold) applies whatever the version. A batch sent again after
# a lost reply is applied once. A `window` entry's count is "calls,failures,slow,
# window ms,min calls,failure rate,slow call rate": its calls join the fleet's buckets
# (ten per window, on Redis's clock) and the rates over them decide the trip. The reply
# is the snapshot, then the window's calls, failures and slow calls if it has one.
_APPLY = (
    _SNAPSHOT
    + """
local function window_totals(width)
  local oldest = math.floor(now_ms() / width) - 9
  local totals = {0, 0, 0}
  local fields = redis.call('HGETALL', KEYS[4])
  for j = 1, #fields, 2 do
    local bucket, kind = string.match(fields[j], '^(%-?%d+):(%d)$')
    if tonumber(bucket) < oldest then
      redis.call('HDEL', KEYS[4], fields[j])
    else
      totals[tonumber(kind)] = totals[tonumber(kind)] + tonumber(fields[j + 1])
    end
  end
  return totals
end
if redis.call('GET', KEYS[3]) == ARGV[3] then return snapshot() end
redis.call('SET', KEYS[3], ARGV[3], 'EX', 3600)
local fail_max = tonumber(ARGV[2])
local changed = false
local window = nil
for i = 4, #ARGV, 3 do
  local op, base, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local s = redis.call('HMGET', KEYS[1], 'state', 'version', 'fail_counter')
  local state, version = s[1] or 'closed', s[2] or '0'
  local current = (op == 'force-open' or op == 'force-close' or op == 'hold') or (s[2] and version == base)
  if op == 'window' and current and state == 'closed' then
    local v = {}
    for x in string.gmatch(ARGV[i + 2], '[^,]+') do table.insert(v, tonumber(x)) end
    local width = v[4] / 10
    local bucket = math.floor(now_ms() / width)
    for kind = 1, 3 do
      if v[kind] > 0 then redis.call('HINCRBY', KEYS[4], bucket .. ':' .. kind, v[kind]) end
    end
    redis.call('PEXPIRE', KEYS[4], math.ceil(v[4] * 2))
    window = window_totals(width)
    local calls = window[1]
    if calls >= v[5] and (window[2] >= v[6] * calls or window[3] >= v[7] * calls) then
      transition('open'); changed = true
      window = {0, 0, 0}
    end
  elseif op == 'hold' then
    -- A Retry-After: open if not open, and no trial for n ms from now.
    if state ~= 'open' then transition('open') end
    local opened = tonumber(redis.call('HGET', KEYS[1], 'opened_at'))
    local held = tonumber(redis.call('HGET', KEYS[1], 'hold_ms') or '0')
    redis.call('HSET', KEYS[1], 'hold_ms', math.max(held, now_ms() - opened + n))
    changed = true
  elseif current then
    if op == 'failures' or op == 'reset-failures' then
      if op == 'reset-failures' then redis.call('HSET', KEYS[1], 'fail_counter', 0) end
      local count = redis.call('HINCRBY', KEYS[1], 'fail_counter', n)
      if state == 'closed' and count >= fail_max then transition('open') end
      changed = true
    elseif op == 'open' or op == 'force-open' then
      -- A closed circuit opens on the fleet's count, not on one instance's view of it.
      -- An open based on this very version of an open circuit is a trial that instance
      -- made alone while Redis was out of reach, and that failed: its open wins, as a
      -- new period from now, or the fleet would let another trial through at once.
      if state == 'half-open' or op == 'force-open' and state ~= 'open'
         or state == 'closed' and tonumber(s[3] or '0') >= fail_max
         or op == 'open' and state == 'open' then
        transition('open'); changed = true
      end
    elseif op == 'close' or op == 'force-close' then
      -- A record seeded after a loss is open from then on: a trial's success that
      -- was on its way before the loss does not close it (a new trial will).
      local reseeded = op == 'close' and redis.call('HGET', KEYS[1], 'seeded') == '1'
      if state ~= 'closed' and not reseeded then
        transition('closed'); changed = true
      elseif op == 'force-close' then
        -- Already closed: no transition, but a new generation with a clean count,
        -- so that calls admitted before the operator's close count for nothing.
        redis.call('HSET', KEYS[1], 'fail_counter', 0)
        redis.call('HINCRBY', KEYS[1], 'version', 1)
        changed = true
      end
    end
  end
end
if changed then publish() end
local reply = snapshot()
if window then
  for kind = 1, 3 do table.insert(reply, window[kind]) end
end
return reply
"""
)

# KEYS: circuit hash, trial lease. ARGV: channel, reset timeout ms, lease ms, this grant's
# token ("owner:n"), owner.
_ACQUIRE_TRIAL = (
    _SNAPSHOT
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'lost', unpack(snapshot())} end
local s = redis.call('HMGET', KEYS[1], 'state', 'opened_at', 'hold_ms')
if s[1] == 'closed' then return {'closed', unpack(snapshot())} end
local period = math.max(tonumber(ARGV[2]), tonumber(s[3] or '0'))
if s[1] == 'open' and s[2] and now_ms() < tonumber(s[2]) + period then
  return {'open', unpack(snapshot())}
end
if not redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', ARGV[3]) then
  -- The lease's holder may take it again, with a new token, for its next trial when
  -- half-open needs several: a late release of the earlier grant then deletes nothing.
  local holder = redis.call('GET', KEYS[2])
  if not holder or string.sub(holder, 1, #ARGV[5] + 1) ~= ARGV[5] .. ':' then
    return {'busy', unpack(snapshot())}
  end
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
end
if s[1] == 'open' then transition('half-open'); publish() end
return {'granted', unpack(snapshot())}
"""
)

# KEYS: circuit hash, trial lease. ARGV: channel, the grant's token.
_RELEASE_TRIAL = (
    _SNAPSHOT
    + """
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]); publish() end
"""
)

# KEYS: circuit hash. ARGV: channel, fail_max, reset timeout ms. Creates the circuit
# if there is none; returns its snapshot and the settings its first writer gave it.
_INIT = (
    _SNAPSHOT
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'state', 'closed', 'fail_counter', 0, 'version', 1, 'seq', 0)
end
redis.call('HSETNX', KEYS[1], 'fail_max', ARGV[2])
redis.call('HSETNX', KEYS[1], 'reset_timeout_ms', ARGV[3])
local settings = redis.call('HMGET', KEYS[1], 'fail_max', 'reset_timeout_ms')
local reply = snapshot()
table.insert(reply, settings[1]); table.insert(reply, settings[2])
return reply
"""
)

# KEYS: circuit hash, trial lease. ARGV: channel, state ('open' or 'closed'),
# fail counter, age of the open period in ms, the version and seq this instance had seen.
# Writes this instance's view where Redis lost the circuit; where another instance
# seeded it first, an open view still wins over a seeded closed one.
_SEED = (
    _SNAPSHOT
    + """
local s = redis.call('HMGET', KEYS[1], 'state', 'version', 'seeded')
local seen = tonumber(ARGV[5])
if s[2] and tonumber(s[2]) >= seen then
  if ARGV[2] == 'open' and s[1] == 'closed' and s[3] == '1' then
    transition('open', tonumber(ARGV[4])); redis.call('HSET', KEYS[1], 'seeded', 1); publish()
  end
  return {'found', unpack(snapshot())}
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'fail_counter', ARGV[3], 'version', seen, 'seeded', 1,
           'seq', ARGV[6])
if ARGV[2] == 'open' then redis.call('HSET', KEYS[1], 'opened_at', now_ms() - tonumber(ARGV[4])) end
redis.call('DEL', KEYS[2])
publish()
return {'seeded', unpack(snapshot())}
"""
)

_READ = _SNAPSHOT + "return snapshot()"


@dataclass(frozen=True)
class Shared:
    """The circuit as Redis holds it; `open_age` is measured on Redis's clock."""

    state: str
    fail_counter: int
    open_age: float | None
    version: int
    exists: bool
    seq: int
    hold: float  # the open period lasts at least this long from its start (a Retry-After)

    @classmethod
    def parse(cls, fields: list[Any]) -> Shared:
        state, counter, age, version, exists, seq, hold_ms = (
            f.decode() if isinstance(f, bytes) else str(f) for f in fields[:7]
        )
        age_seconds = int(age) / 1000 if age else None
        return cls(
            state, int(counter), age_seconds, int(version), exists == "1", int(seq), int(hold_ms) / 1000
        )


def connect(url: str) -> Redis:
    """A client that fails fast: short timeouts and no retries, the outage handling is ours."""
    return Redis.from_url(
        url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT, retry=Retry(NoBackoff(), 0)
    )


async def connect_cluster_aware(url: str) -> Redis | RedisCluster:
    """The same client, or a cluster client when the server at `url` is a Redis Cluster node."""
    client = connect(url)
    info = await client.info("cluster")
    if not info.get("cluster_enabled"):
        return client
    await client.aclose()
    cluster = RedisCluster.from_url(
        url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT, retry=Retry(NoBackoff(), 0)
    )
    await cluster.initialize()
    return cluster


async def shielded(awaitable: Awaitable[T], cancel_inner: bool = True) -> T:
    """Await `awaitable` so that a cancellation of the caller always takes effect.

    The Redis call runs as its own task; if the caller is cancelled, the
    shield raises `CancelledError` in the caller at once, even if the client
    swallows the cancellation it passes on to the call (see the module
    docstring). The abandoned call ends by itself within the socket timeout;
    `cancel_inner=False` lets it finish, for a caller that must see its result.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if cancel_inner:
            task.cancel()
        task.add_done_callback(_retrieve)
        raise


def _has_transition(entries: list[list[Any]]) -> bool:
    return any(op not in NOT_TRANSITIONS for op, _, _ in entries)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # an abandoned call's error is expected: don't log it as unretrieved


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
    ) -> None:
        super().__init__("redis")
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
        self._window_args = (
            f"{int(policy.window * 1000)},{policy.min_calls},{policy.failure_rate!r},{policy.slow_call_rate!r}"
            if policy
            else ""
        )
        self._unsent = WindowCounts()  # calls counted here, not yet added to the fleet's window
        self._fleet: WindowCounts | None = None  # the fleet's window, as the last write heard it
        self._fleet_heard = 0.0
        self._flush: asyncio.TimerHandle | None = None
        self._channel = f"{{{name}}}:changes"
        self._apply = client.register_script(_APPLY)
        self._read_script = client.register_script(_READ)
        self._acquire = client.register_script(_ACQUIRE_TRIAL)
        self._release = client.register_script(_RELEASE_TRIAL)
        self._init = client.register_script(_INIT)
        self._seed = client.register_script(_SEED)

        self._state = pybreaker.STATE_CLOSED
        self._fail_counter = 0
        self._success_counter = 0
        self._opened_clock: float | None = None  # when the open period began, on `clock`
        self._hold = 0.0  # the open period lasts at least this long (a Retry-After)
        self._version = 0  # the latest version heard from Redis
        self._seq = 0  # the latest change heard from Redis
        self._next_base = 0  # the version the next write is based on
        self.generation = 0  # bumped whenever the state or its version changes
        self._busy_until: float | None = None  # another instance holds the trial lease
        self._grants = 0  # leases asked for: each grant's token is "owner:n"
        self._lease_token = ""
        self.on_change: Callable[[], object] = lambda: None

        self.connected = False
        self._outbox: list[list[Any]] = []  # [op, base version, count]
        self._in_flight: list[list[Any]] = []
        self._batch_id = 0
        self._written_key = f"{{{name}}}:written:{self._owner}"
        self._dropped = 0
        self._wake = asyncio.Event()
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
            self._send("open" if state == pybreaker.STATE_OPEN else "close")
            self._next_base += 1
        if state == pybreaker.STATE_OPEN:
            self._opened_clock = self._clock()
        self._change(state)

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
        return max(0.0, self._opened_clock + period - self._clock())

    def force(self, state: str) -> None:
        """An operator's open or close: written to Redis whatever the version."""
        self._send("force-open" if state == pybreaker.STATE_OPEN else "force-close")

    def hold_open(self, seconds: float) -> None:
        """A Retry-After: open now if not open, no trial for `seconds`; for the whole fleet."""
        self._send("hold", int(seconds * 1000))
        if self._state != pybreaker.STATE_OPEN:
            self._next_base += 1  # the hold opens it: a transition, as Redis will count it
            self._opened_clock = self._clock()
            self._hold = seconds
            self._change(pybreaker.STATE_OPEN)
            return
        started = self._opened_clock if self._opened_clock is not None else self._clock()
        self._hold = max(self._hold, self._clock() - started + seconds)

    # The rate policy's window, fleet-wide.

    def add_to_window(self, failed: bool, slow: bool) -> None:
        """Count a call here; every `WINDOW_FLUSH_INTERVAL` the counts join the fleet's window
        in one write, and Redis trips the circuit on the fleet's totals."""
        unsent = self._unsent
        unsent.calls += 1
        unsent.failures += failed
        unsent.slow += slow
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(WINDOW_FLUSH_INTERVAL, self._flush_window)

    def fleet_window(self) -> WindowCounts | None:
        if not self.connected or self._policy is None:
            return None
        fleet = self._fleet
        if fleet is None or self._clock() - self._fleet_heard > self._policy.window:
            fleet = WindowCounts()  # nothing heard within a window: only this process's calls
        unsent = self._unsent
        return WindowCounts(
            fleet.calls + unsent.calls, fleet.failures + unsent.failures, fleet.slow + unsent.slow
        )

    def _flush_window(self) -> None:
        self._flush = None
        unsent, self._unsent = self._unsent, WindowCounts()
        if unsent.calls and self.connected and self._state == pybreaker.STATE_CLOSED:
            self._send("window", f"{unsent.calls},{unsent.failures},{unsent.slow},{self._window_args}")

    # The fleet's half-open trial.

    async def acquire_trial(self) -> TrialVerdict:
        """Ask Redis whether this caller may make the trial call; one round trip, only when
        the reset timeout has passed. Without Redis, the process decides alone."""
        if not self.connected:
            return "granted"
        if self._busy_until is not None and self._clock() < self._busy_until:
            return "busy"
        self._grants += 1
        token = f"{self._owner}:{self._grants}"
        args: list[str | int] = [self._channel, self._reset_timeout_ms, self._lease_ms, token, self._owner]
        call = asyncio.ensure_future(self._acquire(keys=self._keys, args=args))
        try:
            reply = await shielded(call, cancel_inner=False)
        except asyncio.CancelledError:
            # The caller gave up: if Redis granted the lease anyway, hand it back.
            call.add_done_callback(lambda done: self._release_if_granted(done, token))
            raise
        except (RedisError, OSError) as exc:
            self._lose(exc)
            return "granted"
        verdict = reply[0].decode()
        if verdict == "lost":
            self._suspect_lost()
            return "open"
        self._heard(Shared.parse(reply[1:]), "read")
        if verdict == "busy":
            self._busy_until = self._clock() + self._lease_ms / 1000
        elif verdict == "granted":
            self._lease_token = token
        return verdict  # type: ignore[no-any-return]

    def release_trial(self, token: str | None = None) -> None:
        """A trial that ended without an outcome (cancelled): let another caller try."""
        if self.connected:
            token = token or self._lease_token
            self._background(self._release(keys=self._keys, args=[self._channel, token]))

    def _release_if_granted(self, call: asyncio.Future[Any], token: str) -> None:
        if not call.cancelled() and call.exception() is None and call.result()[0] == b"granted":
            self.release_trial(token)

    # Keeping the local view and Redis in step.

    async def start(self) -> None:
        """Load the shared state (Redis must answer now), then keep in step in the background."""
        reply = await shielded(
            self._init(keys=self._keys, args=[self._channel, self._fail_max, self._reset_timeout_ms])
        )
        self._warn_if_settings_differ(reply[7], reply[8])
        self._heard(Shared.parse(reply), "seed")
        self.connected = True
        self._supervisor = asyncio.create_task(self._supervise(), name="redis-state")

    async def stop(self) -> None:
        """Write what is left, then end the background work: within STOP_TIMEOUT whatever
        the Redis client does with the cancellation of its tasks."""
        self._stopping = True
        if self._flush is not None:
            self._flush.cancel()
            self._flush_window()  # the calls counted since the last flush go with what is left
        self._wake.set()  # the writer sends what is left, then returns
        started = time.monotonic()
        tasks = {t for t in (self._supervisor, *self._pending) if t is not None and not t.done()}
        _, running = await asyncio.wait(tasks, timeout=STOP_TIMEOUT / 4) if tasks else (set(), set())
        for task in running:
            task.cancel()
        # Closing the connections breaks any read still pending.
        closing = asyncio.ensure_future(self._client.aclose())
        left = max(0.05, STOP_TIMEOUT - (time.monotonic() - started))
        _, abandoned = await asyncio.wait({closing, *running}, timeout=left)
        unwritten = len(self._outbox) + len(self._in_flight)
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
        write's reply; nor does a reply undo a transition made here and not
        sent yet. A `seed` (start-up, a re-seeded record) is taken whole.
        """
        if source != "seed" and (not shared.exists or shared.version < self._version):
            self._suspect_lost()
            return
        if source != "seed" and shared.seq < self._seq:
            return  # taken before a snapshot already heard: a reply or a message that came late
        if source == "message":
            self._busy_until = None  # something changed: a released lease, say
        if source != "seed" and shared.version == self._version:
            # Redis has not seen some writes of ours yet: the reply to them settles it.
            if source == "write" and _has_transition(self._outbox):
                return  # a transition made here, not sent yet
            if source != "write" and self._writes_pending():
                return
        state_changed = shared.state != self._state
        version_changed = shared.version != self._version
        self._version, self._seq = shared.version, shared.seq
        if not self._transitions_pending():
            self._next_base = shared.version
        self._fail_counter = self._with_unsent_failures(shared.fail_counter)
        self._hold = shared.hold
        if state_changed or version_changed:
            self._fleet = None  # a new state starts a new window
        if shared.state != pybreaker.STATE_OPEN or shared.open_age is None:
            self._opened_clock = None
        else:
            # Never earlier than what this process already knew: err on staying open.
            heard = self._clock() - shared.open_age
            self._opened_clock = (
                heard if version_changed or self._opened_clock is None else max(heard, self._opened_clock)
            )
        if state_changed or version_changed:
            self._change(shared.state)

    def _change(self, state: str) -> None:
        changed = state != self._state
        self._state = state
        self.generation += 1
        if changed:
            self.on_change()

    def _send(self, op: str, count: int | str = 0) -> None:
        if len(self._outbox) >= MAX_OUTBOX:
            self._outbox.pop(0)
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.warning("circuit updates dropped: %d so far (Redis unreachable too long)", self._dropped)
        self._outbox.append([op, self._next_base, count])
        self._wake.set()

    def _count(self, reset: bool) -> None:
        """Coalesce a failure or a reset into the last entry when it is a count at the same base."""
        last = self._outbox[-1] if self._outbox else None
        if last and last[0] in COUNTS and last[1] == self._next_base:
            if reset:
                last[0], last[2] = "reset-failures", 0
            else:
                last[2] += 1
            self._wake.set()
        else:
            self._send("reset-failures" if reset else "failures", 0 if reset else 1)

    def _with_unsent_failures(self, counter: int) -> int:
        for op, base, count in self._outbox:
            if base == self._next_base and op in COUNTS:
                counter = count if op == "reset-failures" else counter + count
        return counter

    def _writes_pending(self) -> bool:
        return bool(self._in_flight or self._outbox)

    def _transitions_pending(self) -> bool:
        return _has_transition(self._in_flight) or _has_transition(self._outbox)

    def _suspect_lost(self) -> None:
        self._lost_record = True
        self._wake.set()

    async def _read(self) -> Shared:
        return Shared.parse(await shielded(self._read_script(keys=self._keys)))

    async def _write(self, batch: list[list[Any]], batch_id: int) -> None:
        args = [self._channel, self._fail_max, batch_id, *(value for entry in batch for value in entry)]
        keys = [*self._keys, self._written_key, self._window_key]
        reply = await shielded(self._apply(keys=keys, args=args))
        self._heard(Shared.parse(reply), "write")
        if len(reply) > 7:
            self._fleet = WindowCounts(*(int(count) for count in reply[7:10]))
            self._fleet_heard = self._clock()

    async def _supervise(self) -> None:
        while not self._stopping:
            if not self.connected:
                await self._reconnect()
                continue
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._write_outbox())
                    group.create_task(self._follow_changes())
            except* (RedisError, OSError) as failure:
                self._lose(failure.exceptions[0])

    async def _write_outbox(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._lost_record and not self._stopping:
                await self._check_record()
            if not self._outbox and not self._in_flight:
                if self._stopping:
                    return
                continue
            if not self._in_flight:
                self._batch_id += 1
                self._in_flight, self._outbox = self._outbox, []
            # A batch whose reply was lost (a reconnect, a cancel) stays in flight and is
            # sent again with its id: Redis applies it once, whether or not it had it.
            await self._write(self._in_flight, self._batch_id)
            self._in_flight = []
            if self._outbox or self._stopping:
                self._wake.set()  # once more: send what came in meanwhile, or return

    async def _follow_changes(self) -> None:
        pubsub = self._client.pubsub()
        try:
            await shielded(pubsub.subscribe(self._channel))
            refresh_at = time.monotonic() + REFRESH_INTERVAL
            while not self._stopping:
                message = await shielded(
                    pubsub.get_message(ignore_subscribe_messages=True, timeout=REFRESH_INTERVAL / 4)
                )
                if message is not None:
                    self._heard(Shared.parse(message["data"].split(b",")), "message")
                if time.monotonic() >= refresh_at:
                    self._heard(await self._read(), "read")
                    refresh_at = time.monotonic() + REFRESH_INTERVAL
        finally:
            closing = asyncio.ensure_future(pubsub.aclose())  # type: ignore[no-untyped-call]
            closing.add_done_callback(_retrieve)

    async def _check_record(self) -> None:
        """A snapshot said the circuit is gone or older than ours: confirm with a read made
        now (versions never go down in Redis), then seed it from this process's view."""
        self._lost_record = False
        shared = await self._read()
        if shared.exists and shared.version >= self._version:
            self._heard(shared, "read")
            return
        await self._seed_from_view(reason="missing" if not shared.exists else "older than this instance's")

    async def _seed_from_view(self, reason: str) -> None:
        is_open = self._state != pybreaker.STATE_CLOSED
        # Half-open counts as open, from now: its trial's lease is gone with the record.
        age = 0.0
        if self._state == pybreaker.STATE_OPEN and self._opened_clock is not None:
            age = self._clock() - self._opened_clock
        args = [
            self._channel,
            "open" if is_open else "closed",
            self._fail_counter,
            int(age * 1000),
            self._version,
            self._seq,
        ]
        counted = len(self._outbox)  # what the seed's count includes
        reply = await shielded(self._seed(keys=self._keys, args=args))
        shared = Shared.parse(reply[1:])
        if reply[0] == b"found":
            # Another instance seeded it first (an open view here still won): what this
            # process has not written yet goes on top, as it would have on the lost record.
            self._heard(shared, "read")
            return
        log.warning(
            "the circuit's record in Redis was %s: seeded from this instance's view (%s), now %s",
            reason,
            self._state,
            shared.state,
        )
        # Counted in the seed already; what came in during the round trip (a trip, say)
        # stays, and is sent on top of the seed, as on any record.
        del self._outbox[:counted]
        self._in_flight = []
        self._heard(shared, "write")

    def _lose(self, error: BaseException) -> None:
        if not self.connected:
            return
        log.warning("Redis lost (%r): the circuit carries on with this process's state", error)
        self.connected = False
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
                shared = await self._read()
                if not shared.exists or shared.version < self._version:
                    await self._seed_from_view(reason="reset while it was unreachable")
                elif shared.version > self._version:
                    self._outbox.clear()  # based on a generation the fleet has left
                    self._in_flight = []
                    self._heard(shared, "seed")
            except (RedisError, OSError):
                continue
            self.connected = True
            self._wake.set()  # send what was not written before the outage
            log.warning("Redis is back: the circuit is shared again (%s)", self._state)
            return

    def _warn_if_settings_differ(self, fail_max: bytes | None, reset_ms: bytes | None) -> None:
        theirs = (int(fail_max or self._fail_max), int(reset_ms or self._reset_timeout_ms))
        if theirs != (self._fail_max, self._reset_timeout_ms):
            log.warning(
                "circuit %r is shared with instances that use CIRCUIT_FAIL_MAX=%d and "
                "CIRCUIT_RESET_TIMEOUT=%g; this one uses %d and %g: the fleet's trip and "
                "trial follow each instance's own settings",
                self._breaker_name,
                theirs[0],
                theirs[1] / 1000,
                self._fail_max,
                self._reset_timeout_ms / 1000,
            )

    def _background(self, awaitable: Awaitable[object]) -> None:
        async def run() -> None:
            try:
                await shielded(awaitable)
            except (RedisError, OSError) as exc:
                self._lose(exc)

        task = asyncio.ensure_future(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

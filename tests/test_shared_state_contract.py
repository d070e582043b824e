"""The shared state's contract, rule by rule, against a real redis-server: the keys and
the channel the fleet meets on, what each change writes, what is heard back, the trial's
lease, outages and the stop. tests/test_fleet_state.py tells the fleet's story; this
file pins each rule down so that breaking one fails a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pybreaker
import pytest
import redis
from redis.exceptions import RedisError

from circuit_breaker import AsyncCircuitBreaker, CutShort, NotPermitted
from service.redis_connection import connect, single_server
from service.redis_state import (
    MAX_OUTBOX,
    REDIS_TIMEOUT,
    Shared,
    SharedCircuitState,
    shielded,
)
from tests.breakers import CHANNEL, CIRCUIT, PATIENCE, TRIAL, eventually, reached, shared, trip
from tests.conftest import Fleet
from tests.fake_clock import FakeClock
from tests.partner_stand_ins import PartnerDown, fail, ok
from tools.processes import PROJECT_DIR, RedisClusterServers, RedisServer, delay_proxy, free_port, wait_for

BOUND = PATIENCE  # every wait on the shared state: tests/breakers.py says why


def evalsha_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


class Road:
    """One instance's road to Redis, which a test cuts and mends: the other instances keep
    theirs. A tools/delay_proxy.py with no delay on a port that stays the same."""

    def __init__(self, target_port: int, delay: float = 0.0) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.delay = delay
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def mend(self) -> None:
        script = str(PROJECT_DIR / "tools" / "delay_proxy.py")
        self.process = subprocess.Popen(
            [sys.executable, script, str(self.port), str(self.target_port), str(self.delay)]
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        try:
            wait_for(client.ping, timeout=10, what="the road to Redis")
        finally:
            client.close()

    def cut(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def road(redis_server: RedisServer) -> Iterator[Road]:
    road = Road(redis_server.port)
    road.mend()
    yield road
    road.cut()


def state_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "redis_state"]


@contextlib.contextmanager
def errors_reported_on_the_loop() -> Iterator[list[dict[str, Any]]]:
    """What the running loop's exception handler is given meanwhile (an error raised in a
    callback, a task's exception never retrieved), for a test to find empty."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        yield reported
    finally:
        loop.set_exception_handler(None)


def written_failures(client: redis.Redis) -> int:
    return int(client.hget(CIRCUIT, "fail_counter") or 0)


def subscribed(client: redis.Redis) -> bool:
    return any(count for _, count in client.pubsub_numsub(CHANNEL))


def settled(breaker: AsyncCircuitBreaker) -> bool:
    return not shared(breaker)._writes_pending()


async def open_for_a_trial(fleet: Fleet, redis_client: redis.Redis, **settings: Any) -> AsyncCircuitBreaker:
    """A breaker whose circuit is open in Redis with its reset timeout already passed."""
    clock = FakeClock()
    breaker = await fleet(clock=clock, **settings)
    await trip(breaker)
    await eventually(lambda: redis_client.hget(CIRCUIT, "state") == b"open", what="open written")
    # Every write landed first: a trip sent again after a timeout (a loaded machine overruns
    # the 0.25 s) would write a fresh opened_at over the one set here, and refuse the trial.
    await eventually(lambda: settled(breaker), what="nothing left to write")
    redis_client.hset(CIRCUIT, "opened_at", 0)  # Redis's own reset timeout has passed
    clock.advance(settings.get("circuit_reset_timeout", 15) + 1)
    return breaker


# What a snapshot from Redis says


def test_a_snapshot_reads_state_count_age_in_seconds_version_existence_seq_and_hold() -> None:
    fields = [b"open", b"2", b"1500", b"7", b"1", b"9", b"60000", b"0", b"3", b"15000"]  # as _INIT returns it
    assert Shared.parse(fields) == Shared("open", 2, 1.5, 7, True, 9, 60.0)


def test_a_snapshot_whose_open_period_began_ahead_of_redis_clock_is_read_with_a_negative_age() -> None:
    """After a failover to a server whose clock is behind, `opened_at` is in its future: the
    age is negative, and still a number (the period then lasts a little longer)."""
    fields = [b"open", b"0", b"-250", b"7", b"1", b"9", b"0"]
    assert Shared.parse(fields) == Shared("open", 0, -0.25, 7, True, 9, 0.0)


def test_a_snapshot_of_a_circuit_that_never_opened_has_no_age_and_may_not_exist() -> None:
    closed = [b"closed", b"0", b"", b"0", b"0", b"0", b"0"]
    assert Shared.parse(closed) == Shared("closed", 0, None, 0, False, 0, 0.0)
    assert Shared.parse(["half-open", 3, "250", 4, 1, 5, 0]) == Shared("half-open", 3, 0.25, 4, True, 5, 0.0)


# A client that fails fast


class Silent:
    """A TCP server that accepts connections and never answers; counts the connections."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


async def test_the_client_gives_up_on_a_silent_redis_within_its_timeout_and_never_retries() -> None:
    silent = Silent()
    client = single_server(f"redis://127.0.0.1:{silent.port}/0")
    try:
        started = time.monotonic()
        with pytest.raises((RedisError, OSError)):
            await client.ping()
        took = time.monotonic() - started
        assert REDIS_TIMEOUT * 0.8 <= took < REDIS_TIMEOUT + 1.0
        await asyncio.sleep(0.1)
        assert len(silent.accepted) == 1  # one attempt, no retry
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_connect_timeout"] == REDIS_TIMEOUT
        assert kwargs["socket_timeout"] == REDIS_TIMEOUT
    finally:
        await client.aclose()
        silent.close()


async def test_a_cluster_gets_a_cluster_client_that_fails_as_fast(redis_cluster: RedisClusterServers) -> None:
    client = await connect(redis_cluster.url)
    try:
        assert isinstance(client, redis.asyncio.RedisCluster)
        kwargs = client.get_connection_kwargs()
        assert kwargs["socket_timeout"] == REDIS_TIMEOUT
        assert kwargs["socket_connect_timeout"] == REDIS_TIMEOUT
        assert client.retry.get_retries() == 0
        assert await client.ping()
    finally:
        await client.aclose()


async def test_a_plain_server_gets_the_plain_fail_fast_client(redis_server: RedisServer) -> None:
    client = await connect(redis_server.url)
    try:
        assert type(client) is redis.asyncio.Redis
        assert client.connection_pool.connection_kwargs["socket_timeout"] == REDIS_TIMEOUT
        assert await client.ping()
    finally:
        await client.aclose()


# Awaiting Redis so that a cancellation always lands


async def test_a_cancelled_caller_cancels_the_call_it_was_awaiting() -> None:
    inner_cancelled = asyncio.Event()
    started = asyncio.Event()

    async def call() -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            inner_cancelled.set()
            raise
        return "late"

    caller = asyncio.create_task(shielded(call()))
    await asyncio.wait_for(started.wait(), BOUND)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(caller, BOUND)
    await asyncio.wait_for(inner_cancelled.wait(), BOUND)


async def test_a_call_that_must_finish_runs_on_after_its_caller_is_cancelled() -> None:
    finished = asyncio.Event()
    started = asyncio.Event()

    async def call() -> str:
        started.set()
        await asyncio.sleep(0.05)
        finished.set()
        return "done"

    caller = asyncio.create_task(shielded(call(), cancel_inner=False))
    await asyncio.wait_for(started.wait(), BOUND)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(caller, BOUND)
    await asyncio.wait_for(finished.wait(), BOUND)


@pytest.mark.parametrize("cancel_inner", [True, False])
async def test_an_abandoned_calls_end_is_never_reported_as_an_error(cancel_inner: bool) -> None:
    with errors_reported_on_the_loop() as reported:
        started = asyncio.Event()

        async def call() -> str:
            started.set()
            await asyncio.sleep(0.05)
            raise ConnectionError("the connection was closed under it")

        caller = asyncio.create_task(shielded(call(), cancel_inner=cancel_inner))
        await asyncio.wait_for(started.wait(), BOUND)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(caller, BOUND)
        await asyncio.sleep(0.15)
        del caller
        gc.collect()
        await asyncio.sleep(0)
        assert reported == []


# Where the fleet meets


async def test_the_circuit_its_settings_and_its_changes_live_under_the_breakers_hash_tag(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(CHANNEL)
    try:
        breaker = await fleet(circuit_fail_max=2, circuit_reset_timeout=7.5)
        assert redis_client.hget(CIRCUIT, "fail_max") == b"2"
        assert redis_client.hget(CIRCUIT, "reset_timeout_ms") == b"7500"
        for _ in range(2):
            with pytest.raises(PartnerDown):
                await breaker.call(fail)
        deadline = time.monotonic() + BOUND
        heard: list[bytes] = []
        while not any(m.startswith(b"open,") for m in heard):
            assert time.monotonic() < deadline, f"no open snapshot published, heard {heard}"
            message = pubsub.get_message(timeout=0.05)
            if message is not None:
                heard.append(message["data"])
            await asyncio.sleep(0)
        snapshot = Shared.parse(next(m for m in heard if m.startswith(b"open,")).split(b","))
        assert snapshot.state == "open" and snapshot.fail_counter == 2 and snapshot.exists
    finally:
        pubsub.close()


# What each change writes


async def test_a_success_with_no_failures_to_reset_writes_nothing(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    breaker = await fleet()
    before = evalsha_calls(redis_client)
    for _ in range(20):
        assert await breaker.call(ok) == "hot"
    await asyncio.sleep(0.1)
    assert evalsha_calls(redis_client) == before


async def test_a_success_after_failures_resets_the_fleets_count(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    breaker = await fleet(circuit_fail_max=10)
    for _ in range(4):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
    await eventually(lambda: redis_client.hget(CIRCUIT, "fail_counter") == b"4", what="four failures written")
    assert await breaker.call(ok) == "hot"
    await eventually(lambda: redis_client.hget(CIRCUIT, "fail_counter") == b"0", what="reset written")
    assert breaker.fail_counter == 0


async def test_failures_after_a_reset_count_from_zero_in_the_same_write(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    breaker = await fleet(circuit_fail_max=10)
    for _ in range(4):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
    await eventually(lambda: redis_client.hget(CIRCUIT, "fail_counter") == b"4", what="four failures written")
    # A reset and two failures, all before the writer runs: one entry, "reset, then two".
    assert await breaker.call(ok) == "hot"
    for _ in range(2):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
    assert breaker.fail_counter == 2
    await eventually(lambda: settled(breaker), what="written")
    assert redis_client.hget(CIRCUIT, "fail_counter") == b"2"
    assert breaker.fail_counter == 2


async def test_a_success_right_after_failures_not_yet_written_resets_them_all(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    breaker = await fleet(circuit_fail_max=10)
    for _ in range(4):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
    await eventually(lambda: written_failures(redis_client) == 4, what="four failures written")
    for _ in range(2):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
    assert await breaker.call(ok) == "hot"  # before the writer ran: one entry, "reset"
    await eventually(lambda: settled(breaker), what="written")
    assert written_failures(redis_client) == 0
    assert breaker.fail_counter == 0


async def test_failures_of_another_instance_add_up_with_this_ones(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    a, b = await fleet(circuit_fail_max=10), await fleet(circuit_fail_max=10)
    for _ in range(3):
        with pytest.raises(PartnerDown):
            await a.call(fail)
    await eventually(lambda: redis_client.hget(CIRCUIT, "fail_counter") == b"3", what="a's failures written")
    await eventually(lambda: b.fail_counter == 3, what="b hears them")
    with pytest.raises(PartnerDown):
        await b.call(fail)
    assert b.fail_counter == 4  # its own, on top of the fleet's, before Redis answers
    await eventually(lambda: redis_client.hget(CIRCUIT, "fail_counter") == b"4", what="b's failure written")
    await eventually(lambda: a.fail_counter == 4, what="a hears it")


async def test_the_trip_that_reaches_fail_max_opens_the_fleet_with_one_transition(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    a, b = await fleet(circuit_fail_max=4), await fleet(circuit_fail_max=4)
    version = int(redis_client.hget(CIRCUIT, "version") or 0)
    for breaker in (a, b, a):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
        await eventually(lambda: settled(a) and settled(b), what="written")
    await eventually(lambda: b.fail_counter == 3, what="b hears three")
    assert redis_client.hget(CIRCUIT, "state") == b"closed"
    with pytest.raises(PartnerDown):
        await b.call(fail)
    assert b.state_name == "open"
    await eventually(lambda: a.state_name == "open", what="a hears the trip")
    assert int(redis_client.hget(CIRCUIT, "version") or 0) == version + 1


async def test_an_operators_close_is_written_for_the_fleet_even_when_closed(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    a, b = await fleet(), await fleet()
    with pytest.raises(PartnerDown):
        await a.call(fail)
    await eventually(lambda: b.fail_counter == 1, what="b hears the failure")
    version = int(redis_client.hget(CIRCUIT, "version") or 0)
    b.reset()
    await eventually(
        lambda: int(redis_client.hget(CIRCUIT, "version") or 0) == version + 1, what="new generation"
    )
    assert redis_client.hget(CIRCUIT, "state") == b"closed"
    assert redis_client.hget(CIRCUIT, "fail_counter") == b"0"
    await eventually(lambda: a.fail_counter == 0, what="a hears the clean count")
    assert a.state_name == "closed"


async def test_an_operators_open_and_close_reach_every_instance(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    a, b = await fleet(), await fleet()
    a.trip()
    await eventually(lambda: redis_client.hget(CIRCUIT, "state") == b"open", what="open written")
    await eventually(lambda: b.state_name == "open", what="b opens")
    b.reset()
    await eventually(lambda: redis_client.hget(CIRCUIT, "state") == b"closed", what="close written")
    await eventually(lambda: a.state_name == "closed", what="a closes")


async def test_a_trial_success_closes_the_circuit_in_redis_and_ends_the_lease(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    breaker = await open_for_a_trial(fleet, redis_client)
    assert await breaker.call(ok) == "hot"
    assert breaker.state_name == "closed"
    await eventually(lambda: redis_client.hget(CIRCUIT, "state") == b"closed", what="close written")
    assert not redis_client.exists(TRIAL)
    assert redis_client.hget(CIRCUIT, "fail_counter") == b"0"


async def test_a_trial_failure_opens_the_circuit_in_redis_again(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    breaker = await open_for_a_trial(fleet, redis_client)
    version = int(redis_client.hget(CIRCUIT, "version") or 0)
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    assert breaker.state_name == "open"
    await eventually(
        lambda: int(redis_client.hget(CIRCUIT, "version") or 0) >= version + 2, what="half-open, then open"
    )
    assert redis_client.hget(CIRCUIT, "state") == b"open"
    assert int(redis_client.hget(CIRCUIT, "opened_at") or 0) > 0
    assert 14.99 <= breaker.seconds_until_trial() <= 15  # from Redis's stamp, a millisecond or so back


# The open period, on this process's clock


async def test_the_instance_that_trips_waits_exactly_its_reset_timeout_on_its_own_clock(fleet: Fleet) -> None:
    clock = FakeClock()
    breaker = await fleet(clock=clock, circuit_reset_timeout=10)
    await trip(breaker)
    await eventually(lambda: settled(breaker), what="trip written")
    await asyncio.sleep(0.05)
    # Redis's stamp, a millisecond or two before this process heard it: never later.
    assert 9.995 <= breaker.seconds_until_trial() <= 10.0
    await asyncio.sleep(1.1)  # a refresh heard since: Redis's clock moved on, this one did not
    assert 9.995 <= breaker.seconds_until_trial() <= 10.0
    clock.advance(4)
    assert 5.995 <= breaker.seconds_until_trial() <= 6.0
    clock.advance(7)
    assert breaker.seconds_until_trial() == 0.0


async def test_an_instance_that_hears_a_trip_counts_from_redis_stamp(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    clock = FakeClock()
    a = await fleet(circuit_reset_timeout=10)
    b = await fleet(clock=clock, circuit_reset_timeout=10)
    # Opened 4 s ago on Redis's clock, heard at the next refresh.
    stamped = time.time()
    redis_client.hset(CIRCUIT, mapping={"state": "open", "opened_at": int(stamped * 1000) - 4000})
    redis_client.hincrby(CIRCUIT, "version", 1)
    await eventually(lambda: b.state_name == "open", what="b hears the open circuit")
    assert abs(b.seconds_until_trial() - (6 - (time.time() - stamped))) < 0.1
    clock.advance(6)
    assert b.seconds_until_trial() == 0.0
    await eventually(lambda: a.state_name == "open", what="a hears it too")


async def test_a_copy_of_a_record_already_heard_does_not_move_the_open_period(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    """The periodic read, or this instance's own pub/sub message, brings the record it
    already has (same version, same write): the open period's start stays as first heard.
    Else a copy that arrived late (after the fake clock moved on, here) restarted it."""
    clock = FakeClock()
    breaker = await fleet(clock=clock, circuit_reset_timeout=10)
    await trip(breaker)
    await eventually(lambda: settled(breaker), what="trip written")
    assert breaker.seconds_until_trial() == pytest.approx(10, abs=0.5)
    clock.advance(6)
    before = evalsha_calls(redis_client)
    await eventually(lambda: evalsha_calls(redis_client) >= before + 2, what="two periodic reads")
    assert breaker.seconds_until_trial() == pytest.approx(4, abs=0.5)


async def test_a_closed_circuit_has_no_open_period(fleet: Fleet, redis_client: redis.Redis) -> None:
    breaker = await fleet()
    assert breaker.seconds_until_trial() == 0.0
    assert shared(breaker).opened_at is None
    breaker.trip()
    await eventually(lambda: redis_client.hget(CIRCUIT, "state") == b"open", what="open written")
    assert shared(breaker).opened_at is not None
    breaker.reset()
    await eventually(lambda: redis_client.hget(CIRCUIT, "state") == b"closed", what="close written")
    await eventually(lambda: settled(breaker), what="settled")
    await asyncio.sleep(1.1)  # a refresh too: Redis keeps the old opened_at, the view must not
    assert shared(breaker).seconds_until_trial() == 0.0
    assert shared(breaker).opened_at is None


# The trial's lease


async def test_the_trial_lease_lasts_the_partner_timeout_and_a_second(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    breaker = await open_for_a_trial(fleet, redis_client, partner_timeout=4)
    assert await shared(breaker).acquire_trial() == "granted"
    assert redis_client.hget(CIRCUIT, "state") == b"half-open"
    assert 4500 < redis_client.pttl(TRIAL) <= 5000


async def test_a_lease_call_that_fails_is_not_a_trial_of_its_own(
    fleet: Fleet, redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    """Redis stalls while every instance asks for the lease: none of them may take the
    silence for a yes, or a fleet-wide slowdown makes as many trials as instances. The
    next caller, with Redis lost, decides alone as in any outage."""
    breaker = await open_for_a_trial(fleet, redis_client)
    assert redis_server.process is not None
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        assert await shared(breaker).acquire_trial() == "busy"
        assert not shared(breaker).connected
        assert await shared(breaker).acquire_trial() == "granted"
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)


async def test_an_instance_told_busy_asks_redis_again_only_when_the_lease_could_have_ended(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    clock = FakeClock()
    a = await fleet(clock=clock, partner_timeout=4)
    b = await fleet(clock=clock, partner_timeout=4)
    await trip(a)
    await eventually(lambda: b.state_name == "open", what="b open")
    redis_client.hset(CIRCUIT, "opened_at", 0)
    clock.advance(20)
    assert await shared(a).acquire_trial() == "granted"
    await eventually(lambda: b.state_name == "half-open", what="b hears the half-open")
    told_busy = clock.now
    assert await shared(b).acquire_trial() == "busy"
    await eventually(lambda: settled(a) and settled(b), what="settled")
    before = evalsha_calls(redis_client)
    for moment in (4.5, 4.998):
        clock.now = told_busy + moment
        for _ in range(10):
            assert await shared(b).acquire_trial() == "busy"
    assert evalsha_calls(redis_client) - before <= 1  # told once, not asked again (a refresh may run)
    clock.now = told_busy + 5.0  # the lease (partner_timeout + 1 s) may have ended: ask again
    before = evalsha_calls(redis_client)
    assert await shared(b).acquire_trial() == "busy"
    assert evalsha_calls(redis_client) - before >= 1


async def test_a_trial_is_granted_only_once_its_reset_timeout_has_passed_in_redis(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    clock = FakeClock()
    breaker = await fleet(clock=clock, circuit_reset_timeout=10)
    await trip(breaker)
    await eventually(lambda: redis_client.hget(CIRCUIT, "state") == b"open", what="open written")
    clock.advance(11)  # this process thinks the period is over; Redis knows better
    assert await shared(breaker).acquire_trial() == "open"
    assert not redis_client.exists(TRIAL)
    with pytest.raises(NotPermitted, match="circuit-open"):
        await breaker.call(ok)


@pytest.mark.parametrize("record", ["lost", "unreadable"])
async def test_a_trial_asked_of_a_record_lost_or_unreadable_is_refused_as_the_open_circuit_it_was(
    fleet: Fleet, redis_client: redis.Redis, record: str
) -> None:
    breaker = await open_for_a_trial(fleet, redis_client, circuit_reset_timeout=10)
    # Just before the trial: lost (a FLUSHALL, an eviction), or written by someone else.
    if record == "lost":
        redis_client.delete(CIRCUIT)
    else:
        redis_client.hset(CIRCUIT, "fail_counter", b"x")  # a field the trial's script passes on unread
    with pytest.raises(NotPermitted) as refused:
        await breaker.call(ok)
    assert refused.value.reason == "circuit-open"


async def test_a_record_unreadable_before_the_first_instance_starts_is_named_and_replaced(
    fleet: Fleet, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis_client.hset(CIRCUIT, mapping={"state": "closed", "fail_counter": 0, "version": 1, "seq": 0})
    redis_client.hset(CIRCUIT, "hold_ms", b"abc")
    await fleet()
    replaced = [r.getMessage() for r in caplog.records if "was unreadable" in r.getMessage()]
    assert len(replaced) == 1 and "unreadable (hold_ms='abc')" in replaced[0], replaced
    assert redis_client.hget(CIRCUIT, "hold_ms") != b"abc"


async def test_a_trial_asked_for_by_a_caller_who_gave_up_and_then_lost_on_the_way_leaves_no_error(
    fleet: Fleet, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """The ask goes on after its caller is cancelled (a lease Redis grants anyway must go
    back); if it then fails, nobody awaits it, and the failure is looked at, not raised."""
    slow_road = Road(redis_server.port, delay=0.1)
    slow_road.mend()
    try:
        with errors_reported_on_the_loop() as reported:
            breaker = await open_for_a_trial(fleet, redis_client, url=slow_road.url, circuit_reset_timeout=10)
            asking = asyncio.ensure_future(shared(breaker).acquire_trial())
            await asyncio.sleep(0)  # asked: the reply is 0.2 s away, and the road is cut before it
            asking.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asking
            slow_road.cut()  # the ask's connection breaks before its reply
            await eventually(lambda: not shared(breaker).connected, what="the outage noticed")
            await asyncio.sleep(0.1)
            gc.collect()
            assert reported == []
    finally:
        slow_road.cut()


async def test_a_trial_asked_of_a_circuit_the_fleet_closed_is_no_trial(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    breaker = await fleet()
    assert await shared(breaker).acquire_trial() == "closed"
    assert not redis_client.exists(TRIAL)


async def test_a_trial_asked_of_a_lost_record_is_refused_and_the_record_seeded(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    breaker = await open_for_a_trial(fleet, redis_client)
    redis_client.delete(CIRCUIT)
    assert await shared(breaker).acquire_trial() == "open"
    assert not redis_client.exists(TRIAL)
    await eventually(
        lambda: redis_client.hget(CIRCUIT, "state") == b"open", within=0.9, what="seeded at once"
    )


async def test_without_redis_the_process_grants_its_own_trial(
    fleet: Fleet, redis_server: RedisServer
) -> None:
    breaker = await fleet()
    state = shared(breaker)
    redis_server.stop()
    await trip(breaker)
    await eventually(lambda: not state.connected, what="outage noticed")
    assert await state.acquire_trial() == "granted"
    state.release_trial()  # nothing to hand back to a Redis that is gone
    assert not state._pending


async def test_a_released_lease_is_deleted_only_by_its_holder(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    holder = await open_for_a_trial(fleet, redis_client, partner_timeout=30)
    other = await fleet(partner_timeout=30)
    assert await shared(holder).acquire_trial() == "granted"
    shared(other).release_trial()
    await asyncio.sleep(0.1)
    assert redis_client.exists(TRIAL)
    shared(holder).release_trial()
    await eventually(lambda: not redis_client.exists(TRIAL), what="released")
    await eventually(lambda: not shared(holder)._pending, what="the release forgotten once done")


async def test_a_lease_granted_to_a_caller_that_gave_up_is_handed_back(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    breaker = await open_for_a_trial(fleet, redis_client, partner_timeout=30)
    state = shared(breaker)
    claiming = asyncio.create_task(state.acquire_trial())
    await asyncio.sleep(0)  # the request is sent, the answer not read yet
    claiming.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(claiming, BOUND)
    await eventually(lambda: redis_client.hget(CIRCUIT, "state") == b"half-open", what="granted anyway")
    await eventually(lambda: not redis_client.exists(TRIAL), what="lease handed back")


# Outages


async def test_an_outage_is_logged_once_and_so_is_the_return(
    fleet: Fleet, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="redis_state")
    breaker = await fleet()
    state = shared(breaker)
    redis_server.stop()
    for _ in range(3):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
    await eventually(lambda: not state.connected, what="outage noticed")
    await asyncio.sleep(RECONNECT_WAIT)
    lost = [r.getMessage() for r in caplog.records if "Redis lost" in r.getMessage()]
    assert len(lost) == 1
    named = re.fullmatch(r"Redis lost \((.+)\): the circuit carries on with this process's state", lost[0])
    assert named is not None and "ConnectionError" in named.group(1)  # the error, by name
    redis_server.restart()
    await eventually(lambda: state.connected, what="back")
    back = [r.getMessage() for r in caplog.records if "Redis is back" in r.getMessage()]
    assert back == ["Redis is back: the circuit is shared again (open)"]


RECONNECT_WAIT = 1.2


async def test_stop_says_how_many_updates_it_could_not_write(
    fleet: Fleet, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = await fleet(circuit_fail_max=100)
    state = shared(breaker)
    redis_server.stop()
    for _ in range(3):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
    await eventually(lambda: not state.connected, what="outage noticed")
    breaker.trip()
    caplog.set_level(logging.WARNING, logger="redis_state")
    await asyncio.wait_for(state.stop(), BOUND)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stopped with")]
    # The failures (one entry, however many) and the operator's open (pybreaker's own
    # transition folded into it: one generation).
    assert lines == ["stopped with 2 circuit update(s) not written to Redis"]


async def test_a_clean_stop_writes_what_is_left_and_says_nothing(
    fleet: Fleet, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = await fleet(circuit_fail_max=100)
    state = shared(breaker)
    for _ in range(5):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
    caplog.set_level(logging.WARNING, logger="redis_state")
    await asyncio.wait_for(state.stop(), BOUND)
    assert redis_client.hget(CIRCUIT, "fail_counter") == b"5"
    assert state_log(caplog) == []


# A bounded outbox


async def test_a_long_outage_keeps_only_the_newest_updates_and_says_so(
    fleet: Fleet, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="redis_state")
    breaker = await fleet()
    state = shared(breaker)
    redis_server.stop()
    await eventually(lambda: not state.connected or state._outbox == [], what="idle")
    # Each trip writes a force-open (the first one's transition folded into it): MAX_OUTBOX
    # + 1000 entries in all, so the oldest 1000 go.
    for _ in range(MAX_OUTBOX + 1000):
        breaker.trip()
    assert len(state._outbox) == MAX_OUTBOX
    assert {entry[0] for entry in state._outbox} == {"force-open"}
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert dropped == [  # the first one, then one line a thousand
        "circuit updates dropped: 1 so far (Redis unreachable too long)",
        "circuit updates dropped: 1000 so far (Redis unreachable too long)",
    ]
    with contextlib.suppress(Exception):
        await asyncio.wait_for(state.stop(), BOUND)


# Settings the fleet shares


async def test_different_settings_are_named_in_the_warning(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    await fleet(circuit_fail_max=3, circuit_reset_timeout=15)
    caplog.set_level(logging.WARNING, logger="redis_state")
    await fleet(circuit_fail_max=3, circuit_reset_timeout=2.5)
    assert state_log(caplog) == [
        "circuit 'partner-offer' is shared with instances that use CIRCUIT_RESET_TIMEOUT=15; "
        "this one uses CIRCUIT_RESET_TIMEOUT=2.5: each trips on its own rule, either's trip "
        "opens the fleet, trials follow each one's reset timeout, and the fleet's window is "
        "the first one's"
    ]


async def test_the_same_settings_say_nothing(fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="redis_state")
    await fleet()
    await fleet()
    assert state_log(caplog) == []


# A record that can vanish


async def test_a_seeded_record_says_what_it_was_seeded_from(
    fleet: Fleet, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="redis_state")
    breaker = await fleet()
    await trip(breaker)
    await eventually(lambda: settled(breaker), what="trip written")
    redis_client.delete(CIRCUIT)
    await eventually(lambda: redis_client.hget(CIRCUIT, "state") == b"open", what="seeded")
    await eventually(lambda: state_log(caplog), what="logged")
    assert state_log(caplog) == [
        "the circuit's record in Redis was missing: seeded from this instance's view (open), now open"
    ]
    assert redis_client.hget(CIRCUIT, "fail_counter") == b"3"


async def test_an_older_record_is_seeded_with_this_instances_open_period(
    fleet: Fleet, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="redis_state")
    clock = FakeClock()
    breaker = await fleet(clock=clock, circuit_reset_timeout=10)
    await trip(breaker)
    await eventually(lambda: settled(breaker), what="trip written")
    clock.advance(3)
    version = int(redis_client.hget(CIRCUIT, "version") or 0)
    # In one transaction: between two commands the instance could seed the record, and the
    # second would then delete the open period it had just written.
    with redis_client.pipeline(transaction=True) as older:
        older.hset(CIRCUIT, mapping={"state": "closed", "version": version - 1, "fail_counter": 0})
        older.hdel(CIRCUIT, "opened_at")
        older.execute()
    await eventually(lambda: redis_client.hget(CIRCUIT, "state") == b"open", what="seeded")
    age_ms = int(time.time() * 1000) - int(redis_client.hget(CIRCUIT, "opened_at") or 0)
    assert 2900 <= age_ms < 4500  # three seconds into its open period, not a new one
    assert int(redis_client.hget(CIRCUIT, "version") or 0) == version
    assert breaker.seconds_until_trial() == pytest.approx(7, abs=0.01)
    await eventually(lambda: state_log(caplog), what="logged")
    assert "was older than this instance's: seeded" in state_log(caplog)[0]


async def test_a_record_lost_while_closed_is_seeded_closed_with_its_count(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    breaker = await fleet(circuit_fail_max=100)
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    await eventually(lambda: settled(breaker), what="written")
    redis_client.delete(CIRCUIT)
    await eventually(lambda: redis_client.exists(CIRCUIT), what="seeded")
    assert redis_client.hget(CIRCUIT, "state") == b"closed"
    assert redis_client.hget(CIRCUIT, "fail_counter") == b"1"
    assert breaker.state_name == "closed"
    assert breaker.fail_counter == 1
    # Checked once: from now on each flush is one write again, with no read of its own.
    await eventually(lambda: settled(breaker), what="settled")
    before, started = evalsha_calls(redis_client), time.monotonic()
    for _ in range(5):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
        await eventually(lambda: settled(breaker), what="written")
    assert evalsha_calls(redis_client) - before <= 5 + int(time.monotonic() - started) + 1


def test_the_pybreaker_storage_is_named_redis_and_counts_trial_successes() -> None:
    class NoClient:
        def register_script(self, script: str) -> object:
            return object()

    storage = SharedCircuitState(NoClient(), "x", 3, 1.0, 1.0)  # type: ignore[arg-type]
    assert storage.name == "redis"
    assert storage.state == pybreaker.STATE_CLOSED
    assert storage.counter == 0 and storage.success_counter == 0
    storage.increment_success_counter()
    storage.increment_success_counter()
    assert storage.success_counter == 2
    storage.reset_success_counter()
    assert storage.success_counter == 0
    assert storage.seconds_until_trial() == 0.0
    assert storage.connected is False


async def test_failures_counted_while_redis_was_unreachable_reach_it_when_it_returns(
    fleet: Fleet, road: Road, redis_client: redis.Redis
) -> None:
    breaker = await fleet(url=road.url, circuit_fail_max=10)
    state = shared(breaker)
    with pytest.raises(PartnerDown):
        await breaker.call(fail)
    await eventually(lambda: redis_client.hget(CIRCUIT, "fail_counter") == b"1", what="first failure written")
    road.cut()
    await eventually(lambda: not state.connected, what="outage noticed")
    for _ in range(2):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
    road.mend()
    await eventually(lambda: state.connected, what="back")
    # At least once: a batch whose reply was lost to a dead pooled connection can be counted twice.
    await eventually(lambda: written_failures(redis_client) >= 3, what="the outage's failures written")


async def test_after_an_outage_the_fleets_newer_generation_wins_at_once(
    fleet: Fleet, road: Road, redis_client: redis.Redis
) -> None:
    cut_off = await fleet(url=road.url, circuit_fail_max=10)
    other = await fleet(circuit_fail_max=10)
    state = shared(cut_off)
    road.cut()
    await eventually(lambda: not state.connected, what="outage noticed")
    other.trip()  # the fleet moves on while this instance cannot hear it
    await eventually(lambda: redis_client.hget(CIRCUIT, "state") == b"open", what="open written")
    with pytest.raises(PartnerDown):
        await cut_off.call(fail)  # based on the generation the fleet has left
    road.mend()
    # The moment it is connected again it has taken the fleet's state, not a second later.
    await eventually(lambda: state.connected, what="back")
    assert cut_off.state_name == "open"
    assert state._outbox == []
    await asyncio.sleep(0.1)
    assert redis_client.hget(CIRCUIT, "fail_counter") == b"0"


async def test_a_record_reset_during_an_outage_is_seeded_and_says_so(
    fleet: Fleet, redis_server: RedisServer, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="redis_state")
    breaker = await fleet()
    state = shared(breaker)
    redis_server.stop()
    await trip(breaker)
    await eventually(lambda: not state.connected, what="outage noticed")
    redis_server.restart()
    await eventually(lambda: state.connected, what="back")
    assert redis_client.hget(CIRCUIT, "state") == b"open"
    assert (
        "the circuit's record in Redis was reset while it was unreachable: "
        "seeded from this instance's view (open), now open"
    ) in state_log(caplog)


async def test_an_idle_instance_reads_redis_once_a_second(fleet: Fleet, redis_client: redis.Redis) -> None:
    breaker = await fleet()
    await eventually(lambda: settled(breaker), what="started")
    before, started, cpu = evalsha_calls(redis_client), time.monotonic(), time.process_time()
    await asyncio.sleep(2.1)
    reads = evalsha_calls(redis_client) - before
    elapsed = time.monotonic() - started
    assert 1 <= reads <= int(elapsed) + 1
    assert time.process_time() - cpu < 0.5  # it waits on pub/sub, it does not poll in a loop


async def test_each_flush_is_one_write_with_no_read_of_its_own(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    breaker = await fleet(circuit_fail_max=100)
    await eventually(lambda: settled(breaker), what="started")
    before, started = evalsha_calls(redis_client), time.monotonic()
    for _ in range(10):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
        await eventually(lambda: settled(breaker), what="written")
    calls = evalsha_calls(redis_client) - before
    refreshes = int(time.monotonic() - started) + 1
    assert 10 <= calls <= 10 + refreshes
    assert redis_client.hget(CIRCUIT, "fail_counter") == b"10"


async def test_stop_names_the_redis_tasks_it_abandoned(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = await fleet()
    state = shared(breaker)

    async def stubborn(*args: object, **kwargs: object) -> object:
        """A Redis call that swallows its cancellation, as redis-py 8.1 can on Python 3.11."""
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)
        return None

    state._apply = stubborn  # type: ignore[assignment]
    state._client.aclose = stubborn  # type: ignore[method-assign,assignment]  # closing hangs too
    state.increment_counter()
    await asyncio.sleep(0.1)
    caplog.set_level(logging.WARNING, logger="redis_state")
    started = time.monotonic()
    await asyncio.wait_for(state.stop(), BOUND)
    took = time.monotonic() - started
    assert 2.0 - 0.1 <= took < 2.0 + 0.5
    lines = state_log(caplog)
    assert lines[0] == "stopped with 1 circuit update(s) not written to Redis"
    assert len(lines) == 2
    assert lines[1].startswith("stopped with 1 Redis task(s) still running after 1.")
    assert lines[1].endswith("s: abandoned")


async def test_a_trip_made_while_the_record_is_being_seeded_is_not_lost(
    fleet: Fleet, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """The seed's reply settles only what the seed carried: writes queued during its round trip
    are still sent, and the trip they record stands."""
    with delay_proxy(redis_server.port, delay=0.08) as url:  # a round trip within REDIS_TIMEOUT
        breaker = await fleet(url=url)
        await eventually(lambda: settled(breaker), what="started")
        redis_client.delete(CIRCUIT)
        # The seed has reached Redis; its reply is still 80 ms away when the circuit trips here.
        await eventually(lambda: redis_client.exists(CIRCUIT), what="seeded")
        await trip(breaker)
        assert breaker.state_name == "open"
        # Every write sent and answered, the seed's reply included: the trip still stands.
        await eventually(lambda: settled(breaker), what="nothing left to write")
        assert breaker.state_name == "open"
        assert redis_client.hget(CIRCUIT, "state") == b"open"


async def test_the_background_work_runs_as_one_task_named_for_what_it_does(fleet: Fleet) -> None:
    before = {t for t in asyncio.all_tasks() if t.get_name() == "redis-state"}
    breaker = await fleet()
    named = {t for t in asyncio.all_tasks() if t.get_name() == "redis-state"} - before
    assert len(named) == 1
    await shared(breaker).stop()
    assert all(task.done() for task in named)


async def test_a_state_that_never_started_stops_at_once(redis_server: RedisServer) -> None:
    state = SharedCircuitState(single_server(redis_server.url), "never-started", 3, 1.0, 1.0)
    await asyncio.wait_for(state.stop(), 1.0)


async def test_a_redis_error_while_claiming_the_trial_refuses_it_here_and_says_why(
    fleet: Fleet, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = await open_for_a_trial(fleet, redis_client)
    state = shared(breaker)

    error = redis.exceptions.ConnectionError("Connection refused")

    async def unreachable(*args: object, **kwargs: object) -> object:
        raise error

    state._lease._acquire = unreachable  # type: ignore[assignment]
    caplog.set_level(logging.WARNING, logger="redis_state")
    assert await state.acquire_trial() == "busy"
    assert not state.connected
    assert state_log(caplog)[0] == (
        f"Redis lost ({error!r}): the circuit carries on with this process's state"
    )
    # Lost from a request's call: the background work starts again and reconnects.
    await eventually(lambda: state.connected, what="reconnected")
    assert len([t for t in asyncio.all_tasks() if t.get_name() == "redis-state" and not t.done()]) == 1


async def test_a_redis_error_while_handing_back_the_lease_says_why(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = await fleet()
    state = shared(breaker)

    error = redis.exceptions.ConnectionError("Connection reset by peer")

    async def unreachable(*args: object, **kwargs: object) -> object:
        raise error

    state._lease._release = unreachable  # type: ignore[assignment]
    caplog.set_level(logging.WARNING, logger="redis_state")
    state.release_trial()
    await eventually(lambda: not state.connected, what="outage noticed")
    assert state_log(caplog)[0].startswith(f"Redis lost ({error!r})")
    await eventually(lambda: state.connected, what="reconnected")
    assert len([t for t in asyncio.all_tasks() if t.get_name() == "redis-state" and not t.done()]) == 1


async def test_a_half_open_circuit_lost_from_redis_starts_a_full_open_period(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    breaker = await open_for_a_trial(fleet, redis_client, circuit_reset_timeout=10)
    trial = asyncio.Event()
    finish = asyncio.Event()

    async def slow_trial() -> str:
        trial.set()
        await finish.wait()
        return "hot"

    probing = asyncio.create_task(breaker.call(slow_trial))
    await reached(trial, probing, "the trial")
    assert breaker.state_name == "half-open"
    redis_client.delete(CIRCUIT)
    await eventually(lambda: redis_client.hget(CIRCUIT, "state") == b"open", what="seeded open")
    age_ms = int(time.time() * 1000) - int(redis_client.hget(CIRCUIT, "opened_at") or 0)
    assert 0 <= age_ms < 900  # from now (not a second back): the trial's lease went with the record
    finish.set()
    with contextlib.suppress(NotPermitted, CutShort):
        await asyncio.wait_for(probing, BOUND)


async def test_a_batch_cut_off_on_its_way_is_sent_again_with_what_came_meanwhile(
    fleet: Fleet, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    slow_road = Road(redis_server.port, delay=0.05)
    slow_road.mend()
    try:
        breaker = await fleet(url=slow_road.url, circuit_fail_max=100)
        state = shared(breaker)
        await eventually(lambda: settled(breaker), what="started")
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
        await eventually(lambda: bool(state._in_flight), what="the first failure on its way")
        for _ in range(2):
            with pytest.raises(PartnerDown):
                await breaker.call(fail)
        slow_road.cut()
        await eventually(lambda: not state.connected, what="outage noticed")
        slow_road.mend()
        await eventually(lambda: state.connected, what="back")
        await eventually(lambda: written_failures(redis_client) >= 3, what="all three written")
    finally:
        slow_road.cut()


async def test_a_snapshot_saying_the_record_is_gone_is_checked_before_anything_is_seeded(
    fleet: Fleet, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="redis_state")
    breaker = await fleet()
    await eventually(lambda: settled(breaker), what="started")
    await eventually(lambda: subscribed(redis_client), what="listening")
    version = redis_client.hget(CIRCUIT, "version")
    assert redis_client.publish(CHANNEL, "closed,0,,0,0,0,0") == 1  # a snapshot of no record at all
    await asyncio.sleep(0.3)
    assert state_log(caplog) == []  # read again, found whole: nothing seeded
    assert redis_client.hget(CIRCUIT, "version") == version
    assert not redis_client.hexists(CIRCUIT, "seeded")
    await trip(breaker)  # and the background work goes on
    await eventually(lambda: redis_client.hget(CIRCUIT, "state") == b"open", what="trip written")


async def test_a_snapshot_older_than_one_already_heard_is_ignored_and_one_as_new_is_taken(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    breaker = await fleet(circuit_fail_max=10)
    for _ in range(2):
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
    await eventually(lambda: settled(breaker), what="written")
    await asyncio.sleep(0.05)
    version, seq = (
        int(redis_client.hget(CIRCUIT, "version") or 0),
        int(redis_client.hget(CIRCUIT, "seq") or 0),
    )
    await eventually(lambda: subscribed(redis_client), what="listening")
    assert (
        redis_client.publish(CHANNEL, f"closed,7,,{version},1,{seq - 1},0") == 1
    )  # made before the last change
    await asyncio.sleep(0.2)
    assert breaker.fail_counter == 2
    redis_client.publish(CHANNEL, f"closed,7,,{version},1,{seq},0")  # as new as the last one heard
    await eventually(lambda: breaker.fail_counter == 7, what="the snapshot taken")


async def test_an_outcome_counts_when_nothing_changed_meanwhile_even_across_refreshes(fleet: Fleet) -> None:
    breaker = await fleet(circuit_fail_max=10)

    async def slow_failure() -> str:
        await asyncio.sleep(1.3)  # a refresh lands while the call is out
        raise PartnerDown("late 500")

    with pytest.raises(PartnerDown):
        await asyncio.wait_for(breaker.call(slow_failure), BOUND)
    assert breaker.fail_counter == 1


async def test_failures_not_yet_written_still_count_when_redis_answers_an_earlier_batch(
    fleet: Fleet, redis_server: RedisServer
) -> None:
    slow_road = Road(redis_server.port, delay=0.05)
    slow_road.mend()
    try:
        breaker = await fleet(url=slow_road.url, circuit_fail_max=5)
        state = shared(breaker)
        await eventually(lambda: settled(breaker), what="started")
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
        await eventually(lambda: bool(state._in_flight), what="the first batch on its way")
        for _ in range(2):
            with pytest.raises(PartnerDown):
                await breaker.call(fail)
        # The first batch's reply (one failure) is heard; the next two are on their way.
        await eventually(
            lambda: state._in_flight and state._in_flight[0][2] == 2, what="the second batch sent"
        )
        assert breaker.fail_counter == 3
        for _ in range(2):
            with pytest.raises(PartnerDown):
                await breaker.call(fail)
        assert breaker.state_name == "open"  # five here, whatever Redis has heard so far
    finally:
        slow_road.cut()


async def test_a_trip_not_yet_sent_is_not_undone_by_the_reply_to_an_earlier_batch(
    fleet: Fleet, redis_server: RedisServer
) -> None:
    slow_road = Road(redis_server.port, delay=0.05)
    slow_road.mend()
    try:
        breaker = await fleet(url=slow_road.url, circuit_fail_max=3)
        state = shared(breaker)
        await eventually(lambda: settled(breaker), what="started")
        with pytest.raises(PartnerDown):
            await breaker.call(fail)
        await eventually(lambda: bool(state._in_flight), what="the first failure on its way")
        for _ in range(2):
            with pytest.raises(PartnerDown):
                await breaker.call(fail)
        assert breaker.state_name == "open"  # tripped here; the transition waits in the outbox
        # Redis answered the first batch (one failure, still closed) while the trip was unsent.
        await eventually(lambda: len(state._in_flight) == 2, what="the failures and the trip sent")
        assert breaker.state_name == "open"
        await eventually(lambda: settled(breaker), what="the trip written")
        assert breaker.state_name == "open"
    finally:
        slow_road.cut()


async def test_a_stop_leaves_no_error_behind_on_the_event_loop(fleet: Fleet) -> None:
    with errors_reported_on_the_loop() as reported:
        breaker = await fleet()
        await eventually(lambda: settled(breaker), what="started")
        await asyncio.sleep(0.1)
        await asyncio.wait_for(shared(breaker).stop(), BOUND)
        await asyncio.sleep(0.2)  # the subscription's close completes in the background
        gc.collect()
        await asyncio.sleep(0)
        assert reported == []

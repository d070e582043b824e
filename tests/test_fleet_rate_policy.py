"""The rate policy keeps the fleet's promises at its edges: a Redis outage, an operator's
reset, a rollout that changes the window or the policy, lost counts, a lost record, and a
Retry-After heard while Redis was away. Every test runs against a real redis-server."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterator

import pytest
import redis

from circuit_breaker import AsyncCircuitBreaker, NotPermitted, WindowCounts
from service.partner_client import PartnerFailure
from service.redis_state import ALONE_JITTER
from tests.breakers import CIRCUIT, eventually, shared
from tests.conftest import Fleet
from tests.fake_clock import FakeClock
from tests.partner_stand_ins import PartnerDown, fail, ok
from tools.processes import RedisServer

WINDOW = "{partner-offer}:window"
RATE: dict[str, object] = {
    "circuit_policy": "rate",
    "circuit_window": 10.0,
    "circuit_min_calls": 10,
    "circuit_failure_rate": 0.5,
}
# Long enough that no trial comes by itself while a test looks.
RESET_TIMEOUT = 30.0


@contextlib.contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """Redis stops answering (its process is stopped, its sockets stay open), as a stalled
    host would, then carries on where it was."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


async def outcome(breaker: AsyncCircuitBreaker, call: Callable[[], Awaitable[str]]) -> str:
    try:
        await breaker.call(call)
    except NotPermitted:
        return "not-permitted"
    except (PartnerDown, PartnerFailure):
        return "failure"
    return "success"


def written(*breakers: AsyncCircuitBreaker) -> Callable[[], bool]:
    """Every call counted and every change made on `breakers` has been answered by Redis."""

    def check() -> bool:
        return all(
            not ((shared(b)._window and shared(b)._window.unsent.calls) or shared(b)._writes_pending())
            and shared(b).connected
            for b in breakers
        )

    return check


def fleet_window(client: redis.Redis) -> tuple[int, int]:
    """The calls and failures in the fleet's buckets."""
    totals = [0, 0, 0]
    for field, count in client.hgetall(WINDOW).items():
        totals[int(field.decode().rsplit(":", 1)[1]) - 1] += int(count)
    return totals[0], totals[1]


def partner_busy(seconds: float) -> Callable[[], Awaitable[str]]:
    async def call() -> str:
        raise PartnerFailure("partner-status-503", retry_after=seconds)

    return call


async def held_open_while_redis_is_out(a: AsyncCircuitBreaker) -> None:
    """Three failures, each asking for 20 s: the third opens `a`'s circuit, held that long,
    while Redis (frozen by the caller) does not answer; `a` notices that it lost Redis."""
    for _ in range(3):
        await outcome(a, partner_busy(20))
    assert a.state_name == "open"
    await eventually(lambda: not shared(a).connected, within=5, what="a lost Redis")


async def test_a_trip_decided_while_redis_is_unreachable_opens_the_fleet_when_it_answers(
    fleet: Fleet, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    settings = {**RATE, "circuit_reset_timeout": RESET_TIMEOUT}
    a, b = await fleet(**settings), await fleet(**settings)
    with frozen(redis_server):
        await outcome(a, ok)  # its flush finds Redis silent: a decides alone from then on
        await eventually(lambda: not shared(a).connected, within=5, what="a lost Redis")
        for _ in range(15):
            await outcome(a, fail)
        assert a.state_name == "open"
    await eventually(written(a), within=5, what="a's outage written")
    await eventually(lambda: b.state_name == "open", within=5, what="b heard the trip")
    assert redis_client.hget(CIRCUIT, "state") == b"open"
    assert a.state_name == "open"
    assert [await outcome(a, fail) for _ in range(5)] == ["not-permitted"] * 5


async def test_calls_made_while_redis_is_unreachable_join_the_fleets_window_when_it_answers(
    fleet: Fleet, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """Under min_calls alone, a's outage calls still count for the fleet once Redis is back:
    with b's calls after it they reach min_calls and trip the fleet."""
    settings = {**RATE, "circuit_reset_timeout": RESET_TIMEOUT}
    a, b = await fleet(**settings), await fleet(**settings)
    with frozen(redis_server):
        await outcome(a, ok)
        await eventually(lambda: not shared(a).connected, within=5, what="a lost Redis")
        for call in [fail] * 5 + [ok] * 3:
            await outcome(a, call)  # 9 calls, 5 failures: under min_calls, a stays closed
        assert a.state_name == "closed"
    await eventually(written(a), within=5, what="a's outage calls written")
    assert fleet_window(redis_client) == (9, 5)  # the successes too: the share stays true
    await outcome(b, fail)  # 10 calls, 6 failures across the fleet
    await eventually(lambda: a.state_name == "open", within=5, what="the fleet's trip heard on a")


async def test_an_operators_reset_starts_the_fleets_window_afresh(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    a = await fleet(**RATE)
    for call in [ok] * 5 + [fail] * 4:  # 9 calls, 4 failures: under min_calls
        await outcome(a, call)
    await eventually(written(a), what="the calls written")
    assert fleet_window(redis_client) == (9, 4)
    a.reset()
    await eventually(written(a), what="the reset written")
    assert fleet_window(redis_client) == (0, 0)
    await outcome(a, fail)  # 1 call, 1 failure: under min_calls
    await eventually(written(a), what="the failure written")
    assert fleet_window(redis_client) == (1, 1)
    assert redis_client.hget(CIRCUIT, "state") == b"closed"
    assert a.state_name == "closed"


async def test_an_operators_reset_made_on_another_instance_starts_this_ones_window_afresh(
    fleet: Fleet,
) -> None:
    """A reset of a closed circuit changes its generation, not its state: heard from another
    instance, it still starts the window afresh here."""
    a, b = await fleet(**RATE), await fleet(**RATE)
    for call in [ok] * 5 + [fail] * 4:  # 9 calls, 4 failures: under min_calls
        await outcome(a, call)
    await eventually(written(a), what="the calls written")
    assert a.window_counts() == WindowCounts(9, 4, 0)
    b.reset()
    await eventually(lambda: a.window_counts() == WindowCounts(), within=5, what="a's window started afresh")
    assert a.state_name == "closed"


@pytest.mark.parametrize("policy", ["consecutive", "rate"])
async def test_after_its_own_reset_an_instance_writes_on_the_new_version(
    fleet: Fleet, redis_client: redis.Redis, policy: str
) -> None:
    """Pub/sub brings the reset's own snapshot while the write's reply is on its way, or
    after it: either way the next failure is based on the version the reset made."""
    a = await fleet(circuit_policy=policy, circuit_fail_max=3, circuit_min_calls=100)
    for attempt in range(12):
        a.reset()
        await eventually(written(a), what="the reset written")
        await outcome(a, fail)
        await eventually(written(a), what="the failure written")
        counter = redis_client.hget(CIRCUIT, "fail_counter")
        assert counter == b"1", f"attempt {attempt}: Redis's count is {counter!r} after one failure"


async def test_counts_waiting_for_the_flush_survive_a_lost_pub_sub_connection(
    fleet: Fleet, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="redis_state")
    a = await fleet(**{**RATE, "circuit_min_calls": 1000})
    await eventually(lambda: any("P" in c["flags"] for c in redis_client.client_list()), what="a subscribed")
    for _ in range(18):
        await outcome(a, ok)
    assert redis_client.client_kill_filter(_type="pubsub") == 1

    def noticed() -> bool:
        return any("pub/sub" in r.getMessage() or "Redis lost" in r.getMessage() for r in caplog.records)

    await eventually(noticed, within=5, what="the lost connection noticed")
    for _ in range(3):  # while it reconnects
        await outcome(a, fail)
    await eventually(written(a), within=5, what="the calls written")
    assert fleet_window(redis_client) == (21, 3)


async def test_instances_with_different_windows_share_one_window_and_say_so(
    fleet: Fleet, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    long = await fleet(**{**RATE, "circuit_window": 60.0})
    short = await fleet(**{**RATE, "circuit_window": 10.0})
    for _ in range(6):
        await outcome(long, fail)
    await eventually(written(long), what="the long window's calls written")
    for call in [fail] * 4 + [ok]:  # 11 calls, 10 failures in the fleet
        await outcome(short, call)
    await eventually(lambda: redis_client.hget(CIRCUIT, "state") == b"open", what="the fleet tripped")
    await eventually(lambda: long.state_name == short.state_name == "open", what="both heard the trip")
    assert any(
        "CIRCUIT_WINDOW=60" in r.getMessage() and "CIRCUIT_WINDOW=10" in r.getMessage()
        for r in caplog.records
    )


async def test_a_window_lost_with_the_record_is_counted_again_from_the_instances(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    settings = {**RATE, "circuit_min_calls": 30}
    a, b = await fleet(**settings), await fleet(**settings)
    for breaker in (a, b):
        for call in [ok, fail] * 5:  # 20 calls and 10 failures in all: under min_calls
            await outcome(breaker, call)
    await eventually(written(a, b), what="the calls written")
    assert fleet_window(redis_client) == (20, 10)
    redis_client.flushall()
    await eventually(
        lambda: fleet_window(redis_client) == (20, 10), within=5, what="the window counted again"
    )
    assert redis_client.hget(CIRCUIT, "state") == b"closed"


async def test_a_window_counted_again_in_part_does_not_trip_until_the_next_call(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    """Found by the fleet model: the instances add their calls again one by one, and the
    first to arrive tripped the circuit on its own share (10 calls, half failed) although
    the whole window (20 calls, a quarter failed) never would. A call's end decides."""
    a = await fleet(**{**RATE, "circuit_reset_timeout": RESET_TIMEOUT})
    b = await fleet(**{**RATE, "circuit_reset_timeout": RESET_TIMEOUT})
    for _ in range(10):
        await outcome(b, ok)
    await eventually(written(b), what="b's calls written first")
    for call in [ok] * 5 + [fail] * 5:
        await outcome(a, call)
    await eventually(written(a, b), what="the calls written")
    assert fleet_window(redis_client) == (20, 5)
    await shared(b).stop()  # b's calls never come back: what a adds is a part of the window
    redis_client.flushall()
    await eventually(lambda: fleet_window(redis_client) == (10, 5), within=5, what="a's calls counted again")
    await eventually(written(a), what="all written")
    assert redis_client.hget(CIRCUIT, "state") == b"closed"
    await outcome(a, fail)  # the next call decides, on the window the fleet has now
    await eventually(lambda: redis_client.hget(CIRCUIT, "state") == b"open", what="the trip")


async def test_a_mixed_fleet_opens_on_either_policys_trip_and_warns_in_settings_names(
    fleet: Fleet, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    consecutive = await fleet(circuit_policy="consecutive", circuit_fail_max=3, circuit_reset_timeout=0.5)
    rate = await fleet(**{**RATE, "circuit_reset_timeout": 0.5})
    warning = [r.getMessage() for r in caplog.records if "CIRCUIT_POLICY" in r.getMessage()]
    assert len(warning) == 1 and "2147483647" not in warning[0], warning
    assert "CIRCUIT_POLICY=consecutive" in warning[0] and "CIRCUIT_POLICY=rate" in warning[0]
    # The rate instance's window trips the fleet.
    for call in [fail] * 6 + [ok] * 4:
        await outcome(rate, call)
    await eventually(lambda: consecutive.state_name == "open", what="the window's trip heard")
    rate.reset()
    await eventually(lambda: consecutive.state_name == "closed" and written(rate)(), what="the reset heard")
    # The consecutive instance's failures in a row trip the fleet; the rate instance's own
    # successes meanwhile do not undo it.
    for _ in range(3):
        await outcome(consecutive, fail)
    await eventually(lambda: rate.state_name == "open", what="the count's trip heard")
    await eventually(written(consecutive, rate), what="all written")
    assert redis_client.hget(CIRCUIT, "state") == b"open"


async def test_a_retry_after_heard_during_an_outage_does_not_outlive_a_later_success(
    fleet: Fleet, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    clock = FakeClock()
    a = await fleet(circuit_reset_timeout=1.0, clock=clock)
    b = await fleet(circuit_reset_timeout=1.0)
    with frozen(redis_server):
        await held_open_while_redis_is_out(a)
        clock.advance(24)  # the hold is over: a's trial succeeds
        assert await outcome(a, ok) == "success"
        assert a.state_name == "closed"
    await eventually(written(a), within=5, what="a's outage written")
    await eventually(lambda: b.state_name == "closed" and shared(b).connected, within=5, what="b in step")
    assert redis_client.hget(CIRCUIT, "state") == b"closed"
    assert a.state_name == "closed"
    assert await outcome(b, ok) == "success"


async def test_a_retry_after_heard_during_an_outage_counts_from_when_it_was_heard(
    fleet: Fleet, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    clock = FakeClock()
    a = await fleet(circuit_reset_timeout=1.0, clock=clock)
    with frozen(redis_server):
        await held_open_while_redis_is_out(a)
        clock.advance(15)  # 5 s of the hold left
    await eventually(written(a), within=5, what="a's outage written")
    hold = int(redis_client.hget(CIRCUIT, "hold_ms") or 0)
    assert 0 < hold <= 6000, f"the hold in Redis lasts {hold} ms from its start"


async def test_a_retry_after_heard_during_an_outage_holds_only_the_open_period_it_was_heard_in(
    fleet: Fleet, redis_server: RedisServer
) -> None:
    clock = FakeClock()
    a = await fleet(circuit_reset_timeout=1.0, clock=clock)
    with frozen(redis_server):
        await held_open_while_redis_is_out(a)
        clock.advance(24)  # the hold is over: a's trial succeeds
        assert await outcome(a, ok) == "success"
        for _ in range(3):  # a new open period, with no Retry-After
            await outcome(a, fail)
        assert a.state_name == "open"
        clock.advance(1.0 * (1 + ALONE_JITTER) + 0.1)  # the reset timeout, alone: no hold
        assert await outcome(a, ok) == "success"
        assert a.state_name == "closed"


async def test_calls_made_during_an_outage_longer_than_the_window_are_not_added_when_redis_answers(
    fleet: Fleet, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """Counts wait for Redis while they are inside the window, no longer: the fleet's trip
    is about the last window's calls."""
    clock = FakeClock()
    a = await fleet(clock=clock, **{**RATE, "circuit_reset_timeout": RESET_TIMEOUT})
    with frozen(redis_server):
        await eventually(lambda: not shared(a).connected, within=5, what="a lost Redis")
        for call in [fail] * 5 + [ok] * 3:
            await outcome(a, call)
        clock.advance(11)  # the outage outlasts the 10 s window
    await eventually(written(a), within=5, what="a back on Redis with nothing left to send")
    assert fleet_window(redis_client) == (0, 0)


@pytest.mark.parametrize(
    "field, value",
    [
        ("hold_ms", b"abc"),
        ("version", b"x"),
        ("state", b"weird"),
        ("opened_at", b"soon"),
        ("seq", b"x"),
        ("fail_counter", b"7" * 30 + b"x" * 200),  # a value that long is named by its start
    ],
)
async def test_an_unreadable_record_is_logged_once_and_seeded_again(
    fleet: Fleet, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture, field: str, value: bytes
) -> None:
    a = await fleet(circuit_reset_timeout=RESET_TIMEOUT)
    redis_client.hset(CIRCUIT, field, value)

    def unreadable() -> list[str]:
        return [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]

    await eventually(unreadable, within=5, what="the unreadable record logged")
    assert redis_client.hget(CIRCUIT, field) != value
    assert len(unreadable()) == 1, unreadable()
    assert f"{field}={value.decode()[:40]!r}" in unreadable()[0], unreadable()
    # The instance still hears the fleet.
    redis_client.hset(CIRCUIT, "hold_ms", 1)
    a.trip()
    await eventually(lambda: redis_client.hget(CIRCUIT, "state") == b"open", what="the trip written")
    assert a.state_name == "open" and shared(a).connected


async def test_an_unreadable_record_redis_will_not_let_it_replace_leaves_it_deciding_alone_until_it_can(
    fleet: Fleet, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that refuses writes (its replicas out of reach, `min-replicas-to-write`) refuses
    the record written over an unreadable one: the instance says why, decides alone, and
    replaces the record once Redis takes writes again."""
    a = await fleet(circuit_reset_timeout=RESET_TIMEOUT)
    with redis_client.pipeline(transaction=True) as at_once:
        at_once.hset(CIRCUIT, "hold_ms", b"abc")
        at_once.config_set("min-replicas-to-write", 1)
        at_once.execute()

    def refused() -> list[str]:
        return [r.getMessage() for r in caplog.records if "cannot be replaced" in r.getMessage()]

    await eventually(refused, within=5, what="the refused replacement logged")
    assert "the circuit's record in Redis cannot be replaced: NOREPLICAS" in refused()[0], refused()
    assert not shared(a).connected
    redis_client.config_set("min-replicas-to-write", 0)
    await eventually(lambda: shared(a).connected, within=5, what="a back on Redis")
    assert redis_client.hget(CIRCUIT, "hold_ms") != b"abc"
    assert redis_client.hget(CIRCUIT, "state") == b"closed"


async def test_a_seeding_id_that_is_not_utf_8_is_read_as_an_id(
    fleet: Fleet, redis_client: redis.Redis
) -> None:
    """The id is only compared with the last one heard: any bytes will do, and a snapshot
    that carries odd ones is heard like any other."""
    a, b = await fleet(circuit_reset_timeout=RESET_TIMEOUT), await fleet(circuit_reset_timeout=RESET_TIMEOUT)
    redis_client.hset(CIRCUIT, "seeded", b"\xff\xfe")
    await outcome(b, fail)  # a failure in a row: its snapshot, with that id, reaches a
    await eventually(lambda: a.fail_counter == 1, within=5, what="a heard b's failure")


async def test_a_huge_hold_read_back_is_capped(fleet: Fleet, redis_client: redis.Redis) -> None:
    a = await fleet(circuit_reset_timeout=1.0, circuit_retry_after_max=60.0)
    b = await fleet(circuit_reset_timeout=1.0, circuit_retry_after_max=60.0)
    a.trip()
    await eventually(lambda: b.state_name == "open", what="the trip heard")
    redis_client.hset(CIRCUIT, "hold_ms", 10**12)
    a.trip()  # a change everyone hears, with the huge hold in its snapshot
    await eventually(lambda: shared(b)._hold > 0, within=3, what="the hold heard")
    assert b.seconds_until_trial() <= 60.0


async def test_a_retry_after_hold_survives_a_lost_record(fleet: Fleet, redis_client: redis.Redis) -> None:
    """Found by the fleet model: a record seeded again carried no hold, and the fleet's trial
    came at the reset timeout instead of when the partner said."""
    a, b = await fleet(circuit_reset_timeout=1.0), await fleet(circuit_reset_timeout=1.0)
    for _ in range(3):  # each a failure; the third opens the circuit, held for 60 s
        await outcome(a, partner_busy(60))
    await eventually(lambda: b.seconds_until_trial() > 50, what="the hold heard")
    await eventually(written(a, b), what="all written")
    held = int(redis_client.hget(CIRCUIT, "hold_ms") or 0)
    assert held >= 59_000
    redis_client.flushall()
    await eventually(lambda: redis_client.hget(CIRCUIT, "state") == b"open", within=5, what="seeded again")
    seeded = int(redis_client.hget(CIRCUIT, "hold_ms") or 0)
    assert abs(seeded - held) <= 1, f"the hold seeded again is {seeded} ms, {held} ms before"  # ms, rounded
    await eventually(written(a, b), what="all written")
    for breaker in (a, b):
        assert breaker.seconds_until_trial() > 50

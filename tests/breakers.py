"""Helpers for tests that drive breakers in this process: trip one, wait for a condition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import redis

from circuit_breaker import AsyncCircuitBreaker, CutShort, NotPermitted
from service.redis_state import REFRESH_INTERVAL, SharedCircuitState
from tests.partner_stand_ins import PartnerDown, fail

# The keys of the offer service's breaker in Redis (the hash tag is its name).
CIRCUIT = "{partner-offer}:circuit"
TRIAL = "{partner-offer}:trial"
CHANNEL = "{partner-offer}:changes"


def shared(breaker: AsyncCircuitBreaker) -> SharedCircuitState:
    """The breaker's shared state, for a test that made it with a Redis client."""
    assert breaker.shared is not None
    return breaker.shared


async def trip(breaker: AsyncCircuitBreaker, alone: bool = False) -> None:
    """Fail `fail_max` calls through `breaker`. In a fleet some may be refused once another
    instance's trip lands; `alone`: every call reaches the partner and the circuit opens here."""
    for _ in range(breaker.state_machine.fail_max):
        with pytest.raises(PartnerDown if alone else (PartnerDown, NotPermitted, CutShort)):
            await breaker.call(fail)
    if alone:
        assert breaker.state_name == "open"


# What the shared state does, it does within a refresh (REFRESH_INTERVAL, 1 s) once its
# event loop runs: a write, a read, a message heard. Ten of them leave room for a machine
# so loaded that the loop itself waits for the CPU; a test passes as soon as it holds.
PATIENCE = 10 * REFRESH_INTERVAL


async def eventually(
    condition: Callable[[], object], within: float = PATIENCE, what: str = "condition"
) -> float:
    """Poll `condition` on the event loop; return how long it took, or fail after `within` s
    saying what it last returned: the failure explains itself without a rerun."""
    started = time.monotonic()
    polls = 0
    while not (seen := condition()):
        polls += 1
        if time.monotonic() - started > within:
            raise AssertionError(f"{what} not met within {within}s (last seen {seen!r}, {polls} polls)")
        await asyncio.sleep(0.002)
    return time.monotonic() - started


async def reached(event: asyncio.Event, call: asyncio.Task[object], what: str = "the call") -> None:
    """Wait until the guarded function sets `event`, or fail saying how `call` ended instead
    (refused, say, with the circuit still open): a bare TimeoutError said nothing."""
    waiting = asyncio.ensure_future(event.wait())
    done, _ = await asyncio.wait({waiting, call}, timeout=PATIENCE, return_when=asyncio.FIRST_COMPLETED)
    if waiting in done:
        return
    waiting.cancel()
    if call in done:
        if call.cancelled():
            ended = "cancelled"
        else:
            ended = repr(call.exception()) if call.exception() else f"returned {call.result()!r}"
        raise AssertionError(f"{what} never reached the partner: it ended first, {ended}")
    raise AssertionError(f"{what} did not reach the partner within {PATIENCE}s")


def script_calls(client: redis.Redis) -> int:
    """Round trips the breakers made to `client`'s Redis: each is one EVALSHA. (Redis's
    `total_commands_processed` also counts the commands run inside a script.)"""
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))

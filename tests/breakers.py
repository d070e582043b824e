"""Helpers for tests that drive breakers in this process: trip one, wait for a condition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import redis

from circuit_breaker import AsyncCircuitBreaker, CutShort, NotPermitted
from service.redis_state import SharedCircuitState
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


async def eventually(condition: Callable[[], object], within: float = 3.0, what: str = "condition") -> float:
    """Poll `condition` on the event loop; return how long it took, or fail after `within` s."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            raise AssertionError(f"{what} not met within {within}s")
        await asyncio.sleep(0.002)
    return time.monotonic() - started


def script_calls(client: redis.Redis) -> int:
    """Round trips the breakers made to `client`'s Redis: each is one EVALSHA. (Redis's
    `total_commands_processed` also counts the commands run inside a script.)"""
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))

"""What a new user does with `circuit_breaker.py` copied alone beside pybreaker, and the traps a
copy into production would meet, each checked. Run by tests/test_copy.py in a fresh
virtualenv that holds pybreaker and nothing else of this project; it imports nothing else.

Prints one `ok <case>` line per case and exits non-zero at the first that does not hold.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys

import pybreaker

from circuit_breaker import (
    RATE_POLICY_FAIL_MAX,
    AsyncCircuitBreaker,
    CutShort,
    LogListener,
    NotPermitted,
    RatePolicy,
)

COLD = "cold"


class Down(Exception):
    """The dependency failed."""


class Clock:
    """Moved by hand instead of sleeping through a reset timeout."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def fetch(sku: str, *, fail: bool = False) -> str:
    if fail:
        raise Down(sku)
    return f"hot {sku}"


def check(case: str, condition: bool) -> None:
    if not condition:
        sys.exit(f"FAILED {case}")
    print(f"ok {case}")


async def the_copy_example() -> None:
    """Two flaky dependencies: one guarded by failures in a row, one by the failure rate."""
    offers = AsyncCircuitBreaker(
        pybreaker.CircuitBreaker(fail_max=3, reset_timeout=15, listeners=[LogListener()], name="offers")
    )
    prices = AsyncCircuitBreaker(
        pybreaker.CircuitBreaker(fail_max=RATE_POLICY_FAIL_MAX, listeners=[LogListener()], name="prices"),
        policy=RatePolicy(window=10, min_calls=4, failure_rate=0.5),
    )

    @prices(fallback=lambda exc: COLD)
    async def price(sku: str, fail: bool = False) -> str:
        return await fetch(sku, fail=fail)

    check("call takes the function and its arguments", await offers.call(fetch, "a") == "hot a")
    check("a keyword argument reaches the function", await offers.call(fetch, "a", fail=False) == "hot a")
    for _ in range(3):
        await offers.call(fetch, "a", fail=True, fallback=lambda exc: COLD)
    check("three failures in a row open the circuit", offers.state == "open")
    check(
        "an open circuit gives the fallback", await offers.call(fetch, "a", fallback=lambda exc: COLD) == COLD
    )
    results = [await price("b", fail=i % 2 == 0) for i in range(4)]
    check("the decorator's fallback answers a failure", results == [COLD, "hot b", COLD, "hot b"])
    check("half the calls failing opens the rate policy's circuit", prices.state == "open")


async def trap_1_an_unreported_trial_frees_its_place() -> None:
    clock = Clock()
    breaker = AsyncCircuitBreaker(pybreaker.CircuitBreaker(fail_max=1, reset_timeout=15), clock=clock)
    breaker.trip()
    clock.now += 15
    permit = await breaker.admit()  # the trial, never reported: an early return
    check("a second caller waits while the trial is young", await _refused(breaker) == "trial-in-flight")
    clock.now += breaker.max_trial_seconds
    check("the silent trial counts as a failure after its bound", await _refused(breaker) == "circuit-open")
    clock.now += 15
    check("the next trial is permitted", await breaker.call(fetch, "c") == "hot c")
    check("and closes the circuit", breaker.state == "closed")
    del permit


async def _refused(breaker: AsyncCircuitBreaker) -> str:
    try:
        permit = await breaker.admit()
    except NotPermitted as exc:
        return exc.reason
    permit.release()
    return "permitted"


async def trap_1_a_dropped_trial_is_logged(records: list[logging.LogRecord]) -> None:
    clock = Clock()
    breaker = AsyncCircuitBreaker(pybreaker.CircuitBreaker(name="dropped", reset_timeout=15), clock=clock)
    for _ in range(2):
        breaker.trip()
        clock.now += 15
        await breaker.admit()  # the trial's permit, dropped on the floor
        clock.now += breaker.max_trial_seconds
    gc.collect()
    dropped = [r for r in records if r.getMessage().startswith("dropped: a trial's permit was dropped")]
    check("a trial's permit collected unreported is logged once", len(dropped) == 1)


def trap_2_a_rate_policy_needs_its_fail_max() -> None:
    try:
        AsyncCircuitBreaker(pybreaker.CircuitBreaker(), policy=RatePolicy(min_calls=100))
    except ValueError as exc:
        check("a rate policy on pybreaker's default fail_max is refused", "RATE_POLICY_FAIL_MAX" in str(exc))
    else:
        check("a rate policy on pybreaker's default fail_max is refused", False)


async def trap_3_a_block_is_cut_short() -> None:
    breaker = AsyncCircuitBreaker(pybreaker.CircuitBreaker(fail_max=1))
    started = asyncio.Event()

    async def slow_block() -> str:
        async with breaker.calling():
            started.set()
            await asyncio.sleep(30)
        return "finished"

    task = asyncio.create_task(slow_block())
    await started.wait()
    breaker.trip()
    try:
        await asyncio.wait_for(task, 5)
    except CutShort:
        check("a block under calling() is cut short when the circuit opens", True)
    else:
        check("a block under calling() is cut short when the circuit opens", False)
    failing = AsyncCircuitBreaker(pybreaker.CircuitBreaker(fail_max=1))
    try:
        async with failing.calling():
            raise Down("x")
    except Down:
        pass
    check("an exception leaving calling() is a failure", failing.state == "open")


async def trap_4_what_cannot_work_is_refused() -> None:
    breaker = AsyncCircuitBreaker(pybreaker.CircuitBreaker(fail_max=1))
    try:
        await breaker.call(fetch("d"))  # type: ignore[arg-type]
    except TypeError as exc:
        check("a coroutine object is refused with what to write", "breaker.call(fetch, arg)" in str(exc))
    try:

        @breaker
        def plain(sku: str) -> str:
            return sku

    except TypeError as exc:
        check("@breaker on a plain def is refused with what to write", "async def" in str(exc))
    else:
        check("@breaker on a plain def is refused with what to write", False)
    check("neither counted as a failure", breaker.state == "closed" and breaker.fail_counter == 0)


async def main() -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("circuit_breaker").addHandler(handler)
    await the_copy_example()
    await trap_1_an_unreported_trial_frees_its_place()
    await trap_1_a_dropped_trial_is_logged(records)
    trap_2_a_rate_policy_needs_its_fail_max()
    await trap_3_a_block_is_cut_short()
    await trap_4_what_cannot_work_is_refused()
    check("the module needs nothing but pybreaker and the standard library", _only_pybreaker())


def _only_pybreaker() -> bool:
    stdlib = sys.stdlib_module_names
    return all(
        name.split(".")[0] in stdlib or name.split(".")[0] in {"pybreaker", "circuit_breaker", "__main__"}
        for name in sys.modules
        if not name.startswith("_")
    )


if __name__ == "__main__":
    asyncio.run(main())

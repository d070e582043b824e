"""Cost per guarded async call: this project's breaker beside pybreaker and peer libraries.

    python tools/bench/micro.py [--repeats 7] [--redis-url redis://127.0.0.1:6379/15]
        [--rate-redis-url redis://127.0.0.1:6380/0] [--no-instructions]

Every breaker guards the same trivial coroutine in a closed circuit, from
inside a coroutine of the caller's (an endpoint, say): `await breaker.call(trivial)`,
`async with breaker.calling(): await trivial()` and so on. That caller awaiting
the coroutine bare is measured too and subtracted, so each number is what the
breaker itself adds to one call, whether it takes the function or guards a block.

This project's breaker is measured under both its policies: `consecutive`
(CIRCUIT_FAIL_MAX failures in a row, the default) and `rate` (failure and
slow-call rates over a window), each with memory state and with Redis state,
and the rate policy's cost is also given as a ratio to the consecutive one's:
per repeat in time (the two run one after the other), and in instructions.
With Redis state the rate policy counts each call in the breaker's own window,
and every 200 ms the calls counted since join the fleet's window in Redis, in
the background; none of the timed calls yields to the event loop, so that
flush is not in these figures (the service benchmark, `run.py`, has it in its
CPU per request).

Two measures. Time, in microseconds: each repeat times the bare coroutine and
then every breaker, one after the other, and the figure is the median over the
repeats with its interquartile range; it moves with the machine's other load.
Instructions, counted by `valgrind --tool=callgrind` (when installed) over the same calls in
a child process: the same on a busy machine as on an idle one, so the figure
to judge a change of the bookkeeping by. Without `--redis-url` the Redis
storages get a throwaway redis-server of their own, so no circuit left open
by anyone else is found; the rate policy's Redis state gets another one
(`--rate-redis-url`): both policies use the same circuit name, and one Redis
shared by two breakers with different settings is a misconfiguration the
storage warns about.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parents[1]))

import aiobreaker
import circuitbreaker
import purgatory
import pybreaker
import redis

from circuit_breaker import AsyncCircuitBreaker
from offer_service import build_breaker
from service.redis_connection import connect
from service.redis_state import SharedCircuitState
from service.settings import OfferSettings
from tools.bench.spread import Spread
from tools.processes import RedisServer, redis_server_binary

GuardedCall = Callable[[], Awaitable[object]]
BARE = "bare coroutine, awaited by the caller"
MEMORY = "this project, memory state"
REDIS = "this project, Redis state"
RATE_MEMORY = "this project, rate policy, memory state"
DECORATED = "this project, @breaker, memory state"
CALLING = "this project, calling(), memory state"
TWO_STEPS = "this project, admit() + success(), memory state"
RATE_REDIS = "this project, rate policy, Redis state"
# Each rate-policy row and the consecutive-policy row it is compared with.
RATE_PAIRS = ((RATE_MEMORY, MEMORY), (RATE_REDIS, REDIS))
PYBREAKER_REDIS = "pybreaker, CircuitRedisStorage"
AIOBREAKER, CIRCUITBREAKER = "aiobreaker", "circuitbreaker"
# Calls counted per breaker under callgrind (about 50 times slower than without).
COUNTED_CALLS = 2_000
# The child marks the start and end of every breaker's calls with this call: callgrind
# dumps its counts on entering the C function behind it (`--dump-before=os_getppid`).
MARKER_FUNCTION = "os_getppid"


async def trivial() -> str:
    return "hot"


@dataclass(frozen=True)
class MicroResult:
    name: str
    microseconds: Spread  # per guarded call, over the repeats
    instructions: float | None = None  # per guarded call, under callgrind
    repeats: tuple[float, ...] = ()  # microseconds per guarded call, one per repeat, in order


def ratio(results: list[MicroResult], name: str, reference: str) -> tuple[Spread | None, float | None]:
    """`name`'s cost per call over `reference`'s: in time, one ratio per repeat (the two
    timed one after the other, so a slow moment slows both); and in instructions."""
    by_name = {r.name: r for r in results}
    a, b = by_name.get(name), by_name.get(reference)
    if a is None or b is None:
        return None, None
    in_time = Spread.of(x / y for x, y in zip(a.repeats, b.repeats, strict=False) if y > 0)
    counted = a.instructions / b.instructions if a.instructions and b.instructions else None
    return in_time, counted


@dataclass(frozen=True)
class Candidate:
    call: GuardedCall
    iterations: int  # per timed repeat: about a tenth of a second each


async def per_call(call: GuardedCall, iterations: int) -> float:
    """Seconds per call of `iterations` calls in a row."""
    started = time.perf_counter()
    for _ in range(iterations):
        await call()
    return (time.perf_counter() - started) / iterations


def _call(breaker: AsyncCircuitBreaker) -> GuardedCall:
    async def call() -> object:
        return await breaker.call(trivial)

    return call


def _awaiting(guarded: Callable[[], Awaitable[object]]) -> GuardedCall:
    """A caller awaiting `guarded`: a decorated coroutine function, or the bare one."""

    async def call() -> object:
        return await guarded()

    return call


def _pybreaker_call(breaker: pybreaker.CircuitBreaker) -> GuardedCall:
    async def call() -> object:
        with breaker.calling():  # pybreaker's way around an await without tornado
            return await trivial()

    return call


def _calling(breaker: AsyncCircuitBreaker) -> GuardedCall:
    async def call() -> object:
        async with breaker.calling():
            return await trivial()

    return call


def _two_steps(breaker: AsyncCircuitBreaker) -> GuardedCall:
    """The decision and the outcome alone, as circuitbreaker's decorator makes them."""

    async def call() -> object:
        permit = await breaker.admit()
        result = await trivial()
        permit.success()
        return result

    return call


async def _started(stack: AsyncExitStack, settings: OfferSettings, redis_url: str) -> AsyncCircuitBreaker:
    """This project's breaker with its state in the Redis at `redis_url`, kept in step until `stack` ends."""
    breaker = build_breaker(settings, await connect(redis_url))
    shared = breaker.shared
    assert isinstance(shared, SharedCircuitState)
    await shared.start()
    stack.push_async_callback(shared.stop)
    # Let its background work begin, as it has in a service by the first request: stopped
    # before it ever ran, it would leave the last window counts unwritten, and say so.
    await asyncio.sleep(0.1)
    return breaker


@asynccontextmanager
async def candidates(
    redis_url: str | None, rate_redis_url: str | None = None
) -> AsyncIterator[dict[str, Candidate]]:
    """Every breaker ready to guard `trivial`, the bare coroutine first; stopped on exit.
    Each rate-policy row comes right after its consecutive-policy row: timed seconds apart."""
    settings = OfferSettings(circuit_fail_max=3, circuit_reset_timeout=15)
    # The rate policy with its defaults: a 10 s window, 20 calls at least, half of them failed.
    rate_settings = OfferSettings(circuit_policy="rate", circuit_reset_timeout=15)
    ours, ours_rate = build_breaker(settings), build_breaker(rate_settings)
    calls = {
        BARE: Candidate(_awaiting(trivial), 100_000),  # the caller, nothing guarding its call
        MEMORY: Candidate(_call(ours), 50_000),
        RATE_MEMORY: Candidate(_call(ours_rate), 50_000),
        DECORATED: Candidate(_awaiting(ours(trivial)), 50_000),
        CALLING: Candidate(_calling(ours), 50_000),
        TWO_STEPS: Candidate(_two_steps(ours), 50_000),
        "pybreaker, CircuitMemoryStorage": Candidate(
            _pybreaker_call(pybreaker.CircuitBreaker(fail_max=3)), 50_000
        ),
    }
    async with AsyncExitStack() as stack:
        if redis_url:
            ours_redis = await _started(stack, settings, redis_url)
            calls[REDIS] = Candidate(_call(ours_redis), 50_000)
            if rate_redis_url:
                ours_rate_redis = await _started(stack, rate_settings, rate_redis_url)
                calls[RATE_REDIS] = Candidate(_call(ours_rate_redis), 50_000)
            client = redis.Redis.from_url(redis_url)
            stack.callback(client.close)
            namespace = f"micro-{uuid.uuid4().hex[:8]}"
            storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client, namespace=namespace)
            calls[PYBREAKER_REDIS] = Candidate(
                _pybreaker_call(pybreaker.CircuitBreaker(fail_max=3, state_storage=storage)), 2_000
            )

        aio = aiobreaker.CircuitBreaker(fail_max=3)

        async def aiobreaker_call() -> object:
            return await aio.call_async(trivial)

        calls[AIOBREAKER] = Candidate(aiobreaker_call, 50_000)

        factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=3, default_ttl=15)
        await factory.initialize()

        async def purgatory_call() -> object:
            async with await factory.get_breaker("partner"):
                return await trivial()

        calls["purgatory"] = Candidate(purgatory_call, 20_000)

        decorated = circuitbreaker.circuit(failure_threshold=3, recovery_timeout=15)(trivial)
        calls[CIRCUITBREAKER] = Candidate(_awaiting(decorated), 50_000)
        yield calls


async def timings(
    redis_url: str | None, repeats: int, scale: float, rate_redis_url: str | None = None
) -> dict[str, list[float]]:
    """Microseconds each breaker adds to a call, one figure per repeat.

    The bare coroutine is timed in every repeat and subtracted from that
    repeat's figures, so a repeat slowed down by the rest of the machine is
    slowed down on both sides of the subtraction."""
    async with candidates(redis_url, rate_redis_url) as calls:
        for candidate in calls.values():  # warm up: first calls, caches
            await per_call(candidate.call, min(candidate.iterations, 1000))
        added: dict[str, list[float]] = {name: [] for name in calls if name != BARE}
        for _ in range(repeats):
            bare = await per_call(calls[BARE].call, max(10, int(calls[BARE].iterations * scale)))
            for name, candidate in calls.items():
                if name != BARE:
                    seconds = await per_call(candidate.call, max(10, int(candidate.iterations * scale)))
                    added[name].append(max(0.0, seconds - bare) * 1e6)
        return added


async def count_in_child(redis_url: str | None, calls_each: int, rate_redis_url: str | None = None) -> None:
    """Run under callgrind: every breaker's calls between two markers, after a warm-up."""
    async with candidates(redis_url, rate_redis_url) as calls:
        for candidate in calls.values():
            await per_call(candidate.call, 200)
        gc.collect()
        gc.freeze()  # what was built so far is not walked again by every collection below
        for candidate in calls.values():
            os.getppid()
            await per_call(candidate.call, calls_each if candidate.iterations > 2_000 else calls_each // 10)
        os.getppid()
        print(json.dumps(list(calls)), flush=True)


def instructions(
    redis_url: str | None, calls_each: int = COUNTED_CALLS, rate_redis_url: str | None = None
) -> tuple[dict[str, float], str]:
    """Instructions each breaker adds to a call, counted by callgrind; and a note when not counted."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return {}, "instructions not counted: valgrind is not installed (apt-get install valgrind)"
    with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as workdir:
        args = [
            valgrind,
            "--tool=callgrind",
            f"--dump-before={MARKER_FUNCTION}",
            f"--callgrind-out-file={workdir}/callgrind.out",
            sys.executable,
            str(BENCH_DIR / "micro.py"),
            "--count-in-child",
            str(calls_each),
        ]
        if redis_url:
            args += ["--redis-url", redis_url]
        if rate_redis_url:
            args += ["--rate-redis-url", rate_redis_url]
        # A fixed hash seed: the same dict layouts, so the same counts from one run to the next.
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        child = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
        names = json.loads(child.stdout.strip().splitlines()[-1]) if child.stdout.strip() else []
        # Dump k (k >= 1) holds what ran since dump k-1: dump 1 the start-up, dump k+1 the k-th breaker.
        counts = [_total(Path(workdir, f"callgrind.out.{k}")) for k in range(2, len(names) + 2)]
        if child.returncode != 0 or not names or None in counts:
            return {}, (
                f"instructions not counted: callgrind run failed (exit {child.returncode}):\n"
                f"{child.stdout[-1000:]}{child.stderr[-2000:]}"
            )
    per_phase = dict(zip(names, counts, strict=True))
    bare = per_phase.pop(BARE)
    assert bare is not None
    result = {}
    for name, count in per_phase.items():
        assert count is not None
        made = calls_each if name != PYBREAKER_REDIS else calls_each // 10
        result[name] = max(0.0, count / made - bare / calls_each)
    return result, ""


def _total(dump: Path) -> int | None:
    if not dump.exists():
        return None
    for line in dump.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    return None


async def run(
    redis_url: str | None,
    repeats: int = 7,
    quick: bool = False,
    count_instructions: bool = True,
    rate_redis_url: str | None = None,
) -> tuple[list[MicroResult], str]:
    """Every breaker's cost per call; and a note on what was not measured."""
    added = await timings(
        redis_url,
        repeats=2 if quick else repeats,
        scale=0.02 if quick else 1.0,
        rate_redis_url=rate_redis_url,
    )
    counted, note = instructions(redis_url, rate_redis_url=rate_redis_url) if count_instructions else ({}, "")
    results = []
    for name, samples in added.items():
        spread = Spread.of(samples)
        assert spread is not None
        results.append(MicroResult(name, spread, counted.get(name), tuple(samples)))
    return results, note


def table(results: list[MicroResult]) -> str:
    repeats = max((r.microseconds.count for r in results), default=0)
    lines = [
        f"| breaker | us per guarded call, median (interquartile range) of {repeats} runs "
        "| instructions per guarded call (callgrind) |",
        "|---|---:|---:|",
    ]
    for r in results:
        counted = f"{r.instructions:,.0f}" if r.instructions is not None else ""
        lines.append(f"| {r.name} | {r.microseconds.format(1)} | {counted} |")
    return "\n".join(lines)


def ratio_table(results: list[MicroResult]) -> str:
    """The rate policy's cost per call over the consecutive policy's, memory and Redis state."""
    lines = [
        "| state | rate / consecutive, in time: median (interquartile range) of the repeats "
        "| rate / consecutive, in instructions (callgrind) |",
        "|---|---:|---:|",
    ]
    for rate, consecutive in RATE_PAIRS:
        in_time, counted = ratio(results, rate, consecutive)
        if in_time is None and counted is None:
            continue
        state = rate.rsplit(", ", 1)[1]
        time_cell = in_time.format(2, "x") if in_time else ""
        count_cell = f"{counted:.2f}x" if counted is not None else ""
        lines.append(f"| {state} | {time_cell} | {count_cell} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def throwaway_redis(stack: ExitStack) -> str | None:
    """A redis-server of its own for this run, stopped with `stack`; None without the binary."""
    binary = redis_server_binary()
    if binary is None:
        return None
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-redis-")))
    server = RedisServer(binary, workdir).start()
    stack.callback(server.stop)
    return server.url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of every breaker (default 7)")
    parser.add_argument("--redis-url", default=None, help="a Redis to measure the Redis storages against")
    parser.add_argument(
        "--rate-redis-url",
        default=None,
        help="another Redis, for the rate policy's Redis state (default: a throwaway redis-server)",
    )
    parser.add_argument("--no-instructions", action="store_true", help="skip the count under callgrind")
    parser.add_argument("--count-in-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.count_in_child:
        asyncio.run(count_in_child(args.redis_url, args.count_in_child, args.rate_redis_url))
        return 0
    with ExitStack() as stack:
        redis_url = args.redis_url or throwaway_redis(stack)
        rate_redis_url = args.rate_redis_url or throwaway_redis(stack)
        results, note = asyncio.run(
            run(
                redis_url,
                args.repeats,
                count_instructions=not args.no_instructions,
                rate_redis_url=rate_redis_url,
            )
        )
    print(table(results))
    ratios = ratio_table(results)
    if ratios:
        print(f"\n{ratios}")
    if note:
        print(f"\n{note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

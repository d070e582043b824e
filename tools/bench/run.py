"""CPU per request, requests/s and latency of the offer service beside the naive pattern, peers and ceilings.

    python tools/bench/run.py [--rounds 7] [--duration 2] [--connections 50] [--only TEXT] [--smoke]

Every case runs as its own uvicorn process on a free port (one worker, no
access log), loaded by wrk when installed, else by a small aiohttp client.

The machine is shared, so no figure comes from one long run of a case. Run
twice a day apart, that gave the healthy memory state 0.58x and 0.47x of the
raw aiohttp proxy, with nothing changed but the other load. So:

- The yardstick is the service's own CPU time per request answered, read from
  its process (psutil). Requests/s falls when a neighbour takes the other
  core; the CPU one request costs hardly moves. "x naive" and "x ceiling"
  compare requests per CPU-second: for a one-worker service that is busy, the
  requests/s it would reach with a core of its own.
- The cases of a scenario run in short rounds, interleaved (A B C A B C ...),
  and every figure is the median over the rounds with its interquartile
  range (tools/bench/spread.py says why not min-max).
  Ratios are taken round by round, each case against its baseline measured
  seconds before or after, so a slow minute slows both.
- A target is judged only when the whole interquartile range is on one side
  of it; otherwise it is "inconclusive", with the numbers.

Scenarios:
- healthy partner: the partner answers at once; ceiling: a raw aiohttp proxy.
- circuit open: nothing listens at the partner's address; five requests trip
  the circuit (this project's cases are then asked, through /offer/circuit,
  whether it is open: a case left closed stops the run), then the load runs;
  ceiling: an endpoint that only returns the fallback.
- partner slow: the partner takes longer than PARTNER_TIMEOUT from the first
  request; what counts is how long until answers are fast again. Every round
  starts the cases afresh, circuit closed.

This project's service runs under both circuit policies: `consecutive` (the
default: CIRCUIT_FAIL_MAX failures in a row) and `rate` (failure and slow-call
rates over CIRCUIT_WINDOW seconds), each with memory state and with Redis
state. The rate-policy cases run with CIRCUIT_MIN_CALLS=5, so that the five
failed requests of the circuit-open scenario trip them as they trip the
consecutive policy (all five failed: a failure rate of 1); a healthy partner
never fails, so the setting changes nothing there. Each is judged round by
round against the consecutive policy with the same state.

Every case starts clean: each case with Redis state gets a redis-server of its
own (a Redis database per case would not do: pub/sub channels span the
databases, so one case's trip would reach another case's processes), and so
does the micro-benchmark. When `.venv-3.12` or `.venv-3.13` exist
(`make test-versions` makes them), the memory-state case runs on those
Pythons too.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parents[1]
SPEED_PAGE = PROJECT_DIR / "docs" / "speed.md"  # its `bench:start` ... `bench:end` section is this run's
sys.path.insert(0, str(PROJECT_DIR))

from tools.bench import micro
from tools.bench.load import has_wrk, run_load, run_timeline
from tools.bench.spread import Spread
from tools.processes import (
    RedisServer,
    Service,
    delay_proxy,
    free_port,
    redis_server_binary,
    uvicorn_service,
    wait_for,
)

QUIET = {"LOG_LEVEL": "warning", "HTTPX_LOG_LEVEL": "warning"}
HEALTHY, OPEN, SLOW = "healthy partner", "circuit open", "partner slow"
SLOW_PARTNER_LATENCY = 5.0
SLOW_PARTNER_TIMEOUT = 1.0
SLOW_RUN = 4.0  # seconds of load per slow-partner round, at least: the timeout, the trip, then fast answers
FAST = 0.1  # seconds: an answer faster than this is "fast again"

PARTNER = "partner alone"
NAIVE = "naive: sync + @breaker + httpx.Client per request"
MEMORY = "this project, memory state"
REDIS = "this project, Redis state"
REDIS_FAR = "this project, Redis state, Redis +2 ms each way"
REDIS_DELAY = 0.002
RATE_MEMORY = micro.RATE_MEMORY  # "this project, rate policy, memory state"
RATE_REDIS = micro.RATE_REDIS  # "this project, rate policy, Redis state"
PROXY = "raw aiohttp proxy, no breaker"
AIOBREAKER, CIRCUITBREAKER = micro.AIOBREAKER, micro.CIRCUITBREAKER
FALLBACK = "fallback only, no partner call"
PLAIN_FALLBACK = "fallback only, through PlainRoute as /offer is"
CEILING = {HEALTHY: PROXY, OPEN: FALLBACK}
OTHER_PYTHONS = ("3.12", "3.13")
OURS = "offer_service:app"
# Failed requests that open the circuit in the circuit-open scenario: enough for
# CIRCUIT_FAIL_MAX (3) in a row, and the rate policy's minimum of calls below.
TRIP_REQUESTS = 5
RATE_POLICY = (("CIRCUIT_POLICY", "rate"), ("CIRCUIT_MIN_CALLS", str(TRIP_REQUESTS)))


@dataclass(frozen=True)
class Case:
    name: str
    app: str
    scenarios: tuple[str, ...] = (HEALTHY, OPEN, SLOW)
    redis_delay: float | None = None  # None: memory state; else a redis-server of its own, this far away
    python: str = sys.executable
    path: str = "/offer"
    in_smoke: bool = False
    env: tuple[tuple[str, str], ...] = ()  # settings of its own, beside the bench's
    # The cases a target compares it with: measured whenever it is, whatever --only and --smoke say.
    compared_with: tuple[str, ...] = ()


CASES = [
    Case(PARTNER, "partner_offer_service:app", scenarios=(HEALTHY,), path="/offer/hot"),
    Case(NAIVE, "tools.bench.baselines:naive_app", in_smoke=True),
    Case("naive async: async + AsyncClient per request", "tools.bench.baselines:naive_async_app"),
    Case("shared httpx.AsyncClient, default transport", "tools.bench.baselines:shared_httpx_app"),
    Case(MEMORY, OURS, in_smoke=True),
    Case(REDIS, OURS, redis_delay=0.0, compared_with=(MEMORY,)),
    Case(REDIS_FAR, OURS, scenarios=(HEALTHY, OPEN), redis_delay=REDIS_DELAY, compared_with=(REDIS,)),
    Case(
        RATE_MEMORY, OURS, scenarios=(HEALTHY, OPEN), in_smoke=True, env=RATE_POLICY, compared_with=(MEMORY,)
    ),
    Case(
        RATE_REDIS,
        OURS,
        scenarios=(HEALTHY, OPEN),
        redis_delay=0.0,
        in_smoke=True,
        env=RATE_POLICY,
        compared_with=(REDIS,),
    ),
    Case(PROXY, "tools.bench.baselines:aiohttp_proxy_app"),
    Case(FALLBACK, "tools.bench.baselines:fallback_app", scenarios=(HEALTHY, OPEN), in_smoke=True),
    Case(
        PLAIN_FALLBACK, "tools.bench.baselines:plain_fallback_app", scenarios=(OPEN,), compared_with=(MEMORY,)
    ),
]


def python_version(python: str) -> str:
    return subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def version_cases() -> list[Case]:
    """The memory-state case on every other Python that has a venv here."""
    found = []
    for version in OTHER_PYTHONS:
        python = PROJECT_DIR / f".venv-{version}" / "bin" / "python"
        if python.exists():
            name = f"{MEMORY}, Python {python_version(str(python))}"
            found.append(
                Case(name, OURS, scenarios=(HEALTHY, OPEN), python=str(python), compared_with=(MEMORY,))
            )
        else:
            print(
                f"  skipped Python {version}: no .venv-{version} (make test-versions makes it)",
                file=sys.stderr,
            )
    return found


@dataclass(frozen=True)
class Sample:
    """One case in one round."""

    scenario: str
    case: str
    round: int
    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_seconds: float | None = None
    recovery_seconds: float | None = None  # partner slow only; None: never fast again

    @property
    def cpu_us_per_request(self) -> float | None:
        if self.cpu_seconds is None or not self.requests:
            return None
        return self.cpu_seconds / self.requests * 1e6


@dataclass(frozen=True)
class Options:
    rounds: int
    slow_rounds: int
    duration: float
    connections: int
    only: str
    smoke: bool


def run(options: Options, cases: list[Case]) -> list[Sample]:
    redis_binary = redis_server_binary()
    samples: list[Sample] = []
    with ExitStack() as stack:
        partner = stack.enter_context(uvicorn_service("partner_offer_service:app", env=QUIET))
        slow_partner = stack.enter_context(
            uvicorn_service(
                "partner_offer_service:app", env={**QUIET, "PARTNER_LATENCY": str(SLOW_PARTNER_LATENCY)}
            )
        )
        partner_urls = {HEALTHY: partner.url, OPEN: f"http://127.0.0.1:{free_port()}", SLOW: slow_partner.url}
        for scenario in (HEALTHY, OPEN):
            chosen = _chosen(cases, scenario, options, redis_binary)
            with ExitStack() as running:
                services = {}
                for case in chosen:
                    services[case.name] = _start(
                        running, case, scenario, partner_urls[scenario], redis_binary
                    )
                    _prepare(scenario, case, services[case.name], options)
                for round_ in range(options.rounds):
                    for case in chosen:
                        samples.append(_steady(scenario, case, services[case.name], round_, options))
                        _report(samples[-1])
        for round_ in range(options.slow_rounds):
            for case in _chosen(cases, SLOW, options, redis_binary):
                with ExitStack() as running:
                    service = _start(running, case, SLOW, slow_partner.url, redis_binary)
                    samples.append(_slow(case, service, round_, options))
                _report(samples[-1])
    return samples


def _chosen(cases: list[Case], scenario: str, options: Options, redis_binary: str | None) -> list[Case]:
    """The cases of `scenario` that --smoke and --only leave, with the naive pattern, the
    ceiling and every case one of them is compared with; in the order of `cases`."""
    in_scenario = [case for case in cases if scenario in case.scenarios]
    if options.only and not any(options.only in case.name for case in in_scenario):
        return []  # nothing asked for here: no naive pattern and ceiling alone either
    wanted = set()
    for case in in_scenario:
        if options.smoke and not case.in_smoke:
            continue
        if options.only and options.only not in case.name and case.name not in (NAIVE, CEILING.get(scenario)):
            continue
        if case.redis_delay is not None and redis_binary is None:
            print(f"  skipped {case.name}: no redis-server on PATH", file=sys.stderr)
            continue
        wanted |= {case.name, *case.compared_with}
    return [
        case
        for case in in_scenario
        if case.name in wanted and (case.redis_delay is None or redis_binary is not None)
    ]


def _start(
    stack: ExitStack, case: Case, scenario: str, partner_url: str, redis_binary: str | None
) -> Service:
    """The case's process, and its own redis-server if it has Redis state: nothing left from another case."""
    env = {**QUIET, "PARTNER_OFFER_URL": partner_url, "CIRCUIT_RESET_TIMEOUT": "3600", **dict(case.env)}
    if scenario == SLOW:
        env["PARTNER_TIMEOUT"] = str(SLOW_PARTNER_TIMEOUT)
    if case.redis_delay is not None:
        assert redis_binary is not None
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-redis-")))
        server = RedisServer(redis_binary, workdir).start()
        stack.callback(server.stop)
        far = case.redis_delay > 0
        env["REDIS_URL"] = (
            stack.enter_context(delay_proxy(server.port, case.redis_delay)) if far else server.url
        )
    service = uvicorn_service(case.app, env=env)
    service.args[0] = case.python
    return stack.enter_context(service)


def _prepare(scenario: str, case: Case, service: Service, options: Options) -> None:
    url = service.url + case.path
    if scenario == OPEN:
        for _ in range(TRIP_REQUESTS):
            httpx.get(url, timeout=10)
        if case.app == OURS:
            _wait_until_open(case, service)
    run_load(url, min(1.0, options.duration), options.connections)  # warm up: connections, caches


def _wait_until_open(case: Case, service: Service, timeout: float = 5.0) -> None:
    """The circuit-open scenario measures an open circuit, or nothing. With Redis state the
    rate policy trips in Redis, when the calls counted here reach the fleet's window (every
    200 ms): so wait for it, a little."""
    try:
        wait_for(
            lambda: service.get("/offer/circuit").json()["current_state"] == "open",
            timeout=timeout,
            what="the circuit open",
        )
    except TimeoutError:
        circuit = service.get("/offer/circuit").json()
        raise RuntimeError(
            f"{case.name}: the circuit is not open after {TRIP_REQUESTS} failed requests: {circuit}"
        ) from None


def _steady(scenario: str, case: Case, service: Service, round_: int, options: Options) -> Sample:
    assert service.process is not None
    process = psutil.Process(service.process.pid)
    before = process.cpu_times()
    result = run_load(service.url + case.path, options.duration, options.connections)
    after = process.cpu_times()
    cpu = (after.user - before.user) + (after.system - before.system)
    return Sample(
        scenario,
        case.name,
        round_,
        result.requests,
        result.requests_per_second,
        result.p50_ms,
        result.p99_ms,
        result.errors,
        cpu_seconds=cpu,
    )


def _slow(case: Case, service: Service, round_: int, options: Options) -> Sample:
    # From the very first request: no warm-up, the timeline is the result.
    timeline = asyncio.run(
        run_timeline(service.url + case.path, max(options.duration, SLOW_RUN), options.connections)
    )
    return Sample(
        SLOW,
        case.name,
        round_,
        len(timeline.latencies),
        timeline.requests_per_second,
        timeline.percentile_ms(50),
        timeline.percentile_ms(99),
        timeline.errors,
        recovery_seconds=timeline.recovery_seconds(FAST),
    )


def _report(s: Sample) -> None:
    cpu = f"  CPU {s.cpu_us_per_request:8.0f} us/request" if s.cpu_us_per_request is not None else ""
    recovery = f"  fast again after {_seconds(s.recovery_seconds)}" if s.scenario == SLOW else ""
    print(
        f"  round {s.round + 1} {s.scenario:16} {s.case:56} {s.requests_per_second:7.0f} req/s{cpu}"
        f"  p50 {s.p50_ms:8.2f} ms  p99 {s.p99_ms:8.2f} ms  errors {s.errors}{recovery}",
        file=sys.stderr,
    )


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


NEVER = float("inf")  # a recovery that never came, as a number to take medians of


class Results:
    """The samples, read as medians and ranges per case, and as ratios taken round by round."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples
        self._by_key = {(s.scenario, s.case, s.round): s for s in samples}

    def cases(self, scenario: str) -> list[str]:
        return list(dict.fromkeys(s.case for s in self.samples if s.scenario == scenario))

    def of(self, scenario: str, case: str, value: Callable[[Sample], float | None]) -> Spread | None:
        return Spread.of(_present(value(s) for s in self.samples if (s.scenario, s.case) == (scenario, case)))

    def ratio(
        self, scenario: str, case: str, reference: str, value: Callable[[Sample], float | None]
    ) -> Spread | None:
        """value(case) / value(reference), one ratio per round."""
        ratios = []
        for s in self.samples:
            if (s.scenario, s.case) != (scenario, case):
                continue
            base = self._by_key.get((scenario, reference, s.round))
            a, b = value(s), value(base) if base else None
            if a is not None and b:
                ratios.append(a / b)
        return Spread.of(ratios)

    def efficiency(self, scenario: str, case: str, reference: str) -> Spread | None:
        """Requests per CPU-second of `case` over those of `reference`, round by round."""
        return self.ratio(scenario, reference, case, cpu) if case != reference else None


def cpu(s: Sample) -> float | None:
    return s.cpu_us_per_request


def _present(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None]


@dataclass(frozen=True)
class Target:
    description: str
    measured: Spread
    unit: str
    verdict: str


def targets(results: Results) -> list[Target]:
    found: list[Target] = []

    def add(
        description: str, value: Spread | None, threshold: float, unit: str = "x", lower: bool = False
    ) -> None:
        if value is not None:
            found.append(Target(description, value, unit, value.verdict(threshold, lower_is_better=lower)))

    per_cpu = "requests per CPU-second"
    add(
        f"healthy: memory state >= 50x the naive pattern's {per_cpu}",
        results.efficiency(HEALTHY, MEMORY, NAIVE),
        50,
    )
    add(
        f"healthy: memory state >= 0.7x the raw aiohttp proxy's {per_cpu}",
        results.efficiency(HEALTHY, MEMORY, PROXY),
        0.7,
    )
    add(
        f"open: memory state >= 0.95x the fallback-only ceiling's {per_cpu}",
        results.efficiency(OPEN, MEMORY, FALLBACK),
        0.95,
    )
    add(
        "open: memory state p99 <= 2x the ceiling's p99",
        results.ratio(OPEN, MEMORY, FALLBACK, lambda s: s.p99_ms),
        2,
        lower=True,
    )
    for case in (MEMORY, REDIS):
        recovery = results.of(
            SLOW, case, lambda s: NEVER if s.recovery_seconds is None else s.recovery_seconds
        )
        add(
            f"slow partner: {case.split(', ')[1]} fast again within PARTNER_TIMEOUT + 0.5 s",
            recovery,
            SLOW_PARTNER_TIMEOUT + 0.5,
            unit=" s",
            lower=True,
        )
    for scenario, short in ((HEALTHY, "healthy"), (OPEN, "open")):
        add(
            f"{short}: Redis state >= 0.9x memory state's {per_cpu}",
            results.efficiency(scenario, REDIS, MEMORY),
            0.9,
        )
    for scenario, short in ((HEALTHY, "healthy"), (OPEN, "open")):
        add(
            f"{short}: Redis +2 ms each way within 10% of Redis next door ({per_cpu})",
            results.efficiency(scenario, REDIS_FAR, REDIS),
            0.9,
        )
    # The rate policy counts every call into a window; that should cost a request next to
    # nothing. 0.95x: a difference that shows above the rounds' spread on this machine.
    for scenario, short in ((HEALTHY, "healthy"), (OPEN, "open")):
        for rate, consecutive in micro.RATE_PAIRS:
            add(
                f"{short}: rate policy >= 0.95x the consecutive policy's {per_cpu}, "
                f"{rate.rsplit(', ', 1)[1]}",
                results.efficiency(scenario, rate, consecutive),
                0.95,
            )
    return found


def micro_targets(found: list[micro.MicroResult]) -> list[Target]:
    """The breaker's own cost per call: in time (what the target was written in, and what moves
    with the machine's load), and in instructions (what does not)."""
    limit = 5.0
    by_name = {r.name: r for r in found}
    targets = []
    redis, memory = by_name.get(REDIS), by_name.get(MEMORY)
    if redis:
        verdict = redis.microseconds.verdict(limit, lower_is_better=True)
        description = f"breaker cost per call, Redis state, steady state <= {limit:g} us"
        targets.append(Target(description, redis.microseconds, " us", verdict))
    if redis and memory and redis.instructions and memory.instructions:
        # No Redis round trip per call: the shared state's bookkeeping is the memory state's, nearly.
        ratio = Spread.of([redis.instructions / memory.instructions])
        assert ratio is not None
        description = "breaker cost per call, Redis state <= 1.1x memory state's, in instructions (callgrind)"
        targets.append(Target(description, ratio, "x", ratio.verdict(1.1, lower_is_better=True)))
    # The cheapest guarded call of the Python breakers measured: each way of guarding a call
    # at or below aiobreaker's instructions, and the two steps alone at or below the plain
    # decorator of circuitbreaker, which keeps no generation, no trial and no listeners.
    peers = [(name, AIOBREAKER) for name in (MEMORY, REDIS, micro.DECORATED, micro.CALLING)]
    for name, peer in [*peers, (micro.TWO_STEPS, CIRCUITBREAKER)]:
        ours, theirs = by_name.get(name), by_name.get(peer)
        if ours and theirs and ours.instructions and theirs.instructions:
            ratio = Spread.of([ours.instructions / theirs.instructions])
            assert ratio is not None
            description = f"{name}: instructions per call <= {peer}'s (callgrind)"
            targets.append(Target(description, ratio, "x", ratio.verdict(1.0, lower_is_better=True)))
    # The rate policy does all the consecutive policy does (pybreaker still counts failures
    # in a row) and adds one call to a window bucket: a dozen lines against the hundreds of
    # the state machine's bookkeeping. 1.2x leaves room for that and for judging the window,
    # but not for work that grows with the window (a sum over its buckets on every call).
    # Judged in instructions, which a busy machine does not move; in time too, per repeat,
    # so that a run without callgrind (--smoke, --no-instructions) says something.
    rate_limit = 1.2
    for rate, consecutive in micro.RATE_PAIRS:
        in_time, counted = micro.ratio(found, rate, consecutive)
        state = rate.rsplit(", ", 1)[1]
        description = (
            f"breaker cost per call, rate policy <= {rate_limit:g}x the consecutive policy's, {state}"
        )
        if counted is not None:
            spread = Spread.of([counted])
            assert spread is not None
            verdict = spread.verdict(rate_limit, lower_is_better=True)
            targets.append(Target(f"{description}, in instructions (callgrind)", spread, "x", verdict))
        if in_time is not None:
            verdict = in_time.verdict(rate_limit, lower_is_better=True)
            targets.append(Target(f"{description}, in time", in_time, "x", verdict))
    return targets


def _cell(value: Spread | None, digits: int = 0, unit: str = "") -> str:
    return value.format(digits, unit) if value else ""


def table(results: Results) -> str:
    lines = [
        "| scenario | case | CPU us/request | x naive | x ceiling | req/s | p50 ms | p99 ms | fast again after |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in (HEALTHY, OPEN, SLOW):
        for case in results.cases(scenario):
            naive = results.efficiency(scenario, case, NAIVE) if scenario != SLOW else None
            ceiling = (
                results.efficiency(scenario, case, CEILING.get(scenario, "")) if scenario != SLOW else None
            )
            recovery = ""
            if scenario == SLOW:
                recovery = _recovery_cell(results.of(SLOW, case, lambda s: s.recovery_seconds), results, case)
            lines.append(
                f"| {scenario} | {case} | {_cell(results.of(scenario, case, cpu))} "
                f"| {_cell(naive, 1, 'x')} | {_cell(ceiling, 2, 'x')} "
                f"| {_cell(results.of(scenario, case, lambda s: s.requests_per_second))} "
                f"| {_cell(results.of(scenario, case, lambda s: s.p50_ms), 2)} "
                f"| {_cell(results.of(scenario, case, lambda s: s.p99_ms), 2)} | {recovery} |"
            )
    return "\n".join(lines)


def _recovery_cell(known: Spread | None, results: Results, case: str) -> str:
    rounds = [s for s in results.samples if (s.scenario, s.case) == (SLOW, case)]
    never = sum(s.recovery_seconds is None for s in rounds)
    if never == len(rounds):
        return "never"
    cell = _cell(known, 2, " s")
    return f"{cell}; never in {never} of {len(rounds)}" if never else cell


def targets_table(found: list[Target]) -> str:
    lines = ["| target | median | interquartile range | min-max | verdict |", "|---|---:|---:|---:|---|"]
    for t in found:
        m = t.measured
        middle = f"{_number(m.low, t.unit)} to {_number(m.high, t.unit)}"
        extremes = f"{_number(m.smallest, t.unit)} to {_number(m.largest, t.unit)}"
        lines.append(
            f"| {t.description} | {_number(m.median, t.unit)} | {middle} | {extremes} | {t.verdict} |"
        )
    return "\n".join(lines)


def _number(value: float, unit: str) -> str:
    return "never" if value == NEVER else f"{value:.2f}{unit}"


def versions_table(results: Results, cases: list[Case]) -> str:
    """The memory-state case on every Python measured, against the bench's own."""
    rows = [(f"{platform.python_version()} (the bench's)", MEMORY)]
    rows += [
        (c.name.rsplit("Python ", 1)[1], c.name) for c in cases if c.name.startswith(f"{MEMORY}, Python ")
    ]
    lines = [
        "| Python | healthy: CPU us/request | open: CPU us/request "
        f"| healthy: x {platform.python_version()} | open: x {platform.python_version()} |",
        "|---|---:|---:|---:|---:|",
    ]
    for version, case in rows:
        if not results.of(HEALTHY, case, cpu) and not results.of(OPEN, case, cpu):
            continue
        cells = [_cell(results.of(scenario, case, cpu)) for scenario in (HEALTHY, OPEN)]
        cells += [_cell(results.efficiency(scenario, case, MEMORY), 2, "x") for scenario in (HEALTHY, OPEN)]
        lines.append(f"| {version} | {' | '.join(cells)} |")
    return "\n".join(lines) if len(lines) > 3 else ""


def fastest_python(results: Results, cases: list[Case]) -> str:
    """Which Python serves a request on the least CPU, per scenario, and by how much."""
    others = [c.name for c in cases if c.name.startswith(f"{MEMORY}, Python ")]
    if not others:
        return ""
    own = platform.python_version()
    sentences = []
    for scenario in (HEALTHY, OPEN):
        ratios = {case.rsplit("Python ", 1)[1]: results.efficiency(scenario, case, MEMORY) for case in others}
        known = {version: spread for version, spread in ratios.items() if spread}
        if not known:
            continue
        version, best = max(known.items(), key=lambda item: item[1].median)
        if best.median <= 1.0:
            version = own
            words = f"Python {own}, the bench's own: no other did more requests per CPU-second"
        else:
            words = f"Python {version}, {best.format(2, 'x')} the requests per CPU-second of Python {own}"
        doubt = "" if best.low > 1.0 else " (its interquartile range reaches 1.00x: inconclusive)"
        if version == own:
            doubt = ""
        sentences.append(f"{scenario}: {words}{doubt}.")
    return "Fastest, " + " ".join(sentences) if sentences else ""


def chart(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(17, 6), constrained_layout=True)
    for axis, scenario in zip(axes, (HEALTHY, OPEN, SLOW), strict=True):
        names = results.cases(scenario)
        if scenario == SLOW:
            spreads = [results.of(SLOW, c, lambda s: s.recovery_seconds) for c in names]
            known = [s.high for s in spreads if s]
            never = max([*known, SLOW_PARTNER_TIMEOUT + 0.5]) * 1.2  # drawn past every other bar
            values = [s.median if s else never for s in spreads]
            errors = [
                [s.median - s.low if s else 0 for s in spreads],
                [s.high - s.median if s else 0 for s in spreads],
            ]
            colors = ["tab:red" if s is None else "tab:blue" for s in spreads]
            bars = axis.barh(names, values, xerr=errors, color=colors, capsize=3)
            labels = [_recovery_cell(s, results, c) for s, c in zip(spreads, names, strict=True)]
            axis.bar_label(bars, labels=labels, padding=3, fontsize=7)
            axis.set_xlim(0, never * 2.2)
            axis.set_xlabel("s until fast again (red: never)")
            axis.axvline(SLOW_PARTNER_TIMEOUT + 0.5, color="gray", linestyle="--")
        else:
            spreads = [results.of(scenario, c, cpu) for c in names]
            values = [s.median if s else 0 for s in spreads]
            errors = [
                [s.median - s.low if s else 0 for s in spreads],
                [s.high - s.median if s else 0 for s in spreads],
            ]
            colors = ["tab:orange" if c.startswith("this project") else "tab:gray" for c in names]
            axis.barh(names, values, xerr=errors, color=colors, capsize=3)
            axis.set_xscale("log")
            axis.set_xlabel("CPU us per request (log scale; shorter is better)")
        axis.set_title(scenario)
        axis.invert_yaxis()
        axis.tick_params(axis="y", labelsize=7)
    figure.suptitle(
        "GET /offer, 50 connections, one uvicorn worker each: medians over interleaved rounds, "
        "bars from the first to the third quartile"
    )
    figure.savefig(path, dpi=90)
    plt.close(figure)


def machine() -> str:
    today = datetime.date.today().isoformat()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{today}, {platform.machine()}, {os.cpu_count()} CPUs (load average {load} at the start), "
        f"Python {platform.python_version()}"
    )


def results_markdown(
    results: Results,
    found: list[Target],
    micro_results: list[micro.MicroResult],
    micro_note: str,
    setup: str,
    cases: list[Case],
) -> str:
    parts = [
        f"Measured on {machine()}; {setup}. Each figure: median (interquartile range) over the rounds.",
        table(results),
        "Targets (met or MISSED only when the whole interquartile range is on one side):",
        targets_table(found),
    ]
    versions = versions_table(results, cases)
    if versions:
        parts += [
            "The memory state on each Python (x: requests per CPU-second against the bench's own):",
            versions,
        ]
        parts.append(fastest_python(results, cases))
    parts += [
        "Cost per guarded call of a trivial coroutine, closed circuit (tools/bench/micro.py):",
        micro.table(micro_results) + (f"\n\n{micro_note}" if micro_note else ""),
    ]
    ratios = micro.ratio_table(micro_results)
    if ratios:
        parts += ["The rate policy's cost per guarded call against the consecutive policy's:", ratios]
    return "\n\n".join(parts)


def update_marked_section(page: Path, section: str) -> None:
    """Replace what lies between `page`'s `bench:start` and `bench:end` marks with `section`."""
    text = page.read_text()
    pattern = re.compile(r"(<!-- bench:start -->\n).*?(<!-- bench:end -->)", re.DOTALL)
    page.write_text(pattern.sub(lambda match: match.group(1) + section + "\n" + match.group(2), text))


def stop_servers_on_sigterm() -> None:
    """SIGTERM (a CI timeout, `kill`, some terminals' Ctrl-C), SIGHUP and SIGINT end the
    run through the `with` blocks that stop every server it started.

    Python's default for them ends the process at once: the uvicorn servers, each
    in a session of its own (so that `Service.stop` reaches their children), ran
    on after the benchmark was gone."""

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    # SIGINT too: under asyncio.run, Ctrl-C only cancels the running task, which the load
    # loops take for the end of one measurement, and the run went on to the next case.
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, leave)


def main(argv: list[str] | None = None) -> int:
    stop_servers_on_sigterm()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per scenario (default 7)")
    parser.add_argument(
        "--slow-rounds", type=int, default=5, help="rounds of the slow-partner scenario (default 5)"
    )
    parser.add_argument(
        "--duration", type=float, default=2.0, help="seconds of load per case and round (default 2)"
    )
    parser.add_argument("--connections", type=int, default=50, help="requests in flight (default 50)")
    parser.add_argument("--only", default="", help="measure only the cases whose name contains this")
    parser.add_argument(
        "--smoke", action="store_true", help="a seconds-long run of a few cases, to check it works"
    )
    parser.add_argument("--no-instructions", action="store_true", help="skip the callgrind count")
    parser.add_argument("--out", type=Path, default=BENCH_DIR, help="where results.md and results.png go")
    args = parser.parse_args(argv)
    options = Options(
        rounds=2 if args.smoke else max(1, args.rounds),
        slow_rounds=1 if args.smoke else max(1, args.slow_rounds),
        duration=1.0 if args.smoke else args.duration,
        connections=args.connections,
        only=args.only,
        smoke=args.smoke,
    )

    print(f"machine: {machine()}", file=sys.stderr)
    cases = CASES + ([] if options.smoke else version_cases())
    results = Results(run(options, cases))
    with ExitStack() as stack:
        micro_redis = micro.throwaway_redis(stack)  # its own: no circuit left open by a service case
        micro_rate_redis = micro.throwaway_redis(stack)  # and another for the rate policy's
        micro_results, micro_note = asyncio.run(
            micro.run(
                micro_redis,
                quick=options.smoke,
                count_instructions=not (args.no_instructions or options.smoke),
                rate_redis_url=micro_rate_redis,
            )
        )
    found = targets(results) + micro_targets(micro_results)
    tool = "wrk" if has_wrk() else "a Python aiohttp client (wrk not installed)"
    setup = (
        f"load: {tool}, {options.connections} connections; {options.rounds} interleaved rounds of "
        f"{options.duration:g} s per case ({options.slow_rounds} with the partner slow, each from a fresh start)"
    )
    markdown = results_markdown(results, found, micro_results, micro_note, setup, cases)
    print(markdown)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(markdown + "\n")
    samples = [{**dataclasses.asdict(s), "cpu_us_per_request": s.cpu_us_per_request} for s in results.samples]
    (args.out / "samples.json").write_text(json.dumps(samples, indent=1) + "\n")  # every round, to look again
    chart(results, args.out / "results.png")
    if not args.smoke and not args.only and args.out == BENCH_DIR:
        update_marked_section(SPEED_PAGE, markdown)
    print(f"\nwrote {args.out / 'results.md'} and {args.out / 'results.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Requests/s and latency of the offer service beside the naive pattern, peers and ceilings, in one run.

    python bench/run.py [--duration 5] [--connections 50] [--only TEXT] [--smoke]

Starts every case as its own uvicorn process on a free port (one worker, no
access log), puts the same load on each in turn (wrk when installed, else a
small aiohttp client), then prints a table and writes `bench/results.md`,
`bench/results.png` and the README's results section. Absolute numbers depend
on the machine and what else it is doing: compare the ratios, measured in the
same run.

Scenarios:
- healthy partner: the partner answers at once; ceiling: a raw aiohttp proxy.
- circuit open: nothing listens at the partner's address; five requests trip
  the circuit, then the load runs; ceiling: an endpoint that only returns the
  fallback.
- partner slow: the partner takes longer than PARTNER_TIMEOUT from the first
  request; what counts is how long until answers are fast again.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import re
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from bench import micro
from bench.load import has_wrk, run_load, run_timeline
from tests.processes import RedisServer, Service, free_port, redis_server_binary, uvicorn_service, wait_for

QUIET = {"LOG_LEVEL": "warning", "HTTPX_LOG_LEVEL": "warning"}
HEALTHY, OPEN, SLOW = "healthy partner", "circuit open", "partner slow"
SLOW_PARTNER_LATENCY = 5.0
SLOW_PARTNER_TIMEOUT = 1.0
FAST = 0.1  # seconds: an answer faster than this is "fast again"

NAIVE = "naive: sync + @breaker + httpx.Client per request"
MEMORY = "this project, memory state"
REDIS = "this project, Redis state"
REDIS_FAR = "this project, Redis state, Redis +2 ms each way"
REDIS_DELAY = 0.002
PROXY = "raw aiohttp proxy, no breaker"
FALLBACK = "fallback only, no partner call"
CEILING = {HEALTHY: PROXY, OPEN: FALLBACK}


@dataclass(frozen=True)
class Case:
    name: str
    app: str
    scenarios: tuple[str, ...] = (HEALTHY, OPEN, SLOW)
    needs_redis: bool = False
    in_smoke: bool = False


CASES = [
    Case(NAIVE, "bench.baselines:naive_app", in_smoke=True),
    Case("naive async: async + AsyncClient per request", "bench.baselines:naive_async_app"),
    Case("shared httpx.AsyncClient, default transport", "bench.baselines:shared_httpx_app"),
    Case(MEMORY, "offer_service:app", in_smoke=True),
    Case(REDIS, "offer_service:app", needs_redis=True),
    Case(REDIS_FAR, "offer_service:app", scenarios=(HEALTHY, OPEN), needs_redis=True),
    Case(PROXY, "bench.baselines:aiohttp_proxy_app"),
    Case(FALLBACK, "bench.baselines:fallback_app", scenarios=(HEALTHY, OPEN), in_smoke=True),
]


@dataclass
class Measurement:
    scenario: str
    case: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    recovery_seconds: float | None = None
    ratios: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    description: str
    measured: str
    met: bool


def run(
    duration: float, connections: int, only: str, smoke: bool, redis_url: str | None
) -> list[Measurement]:
    measurements: list[Measurement] = []
    with ExitStack() as stack:
        far_redis_url = _start_delay_proxy(stack, redis_url) if redis_url else None
        partner = stack.enter_context(uvicorn_service("partner_offer_service:app", env=QUIET))
        slow_partner = stack.enter_context(
            uvicorn_service(
                "partner_offer_service:app", env={**QUIET, "PARTNER_LATENCY": str(SLOW_PARTNER_LATENCY)}
            )
        )
        result = _warm_load(f"{partner.url}/offer/hot", duration, connections)
        measurements.append(Measurement(HEALTHY, "partner alone", *result))
        _report(measurements[-1])

        partner_urls = {HEALTHY: partner.url, OPEN: f"http://127.0.0.1:{free_port()}", SLOW: slow_partner.url}
        for scenario, partner_url in partner_urls.items():
            for case in CASES:
                if scenario not in case.scenarios or (smoke and not case.in_smoke):
                    continue
                if only and only not in case.name and case.name not in (NAIVE, CEILING.get(scenario)):
                    continue
                if case.needs_redis and redis_url is None:
                    print(f"  skipped {case.name}: no redis-server on PATH", file=sys.stderr)
                    continue
                env = {**QUIET, "PARTNER_OFFER_URL": partner_url, "CIRCUIT_RESET_TIMEOUT": "3600"}
                if scenario == SLOW:
                    env["PARTNER_TIMEOUT"] = str(SLOW_PARTNER_TIMEOUT)
                if case.needs_redis and redis_url:
                    env["REDIS_URL"] = far_redis_url if case.name == REDIS_FAR else redis_url
                    _flush(redis_url)
                with uvicorn_service(case.app, env=env) as service:
                    measurements.append(_measure(scenario, case, service, duration, connections))
                _report(measurements[-1])
    _add_ratios(measurements)
    return measurements


def _start_redis(stack: ExitStack) -> str | None:
    binary = redis_server_binary()
    if binary is None:
        return None
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-redis-")))
    server = RedisServer(binary, workdir).start()
    stack.callback(server.stop)
    return server.url


def _start_delay_proxy(stack: ExitStack, redis_url: str) -> str:
    """The same Redis, REDIS_DELAY further away each way."""
    import subprocess

    import redis

    port = free_port()
    target = redis_url.rsplit(":", 1)[1].split("/")[0]
    proxy = subprocess.Popen(
        [sys.executable, str(BENCH_DIR / "delay_proxy.py"), str(port), target, str(REDIS_DELAY)]
    )
    stack.callback(proxy.wait)
    stack.callback(proxy.terminate)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    wait_for(client.ping, timeout=10, what="delay proxy")
    client.close()
    return url


def _flush(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()


def _warm_load(url: str, duration: float, connections: int) -> tuple[float, float, float, int]:
    run_load(url, min(1.0, duration), connections)  # warm up: connections, caches
    result = run_load(url, duration, connections)
    return result.requests_per_second, result.p50_ms, result.p99_ms, result.errors


def _measure(scenario: str, case: Case, service: Service, duration: float, connections: int) -> Measurement:
    url = f"{service.url}/offer"
    if scenario == SLOW:
        # From the very first request: no warm-up, the timeline is the result.
        timeline = asyncio.run(run_timeline(url, max(duration, 4.0), connections))
        return Measurement(
            scenario,
            case.name,
            timeline.requests_per_second,
            timeline.percentile_ms(50),
            timeline.percentile_ms(99),
            timeline.errors,
            recovery_seconds=timeline.recovery_seconds(FAST),
        )
    if scenario == OPEN:
        for _ in range(5):
            httpx.get(url, timeout=10)
    return Measurement(scenario, case.name, *_warm_load(url, duration, connections))


def _add_ratios(measurements: list[Measurement]) -> None:
    by_key = {(m.scenario, m.case): m for m in measurements}
    for m in measurements:
        for label, reference in (("naive", NAIVE), ("ceiling", CEILING.get(m.scenario, ""))):
            base = by_key.get((m.scenario, reference))
            if base and base.requests_per_second:
                m.ratios[label] = m.requests_per_second / base.requests_per_second


def targets(measurements: list[Measurement]) -> list[Target]:
    by_key = {(m.scenario, m.case): m for m in measurements}
    found: list[Target] = []

    def ratio(scenario: str, case: str, reference: str) -> float | None:
        a, b = by_key.get((scenario, case)), by_key.get((scenario, reference))
        return a.requests_per_second / b.requests_per_second if a and b and b.requests_per_second else None

    def add(
        description: str, value: float | None, threshold: float, unit: str = "x", lower: bool = False
    ) -> None:
        if value is not None:
            met = value <= threshold if lower else value >= threshold
            found.append(Target(description, f"{value:.2f}{unit}", met))

    add("healthy: memory state >= 50x the naive pattern", ratio(HEALTHY, MEMORY, NAIVE), 50)
    add("healthy: memory state >= 0.6x the raw aiohttp proxy", ratio(HEALTHY, MEMORY, PROXY), 0.6)
    add("open: memory state >= 0.8x the fallback-only ceiling", ratio(OPEN, MEMORY, FALLBACK), 0.8)
    ours, ceiling = by_key.get((OPEN, MEMORY)), by_key.get((OPEN, FALLBACK))
    if ours and ceiling:
        add("open: memory state p99 <= 2x the ceiling's p99", ours.p99_ms / ceiling.p99_ms, 2, lower=True)
    for case in (MEMORY, REDIS):
        slow = by_key.get((SLOW, case))
        if slow:
            limit = SLOW_PARTNER_TIMEOUT + 0.5
            value = slow.recovery_seconds if slow.recovery_seconds is not None else float("inf")
            add(
                f"slow partner: {case.split(', ')[1]} fast again within PARTNER_TIMEOUT + 0.5 s",
                value,
                limit,
                unit=" s",
                lower=True,
            )
    add("healthy: Redis state >= 0.9x memory state", ratio(HEALTHY, REDIS, MEMORY), 0.9)
    add("open: Redis state >= 0.9x memory state", ratio(OPEN, REDIS, MEMORY), 0.9)
    add("healthy: Redis +2 ms each way within 10% of Redis next door", ratio(HEALTHY, REDIS_FAR, REDIS), 0.9)
    add("open: Redis +2 ms each way within 10% of Redis next door", ratio(OPEN, REDIS_FAR, REDIS), 0.9)
    return found


def micro_targets(results: list[micro.MicroResult]) -> list[Target]:
    return [
        Target(
            "breaker cost per call, Redis state, steady state <= 5 us",
            f"{r.microseconds_per_call:.1f} us",
            r.microseconds_per_call <= 5,
        )
        for r in results
        if r.name == "this project, Redis state"
    ]


def _report(m: Measurement) -> None:
    recovery = f"  fast again after {_recovery(m)}" if m.scenario == SLOW else ""
    print(
        f"  {m.scenario:16} {m.case:48} {m.requests_per_second:9.0f} req/s"
        f"  p50 {m.p50_ms:8.2f} ms  p99 {m.p99_ms:8.2f} ms  errors {m.errors}{recovery}",
        file=sys.stderr,
    )


def _recovery(m: Measurement) -> str:
    if m.recovery_seconds is None:
        return "never"
    return f"{m.recovery_seconds:.2f} s"


def table(measurements: list[Measurement]) -> str:
    lines = [
        "| scenario | case | req/s | p50 ms | p99 ms | x naive | x ceiling | fast again after |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in measurements:
        naive = f"{m.ratios['naive']:.1f}x" if "naive" in m.ratios else ""
        ceiling = f"{m.ratios['ceiling']:.2f}x" if "ceiling" in m.ratios else ""
        recovery = _recovery(m) if m.scenario == SLOW else ""
        lines.append(
            f"| {m.scenario} | {m.case} | {m.requests_per_second:.0f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} "
            f"| {naive} | {ceiling} | {recovery} |"
        )
    return "\n".join(lines)


def targets_table(found: list[Target]) -> str:
    lines = ["| target | measured | |", "|---|---:|---|"]
    lines += [f"| {t.description} | {t.measured} | {'met' if t.met else 'MISSED'} |" for t in found]
    return "\n".join(lines)


def chart(measurements: list[Measurement], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [HEALTHY, OPEN, SLOW]
    figure, axes = plt.subplots(1, 3, figsize=(16, 5.5), constrained_layout=True)
    for axis, scenario in zip(axes, scenarios, strict=True):
        rows = [m for m in measurements if m.scenario == scenario]
        names = [m.case for m in rows]
        if scenario == SLOW:
            known = [m.recovery_seconds for m in rows if m.recovery_seconds is not None]
            never = max([*known, SLOW_PARTNER_TIMEOUT + 0.5]) * 1.2  # drawn past every other bar
            values = [m.recovery_seconds if m.recovery_seconds is not None else never for m in rows]
            colors = ["tab:red" if m.recovery_seconds is None else "tab:blue" for m in rows]
            bars = axis.barh(names, values, color=colors)
            axis.bar_label(bars, labels=[_recovery(m) for m in rows], padding=3, fontsize=8)
            axis.set_xlim(0, never * 1.35)
            axis.set_xlabel("seconds until fast again (red: never)")
            axis.axvline(SLOW_PARTNER_TIMEOUT + 0.5, color="gray", linestyle="--")
        else:
            colors = ["tab:orange" if m.case.startswith("this project") else "tab:gray" for m in rows]
            axis.barh(names, [m.requests_per_second for m in rows], color=colors)
            axis.set_xscale("log")
            axis.set_xlabel("requests/s (log scale)")
        axis.set_title(scenario)
        axis.invert_yaxis()
        axis.tick_params(axis="y", labelsize=8)
    figure.suptitle("GET /offer, 50 connections, one uvicorn worker each")
    figure.savefig(path, dpi=90)
    plt.close(figure)


def machine() -> str:
    today = datetime.date.today().isoformat()
    return f"{today}, {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def results_markdown(
    measurements: list[Measurement], found: list[Target], micro_table: str, load: str
) -> str:
    return "\n\n".join(
        [
            f"Measured on {machine()}; load: {load}.",
            table(measurements),
            "Targets:",
            targets_table(found),
            "Cost per guarded call of a trivial coroutine, closed circuit (bench/micro.py):",
            micro_table,
        ]
    )


def update_readme(readme: Path, section: str) -> None:
    text = readme.read_text()
    pattern = re.compile(r"(<!-- bench:start -->\n).*?(<!-- bench:end -->)", re.DOTALL)
    readme.write_text(pattern.sub(lambda match: match.group(1) + section + "\n" + match.group(2), text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per case (default 5)")
    parser.add_argument("--connections", type=int, default=50, help="requests in flight (default 50)")
    parser.add_argument("--only", default="", help="measure only the cases whose name contains this")
    parser.add_argument(
        "--smoke", action="store_true", help="a seconds-long run of a few cases, to check it works"
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR, help="where results.md and results.png go")
    args = parser.parse_args(argv)
    duration = 2.0 if args.smoke else args.duration

    print(f"machine: {machine()}", file=sys.stderr)
    with ExitStack() as stack:
        redis_url = _start_redis(stack)  # one throwaway redis-server for the services and the micro-benchmark
        measurements = run(duration, args.connections, args.only, args.smoke, redis_url)
        micro_results = asyncio.run(micro.run(redis_url, quick=args.smoke))
    micro_table = micro.table(micro_results)
    found = targets(measurements) + micro_targets(micro_results)
    tool = "wrk" if has_wrk() else "a Python aiohttp client (wrk not installed)"
    load = f"{tool}, {args.connections} connections, {duration:g} s per case"
    markdown = results_markdown(measurements, found, micro_table, load)
    print(markdown)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(markdown + "\n")
    chart(measurements, args.out / "results.png")
    if not args.smoke and not args.only and args.out == BENCH_DIR:
        update_readme(BENCH_DIR.parent / "README.md", markdown)
    print(f"\nwrote {args.out / 'results.md'} and {args.out / 'results.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

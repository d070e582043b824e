"""Requests/s and latency of the offer service next to the naive pattern, in one run.

    python bench/run.py [--duration 5] [--connections 50]

Starts every service as its own uvicorn process on a free port (one worker,
no access log), puts the same load on each in turn, and prints a table with
each case's ratio to the naive pattern measured in the same run. Absolute
numbers depend on the machine and what else it is doing; the ratios are what
to compare.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import LoadResult, run_load
from tests.processes import RedisServer, Service, free_port, redis_server_binary, uvicorn_service

QUIET = {"LOG_LEVEL": "warning", "HTTPX_LOG_LEVEL": "warning"}
NAIVE = "naive: sync + @breaker + httpx.Client per request"


@dataclass(frozen=True)
class Case:
    name: str
    app: str
    env: dict[str, str] = field(default_factory=dict)
    needs_redis: bool = False


CASES = [
    Case(NAIVE, "bench.baselines:naive_app"),
    Case("naive async: async + AsyncClient per request", "bench.baselines:naive_async_app"),
    Case("shared httpx.AsyncClient, default transport", "bench.baselines:shared_httpx_app"),
    Case("this project, memory state", "offer_service:app"),
    Case("this project, Redis state", "offer_service:app", needs_redis=True),
    Case("raw aiohttp proxy, no breaker", "bench.baselines:aiohttp_proxy_app"),
    Case("fallback only, no partner call", "bench.baselines:fallback_app"),
]


@dataclass(frozen=True)
class Measurement:
    scenario: str
    case: str
    result: LoadResult


@contextmanager
def started(service: Service) -> Iterator[Service]:
    with service:
        yield service


def measure(url: str, duration: float, connections: int) -> LoadResult:
    run_load(url, min(1.0, duration), connections)  # warm up: connections, caches
    return run_load(url, duration, connections)


def run(duration: float, connections: int, only: str = "") -> list[Measurement]:
    measurements: list[Measurement] = []
    with ExitStack() as stack:
        redis_url = None
        binary = redis_server_binary()
        if binary:
            workdir = Path(stack.enter_context(_tempdir()))
            redis = RedisServer(binary, workdir).start()
            stack.callback(redis.stop)
            redis_url = redis.url
        partner = stack.enter_context(started(uvicorn_service("partner_offer_service:app", env=QUIET)))

        result = measure(f"{partner.url}/offer/hot", duration, connections)
        measurements.append(Measurement("healthy partner", "partner alone", result))
        _report(measurements[-1])

        scenarios = {
            "healthy partner": partner.url,
            # Nothing listens there: the first calls fail and the circuit opens.
            "circuit open": f"http://127.0.0.1:{free_port()}",
        }
        for scenario, partner_url in scenarios.items():
            for case in CASES:
                if only not in case.name and case.name != NAIVE:
                    continue
                if case.needs_redis and redis_url is None:
                    print(f"  skipped {case.name}: no redis-server on PATH", file=sys.stderr)
                    continue
                env = {
                    **QUIET,
                    "PARTNER_OFFER_URL": partner_url,
                    "CIRCUIT_RESET_TIMEOUT": "3600",
                    **({"REDIS_URL": redis_url} if case.needs_redis and redis_url else {}),
                    **case.env,
                }
                if case.needs_redis and redis_url:
                    _flush(redis_url)
                with started(uvicorn_service(case.app, env=env)) as service:
                    url = f"{service.url}/offer"
                    if scenario == "circuit open":
                        for _ in range(5):
                            httpx.get(url, timeout=10)
                    measurements.append(Measurement(scenario, case.name, measure(url, duration, connections)))
                    _report(measurements[-1])
    return measurements


def _flush(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()


@contextmanager
def _tempdir() -> Iterator[str]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-") as path:
        yield path


def _report(measurement: Measurement) -> None:
    result = measurement.result
    print(
        f"  {measurement.scenario:16} {measurement.case:48} {result.requests_per_second:9.0f} req/s"
        f"  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:8.2f} ms  errors {result.errors}",
        file=sys.stderr,
    )


def table(measurements: list[Measurement]) -> str:
    naive = {m.scenario: m.result.requests_per_second for m in measurements if m.case == NAIVE}
    lines = [
        "| scenario | case | req/s | p50 ms | p99 ms | x naive |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for m in measurements:
        baseline = naive.get(m.scenario)
        ratio = f"{m.result.requests_per_second / baseline:.1f}x" if baseline else ""
        lines.append(
            f"| {m.scenario} | {m.case} | {m.result.requests_per_second:.0f} | {m.result.p50_ms:.2f} "
            f"| {m.result.p99_ms:.2f} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per case (default 5)")
    parser.add_argument("--connections", type=int, default=50, help="requests in flight (default 50)")
    parser.add_argument("--only", default="", help="measure only the cases whose name contains this")
    args = parser.parse_args(argv)

    print(
        f"machine: {platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()}", file=sys.stderr
    )
    measurements = run(args.duration, args.connections, args.only)
    print(table(measurements))
    tool = measurements[0].result.tool
    print(f"\nload: {tool}, {args.connections} connections, {args.duration:g} s per case")
    return 0


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())

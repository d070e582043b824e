"""Load generation: wrk when it is installed, a small aiohttp client otherwise.

Both keep `connections` requests in flight for `duration` seconds and report
requests/s and the 50th and 99th latency percentiles.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class LoadResult:
    requests: int  # answered, whatever their status: the work the service did
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    tool: str


def has_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_load(url: str, duration: float, connections: int = 50) -> LoadResult:
    if has_wrk():
        return _wrk(url, duration, connections)
    return asyncio.run(_python_load(url, duration, connections))


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _wrk(url: str, duration: float, connections: int) -> LoadResult:
    # One wrk thread is enough for the rates a Python service reaches, and
    # leaves the machine's other core to the services being measured.
    output = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "--timeout",
            "10s",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency(percentile: str) -> float:
        match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if match is None:
            raise ValueError(f"no {percentile}% latency in wrk output:\n{output}")
        return float(match.group(1)) * _UNITS_MS[match.group(2)]

    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    count = re.search(r"^\s*(\d+) requests in", output, re.MULTILINE)
    if rate is None or count is None:
        raise ValueError(f"no Requests/sec or request count in wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        errors += sum(int(group) for group in socket_errors.groups())
    return LoadResult(int(count.group(1)), float(rate.group(1)), latency("50"), latency("99"), errors, "wrk")


async def _python_load(url: str, duration: float, connections: int) -> LoadResult:
    timeline = await run_timeline(url, duration, connections)
    return LoadResult(
        len(timeline.latencies),
        timeline.requests_per_second,
        timeline.percentile_ms(50),
        timeline.percentile_ms(99),
        timeline.errors,
        "python",
    )


@dataclass(frozen=True)
class Timeline:
    """Every request of a run: when it started and how long it took, in seconds from the start."""

    starts: list[float]
    latencies: list[float]
    errors: int
    duration: float

    @property
    def requests_per_second(self) -> float:
        return len(self.latencies) / self.duration

    def percentile_ms(self, percentile: int) -> float:
        if len(self.latencies) < 2:  # a very short run of a very slow case
            return self.latencies[0] * 1000 if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100)[percentile - 1] * 1000

    def recovery_seconds(self, fast: float) -> float | None:
        """When the last answer slower than `fast` arrived: from then on every answer was fast.
        None if slow answers went on to the end of the run."""
        ends = [
            start + latency
            for start, latency in zip(self.starts, self.latencies, strict=True)
            if latency >= fast
        ]
        if not ends:
            return 0.0
        last = max(ends)
        return None if last > self.duration - 1.0 else last


async def run_timeline(url: str, duration: float, connections: int = 50) -> Timeline:
    """Load with a timestamp per request, for scenarios where what changes over time matters."""
    starts: list[float] = []
    latencies: list[float] = []
    errors = 0

    async def worker(session: aiohttp.ClientSession, origin: float) -> None:
        nonlocal errors
        while (started := time.perf_counter()) < origin + duration:
            try:
                async with session.get(url) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
            starts.append(started - origin)
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        origin = time.perf_counter()
        await asyncio.gather(*(worker(session, origin) for _ in range(connections)))
        elapsed = time.perf_counter() - origin
    return Timeline(starts, latencies, errors, elapsed)

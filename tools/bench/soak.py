"""Chaos soak: a sick partner and a lost Redis must never make a sick offer service.

    python tools/bench/soak.py [--seconds 60]

Two offer-service instances share a throwaway redis-server; 50 concurrent
clients ask them for offers while the partner cycles through healthy, 500s,
slow, hanging, killed (connection refused) and healthy again, and the
redis-server is killed and restarted once. It passes when every answer is a
200 with a hot or cold offer, none slower than PARTNER_TIMEOUT + 0.5 s, each
fault opened the circuit on both instances and each recovery closed it, and
the instances' open file descriptors and memory at the end are within 10% of
their level after warm-up. It prints the figures and exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tools.processes import RedisServer, Service, free_port, redis_server_binary, uvicorn_service, wait_for

PARTNER_TIMEOUT = 0.5
RESET_TIMEOUT = 1.0
CLIENTS = 50
QUIET = {"LOG_LEVEL": "warning"}
# (name, share of the run, what the partner does); "killed" stops its process.
PHASES = [
    ("warm-up", 0.15, {}),
    ("500s", 0.12, {"status_code": 500}),
    ("healthy", 0.12, {}),
    ("slow", 0.12, {"latency": 2.0}),
    ("hanging", 0.12, {"mode": "hang"}),
    ("killed", 0.12, None),
    ("healthy again", 0.25, {}),
]


@dataclass
class Answer:
    at: float
    status: int
    kind: str
    latency: float


def process_figures(service: Service) -> tuple[int, int]:
    """Open file descriptors and resident memory (KiB) of a service's process."""
    assert service.process is not None
    pid = service.process.pid
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))  # fmt: skip
    return fds, rss


async def load(urls: list[str], stop: asyncio.Event, answers: list[Answer], origin: float) -> None:
    async def client(url: str) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    async with session.get(url) as response:
                        body = await response.text()
                        status = response.status
                except aiohttp.ClientError as exc:
                    body, status = repr(exc), 0
                kind = (
                    "hot"
                    if body.startswith('"Hot offer')
                    else "cold"
                    if body.startswith('"Cold offer')
                    else body
                )
                answers.append(Answer(started - origin, status, kind, time.monotonic() - started))

    await asyncio.gather(*(client(f"{urls[i % len(urls)]}/offer") for i in range(CLIENTS)))


async def watch(
    offers: list[Service], stop: asyncio.Event, phase: list[str], seen: dict[str, set[str]]
) -> None:
    """Poll every instance's circuit, and note which states each phase saw."""
    async with httpx.AsyncClient(timeout=2) as client:
        while not stop.is_set():
            for index, service in enumerate(offers):
                try:
                    state = (await client.get(f"{service.url}/offer/circuit")).json()["current_state"]
                    seen[f"{phase[0]}/{index}"].add(state)
                except httpx.HTTPError:
                    seen[f"{phase[0]}/{index}"].add("unreachable")
            await asyncio.sleep(0.05)


async def drive(
    seconds: float, partner: Service, offers: list[Service], redis: RedisServer
) -> dict[str, object]:
    answers: list[Answer] = []
    seen: dict[str, set[str]] = defaultdict(set)
    phase = ["warm-up"]
    stop = asyncio.Event()
    origin = time.monotonic()
    tasks = [
        asyncio.create_task(load([s.url for s in offers], stop, answers, origin)),
        asyncio.create_task(watch(offers, stop, phase, seen)),
    ]
    figures: dict[str, list[tuple[int, int]]] = {}
    async with httpx.AsyncClient(timeout=5) as control:
        for name, share, chaos in PHASES:
            phase[0] = name
            if chaos is None:
                await asyncio.to_thread(partner.stop, signal.SIGKILL)
            else:
                if partner.process is None or partner.process.poll() is not None:
                    await asyncio.to_thread(partner.start)
                await control.put(f"{partner.url}/chaos", json=chaos)
            if name == "slow":
                await asyncio.to_thread(redis.stop)
                await asyncio.sleep(seconds * share / 2)
                await asyncio.to_thread(redis.start)
                await asyncio.sleep(seconds * share / 2)
            else:
                await asyncio.sleep(seconds * share)
            if name == "warm-up":
                figures["after warm-up"] = [process_figures(s) for s in offers]
        figures["at the end"] = [process_figures(s) for s in offers]
    stop.set()
    await asyncio.gather(*tasks)
    return {"answers": answers, "seen": seen, "figures": figures}


def judge(result: dict[str, object]) -> list[tuple[str, bool, str]]:
    answers: list[Answer] = result["answers"]  # type: ignore[assignment]
    seen: dict[str, set[str]] = result["seen"]  # type: ignore[assignment]
    figures: dict[str, list[tuple[int, int]]] = result["figures"]  # type: ignore[assignment]
    kinds = Counter(a.kind if a.status == 200 else f"{a.status} {a.kind}" for a in answers)
    slowest = max(a.latency for a in answers)
    p99 = statistics.quantiles([a.latency for a in answers], n=100)[98]
    checks = [
        ("every answer a 200 with a hot or cold offer", set(kinds) <= {"hot", "cold"}, f"{dict(kinds)}"),
        (
            f"none slower than PARTNER_TIMEOUT + 0.5 s = {PARTNER_TIMEOUT + 0.5:.1f} s",
            slowest < PARTNER_TIMEOUT + 0.5,
            f"slowest {slowest * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, {len(answers)} answers",
        ),
    ]
    for fault in ("500s", "slow", "hanging", "killed"):
        states = [seen.get(f"{fault}/{i}", set()) for i in range(2)]
        checks.append(
            (f"{fault}: the circuit opened on both instances", all("open" in s for s in states), f"{states}")
        )
    for healthy in ("healthy", "healthy again"):
        states = [seen.get(f"{healthy}/{i}", set()) for i in range(2)]
        checks.append(
            (
                f"{healthy}: the circuit closed on both instances",
                all("closed" in s for s in states),
                f"{states}",
            )
        )
    for index, ((fds0, rss0), (fds1, rss1)) in enumerate(zip(*figures.values(), strict=True)):
        checks.append((
            f"instance {index}: open files within 10% of warm-up", fds1 <= fds0 * 1.1 + 1, f"{fds0} -> {fds1}"
        ))  # fmt: skip
        checks.append((
            f"instance {index}: memory within 10% of warm-up", rss1 <= rss0 * 1.1, f"{rss0} KiB -> {rss1} KiB"
        ))  # fmt: skip
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the run (default 60)")
    args = parser.parse_args(argv)
    binary = redis_server_binary()
    if binary is None:
        sys.exit("error: the soak needs a redis-server on PATH (apt-get install redis-server)")
    with ExitStack() as stack:
        redis = RedisServer(binary, Path(stack.enter_context(tempfile.TemporaryDirectory()))).start()
        stack.callback(redis.stop)
        partner = stack.enter_context(
            uvicorn_service("partner_offer_service:app", port=free_port(), env=QUIET)
        )
        env = {
            **QUIET,
            "PARTNER_OFFER_URL": partner.url,
            "REDIS_URL": redis.url,
            "PARTNER_TIMEOUT": str(PARTNER_TIMEOUT),
            "CIRCUIT_RESET_TIMEOUT": str(RESET_TIMEOUT),
        }
        offers = [stack.enter_context(uvicorn_service("offer_service:app", env=env)) for _ in range(2)]
        print(
            f"soak: {args.seconds:g} s, {CLIENTS} clients, 2 instances, phases: {', '.join(p[0] for p in PHASES)}"
        )
        result = asyncio.run(drive(args.seconds, partner, offers, redis))
        wait_for(
            lambda: all(s.get("/health").json()["status"] == "ok" for s in offers), what="instances healthy"
        )
    checks = judge(result)
    for what, ok, figure in checks:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}: {figure}")
    failed = sum(not ok for _, ok, _ in checks)
    print(f"soak: {len(checks) - failed} of {len(checks)} checks as expected")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

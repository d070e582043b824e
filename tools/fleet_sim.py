"""A fleet of N instances of the real breaker and shared state, measured against a real Redis.

    python tools/fleet_sim.py                      # N = 10, 100, 300, 1000; one server and a Cluster
    python tools/fleet_sim.py --sizes 10 100 --topologies single --processes 4

Each instance is what one pod of the offer service runs: `offer_service.build_breaker`
with its own Redis client (`service/redis_connection.connect`), its own background
writer and its own pub/sub subscription. The instances are spread over `--processes`
worker processes, each one event loop, so that one loop is not the bottleneck; a
fresh `redis-server` (or three-master Cluster) is started for every N. For each N:

- **propagation**: one instance trips (fail_max failures in a row); every instance
  records when it heard the open circuit and when its one waiting call (a partner
  call that never ends) was cut short. Times are `time.monotonic()`, one clock for
  every process of the machine.
- **one trial**: when the reset timeout has passed, every instance asks for a call
  at the same instant; the partner counts how many calls reached it.
- **steady state**: Redis's commands/s, CPU (`used_cpu_sys` + `used_cpu_user` from
  `INFO`), memory and clients, idle and with every instance taking calls, under the
  consecutive and the rate policy.

The simulator shares the machine with Redis: it reports its own CPU and event-loop
lag, and a plain subscriber in the coordinator (no breaker, no load) times Redis's
own fan-out, so that a slow propagation can be told from a busy simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import redis
from redis.exceptions import RedisClusterException

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.processes import (
    PROJECT_DIR,
    RedisClusterServers,
    RedisSentinels,
    RedisServer,
    redis_server_binary,
)

RESET_TIMEOUT = 3.0
FAIL_MAX = 3
TRIAL_SECONDS = 0.3  # how long the trial's partner call takes: the other instances ask meanwhile
# Per instance, in the loaded steady state: above the rate policy's five flushes a second,
# so that every instance flushes every 200 ms, as a busy pod does.
CALLS_PER_SECOND = 6.0
STEADY_SECONDS = 5.0
CHANNEL = "{partner-offer}:changes"
# A thousand Cluster clients starting at once on 2 busy cores: 10 attempts were too few.
START_ATTEMPTS = 30


# Workers: each runs its share of the fleet on one event loop.


class PartnerDown(Exception):
    """The partner's failure, as the breaker counts it."""


class Instance:
    """One pod's breaker and shared state, and what the simulator records about it."""

    def __init__(self, breaker: Any) -> None:
        self.breaker = breaker
        self.opened_at: float | None = None
        self.cut_short_at: float | None = None
        self.waiting: asyncio.Task[None] | None = None


def worker(conn: Connection, url: str, count: int, policy: str) -> None:
    """A worker process: runs `count` instances until told to stop."""
    # A line per instance per transition is a thousand lines per event: count the
    # shared state's losses of Redis instead (a busy machine makes a 250 ms timeout miss).
    logging.getLogger().setLevel(logging.ERROR)
    # A thousand "Timed out closing connection" at the end, when the stop's closes race.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    state_log = logging.getLogger("redis_state")
    state_log.setLevel(logging.WARNING)
    state_log.propagate = False
    state_log.addHandler(LOSSES)
    try:
        asyncio.run(_worker(conn, url, count, policy))
    except Exception as error:
        conn.send({"error": repr(error)})
        raise


class LossCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Redis lost"):
            self.lost += 1


LOSSES = LossCounter()


async def _worker(conn: Connection, url: str, count: int, policy: str) -> None:
    import pybreaker

    from circuit_breaker import CutShort
    from offer_service import build_breaker
    from service.redis_connection import connect
    from service.settings import OfferSettings

    settings = OfferSettings(
        circuit_fail_max=FAIL_MAX,
        circuit_reset_timeout=RESET_TIMEOUT,
        circuit_policy=policy,
        circuit_window=2.0,
        circuit_min_calls=1_000_000,  # the rate policy flushes its window, but never trips here
        partner_timeout=5.0,
    )
    loop = asyncio.get_running_loop()
    instances: list[Instance] = []
    reached = 0
    hang = asyncio.Event()
    everyone_cut_short = asyncio.Event()
    cut_short = 0

    class Heard(pybreaker.CircuitBreakerListener):
        def __init__(self, instance: Instance) -> None:
            self.instance = instance

        def state_change(self, cb: Any, old: Any, new: Any) -> None:
            if new.name == pybreaker.STATE_OPEN and self.instance.opened_at is None:
                self.instance.opened_at = time.monotonic()

    async def build() -> Instance:
        # As a pod would be restarted: a connection that timed out on the busy machine
        # is tried again, a few times.
        for attempt in range(START_ATTEMPTS):
            try:
                instance = Instance(build_breaker(settings, await connect(url)))
                instance.breaker.add_listener(Heard(instance))
                await instance.breaker.shared.start()
                return instance
            except (redis.RedisError, RedisClusterException, OSError):
                if attempt == START_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(min(2.0, 0.2 * (attempt + 1)))
        raise AssertionError("unreachable")

    async def wait_forever(instance: Instance) -> None:
        with suppress(CutShort):
            await instance.breaker.call(hang.wait)
            return
        instance.cut_short_at = time.monotonic()
        nonlocal cut_short
        cut_short += 1
        if cut_short == len(instances):
            everyone_cut_short.set()

    async def fail() -> None:
        raise PartnerDown

    async def trial_call() -> str:
        nonlocal reached
        reached += 1
        await asyncio.sleep(TRIAL_SECONDS)
        return "hot"

    async def ok() -> str:
        return "hot"

    lag = LoopLag()
    for start in range(0, count, 20):  # in batches: 1000 connections at once are a storm of their own
        instances.extend(await asyncio.gather(*(build() for _ in range(min(20, count - start)))))
    lag_task = asyncio.create_task(lag.run())
    conn.send({"ready": len(instances)})
    load: list[asyncio.Task[None]] = []
    calls = 0

    async def take_calls(instance: Instance, offset: float) -> None:
        nonlocal calls
        await asyncio.sleep(offset)
        while True:
            with suppress(Exception):
                await instance.breaker.call(ok)
            calls += 1
            await asyncio.sleep(1 / CALLS_PER_SECOND)

    while True:
        command = await loop.run_in_executor(None, conn.recv)
        name = command["do"]
        if name == "arm":
            for instance in instances:
                instance.waiting = asyncio.create_task(wait_forever(instance))
            await asyncio.sleep(0.2)
            conn.send({"armed": True})
        elif name == "trip":
            lag.reset()
            started = time.monotonic()
            for _ in range(FAIL_MAX):
                with suppress(PartnerDown):
                    await instances[0].breaker.call(fail)
            conn.send({"tripped_at": started})
        elif name == "heard":
            with suppress(TimeoutError):
                await asyncio.wait_for(everyone_cut_short.wait(), command["within"])
            conn.send(
                {
                    "opened": [i.opened_at for i in instances],
                    "cut_short": [i.cut_short_at for i in instances],
                    "lag": lag.summary(),
                    "losses": LOSSES.lost,
                }
            )
        elif name == "trial":
            await asyncio.sleep(max(0.0, command["at"] - time.monotonic()))
            lag.reset()
            losses_before = LOSSES.lost
            alone = sum(not instance.breaker.shared.connected for instance in instances)
            outcomes = await asyncio.gather(
                *(i.breaker.call(trial_call) for i in instances), return_exceptions=True
            )
            refused: dict[str, int] = {}
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    key = getattr(outcome, "reason", type(outcome).__name__)
                    refused[key] = refused.get(key, 0) + 1
            conn.send(
                {
                    "reached": reached,
                    "refused": refused,
                    "lag": lag.summary(),
                    "alone_when_asked": alone,
                    "lost_while_asking": LOSSES.lost - losses_before,
                }
            )
        elif name == "load":
            lag.reset()
            calls = 0
            cpu = time.process_time()
            load = [
                asyncio.create_task(take_calls(i, n / len(instances) / CALLS_PER_SECOND))
                for n, i in enumerate(instances)
            ]
            conn.send({"loading": True, "cpu": cpu})
        elif name == "measure":
            conn.send(
                {"calls": calls, "cpu": time.process_time(), "lag": lag.summary(), "losses": LOSSES.lost}
            )
            calls = 0
            lag.reset()
        elif name == "unload":
            for task in load:
                task.cancel()
            await asyncio.gather(*load, return_exceptions=True)
            conn.send({"unloaded": True})
        elif name == "status":
            states: dict[str, int] = {}
            for instance in instances:
                states[instance.breaker.state_name] = states.get(instance.breaker.state_name, 0) + 1
            connected = sum(instance.breaker.shared.connected for instance in instances)
            conn.send({"connected": connected, "states": states, "losses": LOSSES.lost})
        elif name == "stop":
            hang.set()
            lag_task.cancel()
            await asyncio.gather(*(i.breaker.shared.stop() for i in instances), return_exceptions=True)
            conn.send({"stopped": True})
            return


class LoopLag:
    """How late a 20 ms sleep wakes up on this loop: the simulator's own congestion."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    async def run(self) -> None:
        while True:
            asked = time.monotonic()
            await asyncio.sleep(0.02)
            self.samples.append(time.monotonic() - asked - 0.02)

    def reset(self) -> None:
        self.samples = []

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {"p50": 0.0, "max": 0.0}
        return {"p50": statistics.median(self.samples), "max": max(self.samples)}


# The coordinator.


class Fleet:
    """The worker processes of one run, and the commands that drive them all."""

    def __init__(self, url: str, size: int, processes: int, policy: str) -> None:
        context = multiprocessing.get_context("spawn")
        shares = [size // processes + (1 if k < size % processes else 0) for k in range(processes)]
        self.pipes: list[Connection] = []
        self.workers = []
        for share in shares:
            if share == 0:
                continue
            parent, child = context.Pipe()
            process = context.Process(target=worker, args=(child, url, share, policy), daemon=True)
            process.start()
            self.pipes.append(parent)
            self.workers.append(process)

    def ask(self, command: dict[str, Any], only_first: bool = False) -> list[dict[str, Any]]:
        pipes = self.pipes[:1] if only_first else self.pipes
        for pipe in pipes:
            pipe.send(command)
        return [self._receive(pipe) for pipe in pipes]

    def ready(self) -> int:
        return sum(self._receive(pipe)["ready"] for pipe in self.pipes)

    @staticmethod
    def _receive(pipe: Connection, timeout: float = 300.0) -> dict[str, Any]:
        if not pipe.poll(timeout):
            raise TimeoutError("a worker did not answer")
        answer: dict[str, Any] = pipe.recv()
        if "error" in answer:
            raise RuntimeError(f"a worker failed: {answer['error']}")
        return answer

    def stop(self) -> None:
        with suppress(Exception):
            self.ask({"do": "stop"})
        for process in self.workers:
            process.join(10)
            if process.is_alive():
                process.kill()


class RedisLoad:
    """Redis's counters over an interval, summed over every node of a Cluster."""

    def __init__(self, ports: list[int]) -> None:
        self.clients = [redis.Redis(host="127.0.0.1", port=port) for port in ports]

    def sample(self) -> dict[str, float]:
        total = {
            "commands": 0.0,
            "scripts": 0.0,
            "cpu": 0.0,
            "memory": 0.0,
            "clients": 0.0,
            "at": time.monotonic(),
        }
        for client in self.clients:
            info = client.info()
            stats = client.info("commandstats")
            total["commands"] += info["total_commands_processed"]
            total["scripts"] += sum(
                stats.get(f"cmdstat_{n}", {}).get("calls", 0) for n in ("evalsha", "eval")
            )
            total["cpu"] += info["used_cpu_sys"] + info["used_cpu_user"]
            total["memory"] += info["used_memory"]
            total["clients"] += info["connected_clients"]
        return total

    @staticmethod
    def rates(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        seconds = after["at"] - before["at"]
        return {
            # Minus the INFO calls of the sampler itself, two per node per sample.
            "commands_per_s": (after["commands"] - before["commands"]) / seconds,
            "round_trips_per_s": (after["scripts"] - before["scripts"]) / seconds,
            "cpu_cores": (after["cpu"] - before["cpu"]) / seconds,
            "memory_mb": after["memory"] / 1e6,
            "clients": after["clients"],
        }


class FanOut:
    """A plain subscriber with nothing else to do: when Redis itself delivered the trip."""

    def __init__(self, port: int) -> None:
        self.client = redis.Redis(host="127.0.0.1", port=port)
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe(CHANNEL)
        self.heard: list[float] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            message = self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
            if message is not None:
                self.heard.append(time.monotonic())

    def first_after(self, moment: float) -> float | None:
        return next((t for t in self.heard if t >= moment), None)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.pubsub.close()
        self.client.close()


@contextmanager
def redis_for(topology: str, workdir: Path) -> Iterator[tuple[str, list[int]]]:
    binary = redis_server_binary()
    if binary is None:
        raise SystemExit("error: no redis-server on PATH (apt-get install redis-server)")
    if topology == "single":
        server = RedisServer(binary, workdir, ["--maxclients", "10000"]).start()
        try:
            yield server.url, [server.port]
        finally:
            server.stop()
    else:
        cluster = RedisClusterServers(binary, workdir).start()
        try:
            yield cluster.url, [node.port for node in cluster.nodes]
        finally:
            cluster.stop()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def measure(topology: str, size: int, processes: int) -> dict[str, Any]:
    result: dict[str, Any] = {"topology": topology, "instances": size}
    with (
        tempfile.TemporaryDirectory(prefix="fleet-sim-") as tmp,
        redis_for(topology, Path(tmp)) as (url, ports),
    ):
        load = RedisLoad(ports)
        baseline = load.sample()
        result["redis_version"] = load.clients[0].info("server")["redis_version"]
        result["redis_empty"] = {"memory_mb": baseline["memory"] / 1e6, "clients": baseline["clients"]}
        fleet = Fleet(url, size, processes, "consecutive")
        try:
            started = time.monotonic()
            assert fleet.ready() == size
            result["start_seconds"] = time.monotonic() - started
            result["consecutive"] = steady(fleet, load)
            fan_out = FanOut(ports[0])
            try:
                fleet.ask({"do": "arm"})
                tripped_at = fleet.ask({"do": "trip"}, only_first=True)[0]["tripped_at"]
                heard = fleet.ask({"do": "heard", "within": 15.0})
                result["propagation"] = propagation(tripped_at, heard, fan_out.first_after(tripped_at))
            finally:
                fan_out.close()
            before = load.sample()
            trials = fleet.ask({"do": "trial", "at": tripped_at + RESET_TIMEOUT + 0.3})
            after = load.sample()
            refused: dict[str, int] = {}
            for answer in trials:
                for reason, count in answer["refused"].items():
                    refused[reason] = refused.get(reason, 0) + count
            result["trial"] = {
                "reached_partner": sum(answer["reached"] for answer in trials),
                "refused": refused,
                "round_trips": after["scripts"] - before["scripts"],
                # Instances deciding alone: without Redis when they asked, or lost it asking.
                "alone_when_asked": sum(answer["alone_when_asked"] for answer in trials),
                "lost_while_asking": sum(answer["lost_while_asking"] for answer in trials),
            }
        finally:
            fleet.stop()
        for client in load.clients:
            with suppress(redis.RedisError):
                client.flushall()
        fleet = Fleet(url, size, processes, "rate")
        try:
            assert fleet.ready() == size
            result["rate"] = steady(fleet, load)
        finally:
            fleet.stop()
    return result


def steady(fleet: Fleet, load: RedisLoad) -> dict[str, Any]:
    """Redis's load with the fleet idle, then with every instance taking calls."""
    time.sleep(1.5)  # let the start-up's round trips pass
    before = load.sample()
    time.sleep(STEADY_SECONDS)
    idle = RedisLoad.rates(before, load.sample())
    cpu = [answer["cpu"] for answer in fleet.ask({"do": "load"})]
    time.sleep(1.0)
    fleet.ask({"do": "measure"})
    before = load.sample()
    time.sleep(STEADY_SECONDS)
    answers = fleet.ask({"do": "measure"})
    loaded = RedisLoad.rates(before, load.sample())
    fleet.ask({"do": "unload"})
    loaded["calls_per_s"] = sum(a["calls"] for a in answers) / STEADY_SECONDS
    loaded["simulator_cpu_cores"] = sum(a["cpu"] - c for a, c in zip(answers, cpu, strict=True)) / (
        STEADY_SECONDS + 1
    )
    loaded["loop_lag_max_ms"] = max(a["lag"]["max"] for a in answers) * 1000
    loaded["redis_losses_so_far"] = sum(a["losses"] for a in answers)
    return {"idle": idle, "loaded": loaded}


def propagation(tripped_at: float, heard: list[dict[str, Any]], fan_out: float | None) -> dict[str, Any]:
    opened = [t - tripped_at for answer in heard for t in answer["opened"] if t is not None]
    cut = [t - tripped_at for answer in heard for t in answer["cut_short"] if t is not None]
    missing = sum(t is None for answer in heard for t in answer["opened"])

    def summary(values: list[float]) -> dict[str, float]:
        if not values:
            return {}
        return {
            "p50_ms": percentile(values, 0.5) * 1000,
            "p99_ms": percentile(values, 0.99) * 1000,
            "max_ms": max(values) * 1000,
        }

    return {
        "heard": summary(opened),
        "cut_short": summary(cut),
        "not_heard": missing,
        "redis_fan_out_ms": None if fan_out is None else (fan_out - tripped_at) * 1000,
        "loop_lag_max_ms": max(answer["lag"]["max"] for answer in heard) * 1000,
        "redis_losses_so_far": sum(answer["losses"] for answer in heard),
    }


def machine() -> str:
    model = "unknown CPU"
    with suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        model = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model
        )
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, {platform.system()}"


def plot(results: dict[str, Any], path: Path) -> None:
    """Propagation and Redis's load against N, one line per topology."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for topology in ("single", "cluster"):
        runs = [run for run in results["runs"] if run["topology"] == topology]
        if not runs:
            continue
        sizes = [run["instances"] for run in runs]
        label = "one server" if topology == "single" else "3-master Cluster"
        left.plot(sizes, [run["propagation"]["heard"]["p99_ms"] for run in runs], "o-", label=f"{label}: p99")
        left.plot(
            sizes, [run["propagation"]["heard"]["max_ms"] for run in runs], "x--", label=f"{label}: max"
        )
        fan_out = [run["propagation"]["redis_fan_out_ms"] for run in runs]
        left.plot(
            [n for n, t in zip(sizes, fan_out, strict=True) if t is not None],
            [t for t in fan_out if t is not None],
            "s:",
            label=f"{label}: Redis's own fan-out",
        )
        right.plot(
            sizes, [run["rate"]["loaded"]["cpu_cores"] for run in runs], "o-", label=f"{label}: rate policy"
        )
        right.plot(
            sizes,
            [run["consecutive"]["loaded"]["cpu_cores"] for run in runs],
            "x--",
            label=f"{label}: consecutive",
        )
    left.axhline(250, color="grey", linestyle=":", label="goal: 250 ms")
    left.set(
        xscale="log", xlabel="instances", ylabel="ms from the trip", title="Every instance heard the trip"
    )
    # Where the simulator could not make the load (loop lag of seconds), what the
    # per-instance cost measured at N = 100 and 300 predicts: 50 us + 5 flushes x 74 us.
    estimate = [10, 20, 50, 100, 200, 500, 1000]
    right.plot(estimate, [n * 420e-6 for n in estimate], "k-.", label="rate policy, 5 flushes/s: N x 420 us")
    right.axhline(0.5, color="grey", linestyle=":", label="goal: half a core")
    right.set(
        xscale="log",
        xlabel="instances",
        ylabel="cores (INFO used_cpu)",
        title="Redis CPU, fleet taking calls",
    )
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    figure.suptitle(results["machine"], fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def table(results: dict[str, Any]) -> str:
    """The Markdown table of docs/fleet-scale.md."""
    lines = [
        "| topology | N | heard p50 / p99 / max (ms) | cut short max (ms) | Redis fan-out (ms) | calls that "
        "reached the partner in the trial | Redis round trips/s idle / loaded (consecutive) | Redis CPU "
        "(cores) consecutive / rate | Redis round trips/s (rate) | memory (MB), idle | clients, idle | simulator loop lag max (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        heard, cut = run["propagation"]["heard"], run["propagation"]["cut_short"]
        consecutive, rate = run["consecutive"], run["rate"]
        fan_out = run["propagation"]["redis_fan_out_ms"]
        lines.append(
            f"| {run['topology']} | {run['instances']} "
            f"| {heard['p50_ms']:.0f} / {heard['p99_ms']:.0f} / {heard['max_ms']:.0f} "
            f"| {cut.get('max_ms', float('nan')):.0f} | {'not heard' if fan_out is None else round(fan_out, 1)} "
            f"| {run['trial']['reached_partner']} "
            f"| {consecutive['idle']['round_trips_per_s']:.0f} / {consecutive['loaded']['round_trips_per_s']:.0f} "
            f"| {consecutive['loaded']['cpu_cores']:.3f} / {rate['loaded']['cpu_cores']:.3f} "
            f"| {rate['loaded']['round_trips_per_s']:.0f} "
            f"| {consecutive['idle']['memory_mb']:.1f} | {consecutive['idle']['clients']:.0f} "
            f"| {max(run['propagation']['loop_lag_max_ms'], rate['loaded']['loop_lag_max_ms']):.0f} |"
        )
    return "\n".join(lines)


def failover(size: int, processes: int) -> dict[str, Any]:
    """Kill the primary under an open circuit, with `size` instances on Sentinel: how long
    until the Sentinels promote the replica and every instance is back, and in what state."""
    binary = redis_server_binary()
    if binary is None:
        raise SystemExit("error: no redis-server on PATH (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="fleet-sim-") as tmp:
        sentinels = RedisSentinels(binary, Path(tmp)).start()
        fleet = Fleet(sentinels.url, size, processes, "consecutive")
        try:
            assert fleet.ready() == size
            fleet.ask({"do": "arm"})
            tripped_at = fleet.ask({"do": "trip"}, only_first=True)[0]["tripped_at"]
            fleet.ask({"do": "heard", "within": 15.0})
            killed = time.monotonic()
            new_primary = sentinels.kill_primary()
            promoted = back = None
            while back is None and time.monotonic() - killed < 60:
                if promoted is None and sentinels.primary_port() == new_primary.port:
                    promoted = time.monotonic() - killed
                answers = fleet.ask({"do": "status"})
                if promoted is not None and sum(a["connected"] for a in answers) == size:
                    back = time.monotonic() - killed
                time.sleep(0.05)
            answers = fleet.ask({"do": "status"})
            states: dict[str, int] = {}
            for answer in answers:
                for state, count in answer["states"].items():
                    states[state] = states.get(state, 0) + count
            return {
                "instances": size,
                "open_for_seconds_before_the_kill": killed - tripped_at,
                "replica_promoted_after_s": promoted,
                "every_instance_back_after_s": back,
                "states_after": states,
                "redis_lost_lines": sum(a["losses"] for a in answers),
            }
        finally:
            fleet.stop()
            sentinels.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 300, 1000])
    parser.add_argument(
        "--topologies", nargs="+", choices=["single", "cluster"], default=["single", "cluster"]
    )
    parser.add_argument(
        "--processes", type=int, default=4, help="worker processes the instances are spread over"
    )
    parser.add_argument("--out", type=Path, default=PROJECT_DIR / "docs" / "fleet-scale.json")
    parser.add_argument(
        "--report",
        type=Path,
        nargs="+",
        help="no run: the table and the figure of these runs' JSON (merged; the figure beside --out)",
    )
    parser.add_argument(
        "--failover", action="store_true", help="instead: kill a Sentinel-watched primary under each N"
    )
    args = parser.parse_args()
    if args.failover:
        for size in args.sizes:
            print(json.dumps(failover(size, args.processes)), flush=True)
        return
    if args.report:
        reports = [json.loads(path.read_text()) for path in args.report]
        merged = {**reports[0], "runs": [run for report in reports for run in report["runs"]]}
        args.out.write_text(json.dumps(merged, indent=1) + "\n")
        plot(merged, args.out.with_suffix(".png"))
        print(table(merged))
        return
    results = {"machine": machine(), "processes": args.processes, "runs": []}
    for topology in args.topologies:
        for size in args.sizes:
            print(f"== {topology}, N = {size}", flush=True)
            run = measure(topology, size, args.processes)
            print(json.dumps(run, indent=1), flush=True)
            results["runs"].append(run)
            args.out.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.out.with_suffix(".png"))
    print(table(results))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

"""Instructions per `GET /offer` at the ASGI level: the offer service beside its ceilings.

    python tools/bench/asgi_count.py [--requests 1000] [--only open] [--uvicorn | --profile]

The apps are called directly (`await app(scope, receive, send)`), without a
server or a socket, under `valgrind --tool=callgrind`: a count that is the
same on a busy machine as on an idle one, so the figure to judge a change of
the service's own path by, where `run.py`'s CPU per request moves with the
neighbours' load. uvicorn's share (parsing the request, writing the answer)
and the event loop's are not in it: `--uvicorn` has them.

Two pairs, each the service against its ceiling (`baselines.py`):

- circuit open: the offer service, memory state, its circuit opened by five
  failed calls to an address where nothing listens; and the fallback alone.
- healthy partner: the offer service and the raw aiohttp proxy, both asking a
  real partner (`partner_offer_service.py`, in a process of its own: its
  instructions are not counted).

`--uvicorn` counts the whole server instead: each case is a uvicorn process
under callgrind, counting only while a client outside it sends the requests
(`UVICORN_CONNECTIONS` at a time), so uvicorn's share and the event loop's
under concurrency are in the figure too. It is the closer of the two to
`run.py`'s CPU per request; the ASGI count is the quicker one to read a
change to the app by.

`--profile` runs the same requests under cProfile instead, without valgrind,
and prints each case's calls per request and its top functions by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parents[1]))

from tools.processes import free_port, uvicorn_service, wait_for

# The child marks the start and end of every case's requests with this call: callgrind
# dumps its counts on entering the C function behind it (`--dump-before=os_getppid`).
MARKER_FUNCTION = "os_getppid"
OPEN_SERVICE, FALLBACK = "open: this project, memory state", "open: fallback only"
HEALTHY_SERVICE, PROXY = "healthy: this project, memory state", "healthy: raw aiohttp proxy"
PAIRS = ((OPEN_SERVICE, FALLBACK), (HEALTHY_SERVICE, PROXY))
# Requests in flight for `--uvicorn`, as in run.py's load. The count moves with it (the
# open case read 0.97x with 10, 0.90x with 50); with 50 it agreed with run.py's CPU per request.
UVICORN_CONNECTIONS = 50
# Starting Python under callgrind, even uninstrumented, takes a minute on a busy machine.
UVICORN_START_SECONDS = 300.0
REQUEST_HEADERS = [(b"host", b"127.0.0.1:8001"), (b"user-agent", b"bench"), (b"accept", b"*/*")]

Asgi = Callable[..., Any]


async def get(app: Asgi, path: str = "/offer") -> list[dict[str, Any]]:
    """One `GET path` through `app`, as uvicorn hands it over; the messages sent back."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8001),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": REQUEST_HEADERS,
        "state": {},
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def headers_of(sent: list[dict[str, Any]]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in sent[0]["headers"]}


@asynccontextmanager
async def running(app: Any) -> AsyncIterator[Asgi]:
    """`app` with its lifespan entered, as a server would."""
    async with app.router.lifespan_context(app):
        yield app


@asynccontextmanager
async def cases() -> AsyncIterator[dict[str, Asgi]]:
    """Every case's app, started and checked: the circuit really open, the partner really answering."""
    with ExitStack() as processes:
        partner = processes.enter_context(uvicorn_service("partner_offer_service:app"))
        nowhere = f"http://127.0.0.1:{free_port()}"
        os.environ.update(CIRCUIT_RESET_TIMEOUT="3600", LOG_LEVEL="warning", PARTNER_OFFER_URL=partner.url)
        import offer_service
        from service.settings import OfferSettings, load
        from tools.bench import baselines

        async with AsyncExitStack() as stack:
            apps: dict[str, Asgi] = {}
            opened = offer_service.create_app(
                load(OfferSettings).model_copy(update={"partner_offer_url": nowhere})
            )
            apps[OPEN_SERVICE] = await stack.enter_async_context(running(opened))
            apps[FALLBACK] = await stack.enter_async_context(running(baselines.fallback_app))
            apps[HEALTHY_SERVICE] = await stack.enter_async_context(running(offer_service.create_app()))
            apps[PROXY] = await stack.enter_async_context(running(baselines.aiohttp_proxy_app))
            for _ in range(5):
                await get(opened)
            state = headers_of(await get(opened)).get("x-circuit-state")
            if state != "open":
                raise RuntimeError(f"the circuit is {state} after five failed calls, not open")
            for name in (HEALTHY_SERVICE, PROXY):
                sent = await get(apps[name])
                if sent[0]["status"] != 200 or b"Hot" not in sent[1]["body"]:
                    raise RuntimeError(f"{name}: no hot offer from the partner: {sent}")
            yield apps


async def requests(app: Asgi, count: int) -> None:
    for _ in range(count):
        await get(app)


def chosen(names: Iterable[str], only: str) -> list[str]:
    """The cases whose name holds `only`, and the cases they are compared with, in order."""
    pairs = [pair for pair in PAIRS if any(only in name for name in pair)]
    return [name for name in names if any(name in pair for pair in pairs)]


async def count_in_child(count: int, only: str) -> None:
    """Run under callgrind: every case's requests between two markers, after a warm-up."""
    async with cases() as every:
        apps = {name: every[name] for name in chosen(every, only)}
        for app in apps.values():
            await requests(app, 200)
        gc.collect()
        gc.freeze()
        for app in apps.values():
            os.getppid()
            await requests(app, count)
        os.getppid()
        print(json.dumps(list(apps)), flush=True)


async def profile(count: int, top: int, only: str) -> None:
    """Each case's requests under cProfile: calls per request and the functions with most own time."""
    async with cases() as apps:
        for name in chosen(apps, only):
            app = apps[name]
            await requests(app, 200)
            profiler = cProfile.Profile()
            profiler.enable()
            await requests(app, count)
            profiler.disable()
            stats = pstats.Stats(profiler)
            print(f"\n## {name}: {stats.total_calls / count:.0f} calls per request")  # type: ignore[attr-defined]
            stats.sort_stats("tottime").print_stats(top)


def instructions(count: int, only: str) -> dict[str, float]:
    """Instructions per request of every case, counted by callgrind in a child process."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="bench-asgi-") as workdir:
        args = [
            valgrind,
            "--tool=callgrind",
            f"--dump-before={MARKER_FUNCTION}",
            f"--callgrind-out-file={workdir}/callgrind.out",
            sys.executable,
            str(Path(__file__).resolve()),
            "--count-in-child",
            str(count),
            "--only",
            only,
        ]
        # A fixed hash seed: the same dict layouts, so the same counts from one run to the next.
        child = subprocess.run(
            args, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"}, timeout=1200
        )
        lines = child.stdout.strip().splitlines()
        if child.returncode != 0 or not lines:
            raise SystemExit(f"callgrind run failed (exit {child.returncode}):\n{child.stderr[-3000:]}")
        names = json.loads(lines[-1])
        # Dump k holds what ran since dump k-1: dump 1 the start-up, dump k+1 the k-th case.
        return {name: _total(Path(workdir, f"callgrind.out.{k + 2}")) / count for k, name in enumerate(names)}


def uvicorn_instructions(count: int, only: str) -> dict[str, float]:
    """Instructions per request of every case served by a uvicorn process under callgrind."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    quiet = {"LOG_LEVEL": "warning", "HTTPX_LOG_LEVEL": "warning", "CIRCUIT_RESET_TIMEOUT": "3600"}
    apps = {
        OPEN_SERVICE: "offer_service:app",
        FALLBACK: "tools.bench.baselines:fallback_app",
        HEALTHY_SERVICE: "offer_service:app",
        PROXY: "tools.bench.baselines:aiohttp_proxy_app",
    }
    counts = {}
    with uvicorn_service("partner_offer_service:app", env=quiet) as partner:
        nowhere = f"http://127.0.0.1:{free_port()}"
        for name in chosen(apps, only):
            partner_url = nowhere if name in (OPEN_SERVICE, FALLBACK) else partner.url
            counts[name] = _count_served(apps[name], {**quiet, "PARTNER_OFFER_URL": partner_url}, count, name)
    return counts


def _count_served(app: str, env: dict[str, str], count: int, name: str) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-uvicorn-") as workdir:
        port = free_port()
        valgrind = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={workdir}/cg.out",
        ]
        server = uvicorn_service(app, port, {**env, "PYTHONHASHSEED": "0"})
        server.args = [*valgrind, *server.args]
        with server.start(timeout=UVICORN_START_SECONDS):
            assert server.process is not None
            pid = str(server.process.pid)

            def control(*args: str) -> None:
                # With the server's environment: valgrind names the files it is reached
                # through after $HOST, which the server has and this process may not.
                subprocess.run(
                    ["callgrind_control", *args, pid], check=True, capture_output=True, env=server.env
                )

            url = f"{server.url}/offer"
            asyncio.run(load(url, 5, 1))  # opens the circuit with nobody at the partner's address
            state = server.get("/offer").headers.get("x-circuit-state")
            if name == OPEN_SERVICE and state != "open":
                raise RuntimeError(f"the circuit is {state} after five failed calls, not open")
            asyncio.run(load(url, 300, UVICORN_CONNECTIONS))  # warm, not counted
            control("--instr=on")
            asyncio.run(load(url, 100, UVICORN_CONNECTIONS))
            control("--zero")
            asyncio.run(load(url, count, UVICORN_CONNECTIONS))
            control("--dump")
            dumps = wait_for(lambda: list(Path(workdir).glob("cg.out.*")), 60, 0.1, "callgrind's dump")
            return _total(dumps[0]) / count


async def load(url: str, count: int, connections: int) -> None:
    """`count` GETs of `url`, `connections` at a time, each answer read whole and required to be 200."""
    left = count
    async with aiohttp.ClientSession() as session:

        async def client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.get(url) as response:
                    await response.read()
                    response.raise_for_status()

        await asyncio.gather(*(client() for _ in range(connections)))


def _total(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise ValueError(f"no totals in {dump}")


def report(counts: dict[str, float]) -> str:
    lines = ["| case | instructions per request | x ceiling |", "|---|---:|---:|"]
    ceiling_of = dict(PAIRS)
    for name, count in counts.items():
        ceiling = ceiling_of.get(name)
        ratio = f"{counts[ceiling] / count:.2f}x" if ceiling else ""
        lines.append(f"| {name} | {count:,.0f} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000, help="requests counted per case")
    parser.add_argument("--only", default="", help="the cases whose name holds this, and their ceilings")
    parser.add_argument(
        "--uvicorn", action="store_true", help="count uvicorn processes under a client's load"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile instead of callgrind")
    parser.add_argument("--top", type=int, default=25, help="functions shown per case with --profile")
    parser.add_argument("--count-in-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count_in_child:
        asyncio.run(count_in_child(args.count_in_child, args.only))
    elif args.uvicorn:
        print(report(uvicorn_instructions(args.requests, args.only)))
    elif args.profile:
        asyncio.run(profile(args.requests, args.top, args.only))
    else:
        print(report(instructions(args.requests, args.only)))


if __name__ == "__main__":
    main()

"""`python -m uvicorn ...` started from a process that has already imported its libraries.

Every start of the offer service imports FastAPI, pydantic, aiohttp, httpx and
redis-py first: about 2 s of CPU on a 2-core machine, before a line of the
project runs. The test suite starts more than a hundred services, and those
imports were most of its CPU. So the tests start them warm: multiprocessing's
forkserver imports the libraries once per test process, and forks a child
for each start. The child takes the start's environment, directory and log
file, becomes a session leader (as `start_new_session=True` makes it), and
runs uvicorn's command line as `python -m uvicorn` would. It is a real uvicorn
process on a real port; what differs is only who imported the libraries.

The project's own modules are never imported ahead: the child imports them
from its directory, as a fresh process does (some tests edit copies of
them). Nor are modules whose import reads the environment a test sets
(prometheus-client reads `PROMETHEUS_MULTIPROC_DIR` once, at import).

Everything else starts cold, through `exec`: a command that is not
`python -m uvicorn` (the walkthrough's scripts, a wrapper such as faketime
or an open-files limit, whose effect needs an `exec`), and a start whose
environment changes how Python itself starts (`PYTHON*`, `LD_*`). Start-up
itself is tested cold (`tests/test_settings.py` runs every start method with
`subprocess`), and the benchmarks start every service cold.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from multiprocessing.process import BaseProcess
from pathlib import Path

# What `python -m uvicorn offer_service:app` imports before the project's first line, and
# that reads nothing from the environment at import.
PRELOADED = [
    "aiohttp",
    "fastapi",
    "fastapi.staticfiles",
    "httpx",
    "httpx_aiohttp",
    "psutil",
    "pybreaker",
    "pydantic",
    "pydantic_settings",
    "redis",
    "redis.asyncio",
    "sse_starlette",
    "uvicorn",
    "uvicorn.main",
]
# Environment variables read when Python or a preloaded library starts: a start that sets
# one differently from this process starts cold.
STARTS_PYTHON = ("PYTHON", "LD_")

_context: multiprocessing.context.ForkServerContext | None = None
# The process that enabled warm starts: its forkserver is its own, and a process forked from
# it (mutmut runs each mutant's tests in one) starts its services cold.
_owner = 0
_started: list[WarmProcess] = []


def enable() -> None:
    """Start eligible services warm from now on, in this process."""
    global _context, _owner
    _owner = os.getpid()
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOADED)
        # Before multiprocessing's own exit handler, which would wait for every child it started.
        atexit.register(_stop_leftovers)


def can_start(args: list[str], env: Mapping[str, str]) -> bool:
    """Whether `args` with `env` can be started warm: `python -m uvicorn`, Python unchanged."""
    if _context is None or os.getpid() != _owner or args[:3] != [sys.executable, "-m", "uvicorn"]:
        return False
    names = {name for name in (*env, *os.environ) if name.startswith(STARTS_PYTHON)}
    return all(env.get(name) == os.environ.get(name) for name in names)


def start(args: list[str], env: Mapping[str, str], cwd: Path, log_path: Path) -> WarmProcess:
    """`args` (which `can_start`) forked from the warm process, output appended to `log_path`."""
    assert _context is not None
    child = _context.Process(
        target=_run_uvicorn, args=(args[3:], dict(env), str(cwd), str(log_path)), name="uvicorn"
    )
    child.start()
    process = WarmProcess(child, args)
    _started.append(process)
    return process


def _run_uvicorn(argv: list[str], env: dict[str, str], cwd: str, log_path: str) -> None:
    """In the forked child: become what `Popen(["python", "-m", "uvicorn", *argv], cwd=cwd,
    env=env, stdout=log, stderr=STDOUT, start_new_session=True)` would have started."""
    os.setsid()
    os.chdir(cwd)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [sys.executable, *argv]
    sys.path.insert(0, cwd)  # as `python -m` puts the current directory first
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from uvicorn.main import main

    main()


class WarmProcess:
    """A warm child as `subprocess.Popen` shows a process: what `Service` and the tests use."""

    def __init__(self, process: BaseProcess, args: list[str]) -> None:
        self._process = process
        self.args = args
        assert process.pid is not None
        self.pid: int = process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _stop_leftovers() -> None:
    """A service a test left running is killed with its session, not waited for."""
    for process in _started:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

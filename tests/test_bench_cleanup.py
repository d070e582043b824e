"""The benchmark stops every server it started, however it is stopped."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tools.processes import PROJECT_DIR, wait_for


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_benchmark_leaves_no_server_running(tmp_path: Path, signum: int) -> None:
    """Before: after a SIGTERM, the partner and the case's uvicorn ran on, in sessions of their own."""
    bench = subprocess.Popen(
        [sys.executable, "tools/bench/run.py", "--smoke", "--no-instructions", "--out", str(tmp_path)],
        cwd=PROJECT_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started: list[psutil.Process] = []
    try:
        process = psutil.Process(bench.pid)

        def servers() -> list[psutil.Process]:
            return [p for p in process.children(recursive=True) if "uvicorn" in " ".join(p.cmdline())]

        wait_for(lambda: len(servers()) >= 2, timeout=60, interval=0.2, what="the partner and a case")
        started = servers()
        bench.send_signal(signum)
        bench.wait(30)
        _, alive = psutil.wait_procs(started, timeout=15)
        assert alive == [], [p.cmdline() for p in alive]
    finally:
        for leftover in [bench, *started]:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                leftover.kill()  # only what this test started, if the assertion failed


SIGNAL_DURING_POPEN = """
import os, signal, subprocess, sys
from tools.processes import spawn

def leave(signum, frame):
    raise SystemExit(128 + signum)

signal.signal(signal.SIGTERM, leave)
started = []
real_popen = subprocess.Popen

def popen_then_signalled(*args, **kwargs):  # the signal lands after the fork, inside Popen
    started.append(real_popen(*args, **kwargs))
    os.kill(os.getpid(), signal.SIGTERM)
    return started[-1]

subprocess.Popen = popen_then_signalled
try:
    spawn([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    print("the signal was lost")
except SystemExit:
    child = started[0]
    left_running = child.poll() is None
    print("stopped, the child left running:", left_running)
    if left_running:
        os.killpg(child.pid, signal.SIGKILL)
"""


def test_a_signal_while_a_server_starts_stops_the_server_before_its_handler_runs() -> None:
    """Before: a SIGTERM that landed inside `Popen`, after the fork, left a child that no
    `with` block knew of (the benchmark's partner, seen running after a stopped run)."""
    result = subprocess.run(
        [sys.executable, "-c", SIGNAL_DURING_POPEN],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout.strip() == "stopped, the child left running: False", result.stdout + result.stderr

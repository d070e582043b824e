"""Run tests again and again beside CPU-burning processes: a test that passes only on an
idle machine is a flaky test.

    python tests/stress.py --runs 20 tests/test_circuit_breaker.py tests/test_fleet.py

Prints one line per run and a last line `N passed, N failed`; exits non-zero if any run failed.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

BURN = "while True: pass"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--burners", type=int, default=2, help="CPU-burning processes beside the tests")
    parser.add_argument("tests", nargs="+")
    options = parser.parse_args()
    # Stopped from outside: still end the burners (the `finally` below runs on SystemExit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(options.burners)]
    passed = failed = 0
    try:
        for run in range(1, options.runs + 1):
            started = time.monotonic()
            result = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *options.tests],
                capture_output=True,
                text=True,
            )
            took = time.monotonic() - started
            last = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
            if result.returncode == 0:
                passed += 1
            else:
                failed += 1
                print(result.stdout[-5000:], result.stderr[-2000:], sep="\n")
            print(
                f"run {run}: {'ok' if result.returncode == 0 else 'FAILED'} in {took:.0f}s: {last}",
                flush=True,
            )
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

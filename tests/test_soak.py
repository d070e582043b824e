"""The chaos soak, in its 15 s version (`make soak` runs 60 s)."""

from __future__ import annotations

import subprocess
import sys

from tests.processes import PROJECT_DIR


def test_a_15_second_chaos_soak_passes() -> None:
    result = subprocess.run(
        [sys.executable, "bench/soak.py", "--seconds", "15"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "soak: 12 of 12 checks as expected" in result.stdout

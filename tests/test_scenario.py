"""`make scenario` tells the whole story, and says so when it does not."""

from __future__ import annotations

import subprocess
import sys

from tests.processes import PROJECT_DIR


def test_the_scenario_tells_the_whole_story() -> None:
    result = subprocess.run(
        [sys.executable, "scenario.py", "--start"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the story: 11 of 11 checks as expected" in result.stdout
    assert "FAIL" not in result.stdout
    assert "\033[" not in result.stdout  # no colour codes when not printing to a terminal

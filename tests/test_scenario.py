"""`make scenario` tells the whole story, and says so when it does not."""

from __future__ import annotations

import pytest

from tools.processes import run_script


@pytest.mark.timeout(180)
def test_the_scenario_tells_the_whole_story() -> None:
    result = run_script("tools/scenario.py", "--start", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the story: 11 of 11 checks as expected" in result.stdout
    assert "FAIL" not in result.stdout
    assert "\033[" not in result.stdout  # no colour codes when not printing to a terminal

"""`make scenario` tells the whole story, and says so when it does not."""

from __future__ import annotations

import re

import pytest

from tools import partial_failures, scenario
from tools.processes import run_script

WALKTHROUGH_CHECKS = 11
PARTIAL_CHECKS = 7


@pytest.mark.timeout(120)
def test_the_walkthrough_tells_its_story() -> None:
    result = run_script("tools/scenario.py", "--start", "--story", "walkthrough", timeout=100)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert f"the story: {WALKTHROUGH_CHECKS} of {WALKTHROUGH_CHECKS} checks as expected" in out
    assert "FAIL" not in out
    assert "\033[" not in out  # no colour codes when not printing to a terminal
    assert "== Partial failures" not in out


# Seconds of steady load per step, ~45 s in all: what `make scenario` shows, run by `make test-long`.
@pytest.mark.long
@pytest.mark.timeout(180)
def test_the_scenario_tells_the_whole_story() -> None:
    result = run_script("tools/scenario.py", "--start", timeout=160)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    total = WALKTHROUGH_CHECKS + PARTIAL_CHECKS
    assert f"the story: {total} of {total} checks as expected" in out
    assert "FAIL" not in out
    assert "\033[" not in out  # no colour codes when not printing to a terminal

    # The partial failures, after the walkthrough: a few lines of figures per step.
    partial = out[out.index("== Partial failures") : out.index("== Summary")]
    assert out.index("== Heal the partner") < out.index("== Partial failures")
    opens = dict(
        re.findall(r"(consecutive|rate) +opened +\d+ times in [\d.]+ s = +([\d.]+) opens/min", partial)
    )
    assert float(opens["consecutive"]) > 0, partial
    assert float(opens["rate"]) == 0, partial
    heavy = partial[partial.index("fails 70% of calls") :]
    rate_open = re.search(r"rate +opened ([\d.]+) s after the change", heavy)
    assert rate_open and float(rate_open.group(1)) <= partial_failures.WINDOW, partial
    slow = partial[partial.index("The partner turns slow") :]
    assert re.search(r"rate +opened [\d.]+ s after the change: 0 failed calls before the open", slow), partial
    assert re.search(r"consecutive opened 0 times", slow), partial
    # Not one line per request: the load's thousands of answers are summed up.
    assert len(partial.splitlines()) < 40, partial


def test_a_check_that_fails_makes_the_scenario_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def walkthrough(report: scenario.Report, start: bool) -> None:
        report.check("something that should happen", True)
        report.check("something that did not happen", False)

    monkeypatch.setattr(scenario, "walkthrough", walkthrough)
    assert scenario.main(["--story", "walkthrough"]) == 1
    out = capsys.readouterr().out
    assert "FAIL something that did not happen" in out
    assert "the story: 1 of 2 checks as expected" in out


def test_opens_are_counted_from_every_transition_to_open() -> None:
    metrics = "\n".join(
        [
            "# HELP circuit_breaker_transitions_total State changes of the circuit",
            "# TYPE circuit_breaker_transitions_total counter",
            'circuit_breaker_transitions_total{breaker="partner-offer",from_state="closed",to_state="open"} 4.0',
            'circuit_breaker_transitions_total{breaker="partner-offer",from_state="half-open",to_state="open"} 2.0',
            'circuit_breaker_transitions_total{breaker="partner-offer",from_state="open",to_state="half-open"} 5.0',
            'circuit_breaker_transitions_total{breaker="another",from_state="closed",to_state="open"} 9.0',
            "",
        ]
    )
    assert partial_failures.opens_in_metrics(metrics) == 6
    assert partial_failures.opens_in_metrics("") == 0

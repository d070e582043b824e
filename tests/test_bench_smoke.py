"""The benchmark keeps working: a seconds-long run of a few cases. No timing is asserted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools.processes import redis_server_binary, run_script


@pytest.mark.long  # rounds of every case, ~70 s: `make test-long`
@pytest.mark.timeout(300)  # a few service starts per case and round, on a machine that may be busy
def test_bench_smoke_run_writes_results(tmp_path: Path) -> None:
    result = run_script("tools/bench/run.py", "--smoke", "--out", str(tmp_path), timeout=280)
    assert result.returncode == 0, result.stderr
    markdown = (tmp_path / "results.md").read_text()
    rows = [
        "| healthy partner | this project, memory state |",
        "| circuit open | this project, memory state |",
        "| partner slow | this project, memory state |",
        "| healthy partner | this project, rate policy, memory state |",
        "| circuit open | this project, rate policy, memory state |",
        "| this project, memory state |",  # the micro-benchmark
        "| this project, rate policy, memory state |",
        "| this project, @breaker, memory state |",
        "| this project, calling(), memory state |",
        "| this project, admit() + success(), memory state |",
        "| aiobreaker |",
        "| circuitbreaker |",
        "| memory state |",  # the micro-benchmark's rate / consecutive ratios
    ]
    # Naive, memory state, rate policy with memory state, fallback only; with a redis-server,
    # the rate policy with Redis state and the consecutive one it is compared with.
    cases = 4
    if redis_server_binary():
        rows += [
            "| circuit open | this project, rate policy, Redis state |",
            "| circuit open | this project, Redis state |",
            "| this project, rate policy, Redis state |",
        ]
        cases += 2
    for row in rows:
        assert row in markdown
    # Every round of every case measured, and each target judged with its range.
    assert len(re.findall(r"^  round 2 healthy partner", result.stderr, re.MULTILINE)) == cases
    for target in (
        r"open: memory state >= 0\.95x ",
        r"open: rate policy >= 0\.95x the consecutive policy's .*, memory state",
        r"breaker cost per call, rate policy <= 1\.2x the consecutive policy's, memory state, in time",
    ):
        verdicts = re.findall(rf"^\| {target}.* \| (\w+) \|$", markdown, re.MULTILINE)
        assert verdicts and verdicts[0] in ("met", "MISSED", "inconclusive"), target
    assert (tmp_path / "results.png").read_bytes().startswith(b"\x89PNG")


def test_the_bench_writes_its_figures_between_the_speed_pages_marks(tmp_path: Path) -> None:
    from tools.bench import run

    assert run.SPEED_PAGE.relative_to(run.PROJECT_DIR) == Path("docs/speed.md")
    text = run.SPEED_PAGE.read_text()
    assert text.count("<!-- bench:start -->\n") == 1 and text.count("<!-- bench:end -->") == 1
    page = tmp_path / "speed.md"
    page.write_text("# Speed\n\n<!-- bench:start -->\nold figures\n<!-- bench:end -->\n\nAfter.\n")
    run.update_marked_section(page, "new figures")
    assert page.read_text() == "# Speed\n\n<!-- bench:start -->\nnew figures\n<!-- bench:end -->\n\nAfter.\n"

"""The benchmark keeps working: a seconds-long run of a few cases. No timing is asserted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tools.processes import run_script


@pytest.mark.timeout(300)  # a few service starts per case and round, on a machine that may be busy
def test_bench_smoke_run_writes_results(tmp_path: Path) -> None:
    result = run_script("tools/bench/run.py", "--smoke", "--out", str(tmp_path), timeout=280)
    assert result.returncode == 0, result.stderr
    markdown = (tmp_path / "results.md").read_text()
    for row in (
        "| healthy partner | this project, memory state |",
        "| circuit open | this project, memory state |",
        "| partner slow | this project, memory state |",
        "| this project, memory state |",  # the micro-benchmark
        "| aiobreaker |",
    ):
        assert row in markdown
    # Every round of every case measured, and each target judged with its range.
    assert len(re.findall(r"^  round 2 healthy partner", result.stderr, re.MULTILINE)) == 3
    verdicts = re.findall(r"^\| open: memory state >= 0\.8x .* \| (\w+) \|$", markdown, re.MULTILINE)
    assert verdicts and verdicts[0] in ("met", "MISSED", "inconclusive")
    assert (tmp_path / "results.png").read_bytes().startswith(b"\x89PNG")

"""The benchmark keeps working: a seconds-long run of a few cases. No timing is asserted."""

from __future__ import annotations

from pathlib import Path

from tests.processes import run_script


def test_bench_smoke_run_writes_results(tmp_path: Path) -> None:
    result = run_script("bench/run.py", "--smoke", "--out", str(tmp_path))
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
    assert (tmp_path / "results.png").read_bytes().startswith(b"\x89PNG")

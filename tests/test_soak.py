"""The chaos soak, in its 15 s version (`make soak` runs 60 s)."""

from __future__ import annotations

import pytest

from tools.processes import run_script


@pytest.mark.long  # 15 s of load by design: `make test-long`
@pytest.mark.timeout(240)
def test_a_15_second_chaos_soak_passes() -> None:
    result = run_script("tools/bench/soak.py", "--seconds", "15", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "soak: 12 of 12 checks as expected" in result.stdout

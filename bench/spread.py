"""Medians with their spread, and verdicts that admit doubt.

On a shared machine one run of a case says as much about the neighbours as
about the code: two runs of the same commit a day apart put the healthy
memory state at 0.58x and at 0.47x of the raw aiohttp proxy. So every figure
here is the median of several interleaved rounds with its range (min-max),
and a target is judged "met" or "MISSED" only when the whole range is on one
side of it; otherwise it is "inconclusive", with the numbers.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

MET, MISSED, INCONCLUSIVE = "met", "MISSED", "inconclusive"


@dataclass(frozen=True)
class Spread:
    """The median of some samples and their range."""

    median: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, samples: Iterable[float]) -> Spread | None:
        values = sorted(samples)
        if not values:
            return None
        return cls(statistics.median(values), values[0], values[-1], len(values))

    def format(self, digits: int = 2, unit: str = "") -> str:
        """`median (low-high)`, or the value alone when there was one sample."""
        if self.count == 1 or self.low == self.high:
            return f"{self.median:.{digits}f}{unit}"
        return f"{self.median:.{digits}f}{unit} ({self.low:.{digits}f}-{self.high:.{digits}f})"

    def verdict(self, threshold: float, lower_is_better: bool = False) -> str:
        """met when every sample meets the threshold, MISSED when none does, else inconclusive."""
        if lower_is_better:
            good, bad = self.high <= threshold, self.low > threshold
        else:
            good, bad = self.low >= threshold, self.high < threshold
        return MET if good else MISSED if bad else INCONCLUSIVE

"""Medians with their spread, and verdicts that admit doubt.

On a shared machine one run of a case says as much about the neighbours as
about the code: two runs of the same commit a day apart put the healthy
memory state at 0.58x and at 0.47x of the raw aiohttp proxy. So every figure
here is the median of several interleaved rounds with its interquartile
range (the middle half of the rounds), and a target is judged "met" or
"MISSED" only when that whole range is on one side of it; otherwise it is
"inconclusive", with the numbers. The interquartile range rather than min-max:
one round that a neighbour's burst disturbed should not decide a verdict, and
min-max only widens as rounds are added. With fewer than four rounds there
are no quartiles to speak of, and the range is min-max.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

MET, MISSED, INCONCLUSIVE = "met", "MISSED", "inconclusive"


@dataclass(frozen=True)
class Spread:
    """The median of some samples, their interquartile range (low-high) and their extremes."""

    median: float
    low: float
    high: float
    smallest: float
    largest: float
    count: int

    @classmethod
    def of(cls, samples: Iterable[float]) -> Spread | None:
        values = sorted(samples)
        if not values:
            return None
        low, high = (values[0], values[-1]) if len(values) < 4 else (_at(values, 0.25), _at(values, 0.75))
        return cls(statistics.median(values), low, high, values[0], values[-1], len(values))

    def format(self, digits: int = 2, unit: str = "") -> str:
        """`median (low-high)`, or the value alone when the samples agree."""
        if self.low == self.high:
            return f"{self.median:.{digits}f}{unit}"
        return f"{self.median:.{digits}f}{unit} ({self.low:.{digits}f}-{self.high:.{digits}f})"

    def verdict(self, threshold: float, lower_is_better: bool = False) -> str:
        """met when the whole range meets the threshold, MISSED when none of it does, else inconclusive."""
        if lower_is_better:
            good, bad = self.high <= threshold, self.low > threshold
        else:
            good, bad = self.low >= threshold, self.high < threshold
        return MET if good else MISSED if bad else INCONCLUSIVE


def _at(values: list[float], fraction: float) -> float:
    """The quantile of sorted `values`, interpolated as `statistics.quantiles(method="inclusive")`
    does, but safe with infinities (a recovery that never came)."""
    position = (len(values) - 1) * fraction
    below = math.floor(position)
    if below == position or values[below] == values[below + 1]:
        return values[below]
    return values[below] + (values[below + 1] - values[below]) * (position - below)

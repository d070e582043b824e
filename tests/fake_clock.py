"""A clock that tests move by hand, instead of sleeping through a reset timeout."""

from __future__ import annotations


class FakeClock:
    """Stands in for `time.monotonic`: `clock()` reads it, `clock.advance(s)` moves it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

"""Prometheus metrics of the offer service, right with one worker or several.

With several uvicorn workers each process counts on its own;
`PROMETHEUS_MULTIPROC_DIR` (set by `python offer_service.py` when
`WORKERS` > 1) makes prometheus-client keep the counts in files that
`/metrics` adds up, whichever worker answers.
"""

from __future__ import annotations

import math
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from circuit_breaker import WindowCounts

STATE_VALUES = {"closed": 0, "open": 1, "half-open": 2}

CIRCUIT_STATE = Gauge(
    "circuit_breaker_state",
    "The circuit's state: 0 closed, 1 open, 2 half-open",
    ["breaker"],
    multiprocess_mode="livemostrecent",
)
CALLS = Counter(
    "circuit_breaker_calls",
    (
        "Calls through the breaker by outcome: success, failure, ignored (a 4xx), not-permitted "
        "(not attempted), cut-short (attempted, ended when the circuit opened), released (not made)"
    ),
    ["breaker", "outcome"],
)
TRANSITIONS = Counter(
    "circuit_breaker_transitions", "State changes of the circuit", ["breaker", "from_state", "to_state"]
)
PARTNER_LATENCY = Histogram(
    "partner_request_duration_seconds",
    "Time of calls that reached the partner, whatever their outcome",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
FALLBACKS = Counter("offer_fallbacks", "Cold offers served, by reason", ["reason"])
# The rate policy's window, read when /metrics is scraped (`observe_window`); absent with the
# consecutive policy. NaN, not 0, for a rate over no calls: 0 would claim "no failures" and
# hide that there is nothing to measure, while NaN makes `rate > 0.5` false and graphs gap.
# livemostrecent: the worker answering the scrape has just set them, its values win.
FAILURE_RATE = Gauge(
    "circuit_breaker_failure_rate",
    "Rate policy: the share of calls in the window that failed, 0-1; NaN when the window holds no calls",
    ["breaker"],
    multiprocess_mode="livemostrecent",
)
SLOW_CALL_RATE = Gauge(
    "circuit_breaker_slow_call_rate",
    (
        "Rate policy: the share of calls in the window that took CIRCUIT_SLOW_CALL_SECONDS or more, "
        "0-1; NaN when the window holds no calls"
    ),
    ["breaker"],
    multiprocess_mode="livemostrecent",
)
WINDOW_CALLS = Gauge(
    "circuit_breaker_window_calls",
    (
        "Rate policy: calls in the window (the fleet's with Redis state); "
        "below CIRCUIT_MIN_CALLS the rates do not count"
    ),
    ["breaker"],
    multiprocess_mode="livemostrecent",
)


def reason_label(reason: str) -> str:
    """`partner-status-503` -> `partner-status-5xx`: one series per class of status, not per code.

    A partner cycling through codes made 799 `offer_fallbacks_total` series;
    the exact code stays in the answer's `X-Fallback-Reason`.
    """
    prefix, _, status = reason.rpartition("-")
    if prefix == "partner-status" and len(status) == 3 and status.isdigit():
        return f"partner-status-{status[0]}xx"
    return reason


def observe_window(breaker: str, counts: WindowCounts | None) -> None:
    """Set the window's gauges from `AsyncCircuitBreaker.window_counts()`; None (the
    consecutive policy) sets nothing, so that no series of them is exported."""
    if counts is None:
        return
    FAILURE_RATE.labels(breaker).set(_share(counts.rate(counts.failures)))
    SLOW_CALL_RATE.labels(breaker).set(_share(counts.rate(counts.slow)))
    WINDOW_CALLS.labels(breaker).set(counts.calls)


def _share(rate: float | None) -> float:
    return math.nan if rate is None else rate


def render() -> tuple[bytes, str]:
    """The exposition text, summed over every worker when there are several."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST

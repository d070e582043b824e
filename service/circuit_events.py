"""What the dashboard and the metrics see of the circuit: transitions and outcomes.

One `CircuitObserver` per process listens to the breaker (a pybreaker
listener) and is told the outcome of every `/offer`. It keeps the last
transitions, per-second counts for the last 30 s, and pushes transitions to
the event stream's subscribers the moment they happen. Counting is a few
integer additions per request; the stream sends a snapshot a few times a
second however many requests there are.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import pybreaker

from service import metrics

# How a call ended, in circuit_breaker.py's words; `released`: the permit was handed
# back because this process could not make the call (partner_client.LocalResourceError).
Outcome = Literal["success", "failure", "ignored", "not-permitted", "cut-short", "released"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
WINDOW_SECONDS = 30
SNAPSHOT_INTERVAL = 0.25
# Each stream costs a snapshot four times a second: 1,500 readers took /offer's
# p99 from 5 ms to 288 ms. A dashboard needs a few; past this, 503.
MAX_EVENT_STREAMS = 32


class CircuitObserver(pybreaker.CircuitBreakerListener):
    def __init__(self, breaker_name: str) -> None:
        self._name = breaker_name
        self.transitions: deque[dict[str, str | None]] = deque(maxlen=50)
        self._per_second: deque[list[int]] = deque()  # [second, hot, cold, not permitted]
        self._subscribers: set[asyncio.Queue[dict[str, str | None]]] = set()
        # Label lookups take a lock and build a tuple: done once, not per request.
        self._calls = {o: metrics.CALLS.labels(breaker_name, o) for o in OUTCOMES}
        self._fallbacks: dict[str, Any] = {}
        metrics.CIRCUIT_STATE.labels(breaker_name).set(0)

    @property
    def name(self) -> str:
        """The `breaker` label of every series this observer sets."""
        return self._name

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        old = old_state.name if old_state else None
        transition = {"from": old, "to": new_state.name, "at": datetime.now(UTC).isoformat()}
        self.transitions.append(transition)
        metrics.TRANSITIONS.labels(self._name, old or "", new_state.name).inc()
        metrics.CIRCUIT_STATE.labels(self._name).set(metrics.STATE_VALUES[new_state.name])
        for queue in self._subscribers:
            if not queue.full():  # a stalled reader misses transitions, it never stalls the breaker
                queue.put_nowait(transition)

    def served(self, outcome: Outcome, reason: str | None = None) -> None:
        """Count one `/offer` answer: hot (success); cold after a failure, an ignored error, a
        cut-short call or a released permit; or cold because the call was not permitted."""
        self._calls[outcome].inc()
        if reason:
            label = metrics.reason_label(reason)
            fallbacks = self._fallbacks.get(label) or self._fallbacks.setdefault(
                label, metrics.FALLBACKS.labels(label)
            )
            fallbacks.inc()
        column = 1 if outcome == "success" else 3 if outcome == "not-permitted" else 2
        second = int(time.time())
        if not self._per_second or self._per_second[-1][0] != second:
            self._per_second.append([second, 0, 0, 0])
            while self._per_second[0][0] <= second - WINDOW_SECONDS:
                self._per_second.popleft()
        self._per_second[-1][column] += 1

    def recent(self) -> list[dict[str, int]]:
        """Hot, cold and not-permitted answers per second over the last 30 s, oldest first."""
        since = int(time.time()) - WINDOW_SECONDS
        return [
            {"t": s, "hot": hot, "cold": cold, "not_permitted": not_permitted}
            for s, hot, cold, not_permitted in self._per_second
            if s > since
        ]

    def clear(self) -> None:
        self.transitions.clear()
        self._per_second.clear()

    def subscribe(self) -> asyncio.Queue[dict[str, str | None]] | None:
        """A queue of transitions for one stream, or None when `MAX_EVENT_STREAMS` are open.
        Taken before the stream starts, so that many clients at once cannot all pass the count."""
        if len(self._subscribers) >= MAX_EVENT_STREAMS:
            return None
        queue: asyncio.Queue[dict[str, str | None]] = asyncio.Queue(maxsize=100)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, str | None]]) -> None:
        self._subscribers.discard(queue)

    async def events(
        self, queue: asyncio.Queue[dict[str, str | None]], snapshot: Callable[[], dict[str, Any]]
    ) -> AsyncIterator[dict[str, str]]:
        """Server-Sent Events: every transition as it happens, and a snapshot every 250 ms."""
        while True:
            yield {"event": "snapshot", "data": json.dumps({**snapshot(), "recent": self.recent()})}
            deadline = time.monotonic() + SNAPSHOT_INTERVAL
            while (left := deadline - time.monotonic()) > 0:
                try:
                    transition = await asyncio.wait_for(queue.get(), left)
                except TimeoutError:
                    break
                yield {"event": "transition", "data": json.dumps(transition)}

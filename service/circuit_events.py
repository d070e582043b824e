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
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
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
# The streams are open to anyone who reaches the port, and the dashboard is how an
# operator sees an incident. Measured before these bounds: 32 sockets from one
# address that read slowly or never kept the real dashboard at 503 for 30-55 s.
# So one client address holds a few streams at most (429 past it); when all are
# taken, a client holding fewer takes the oldest stream of the address holding
# the most; and no stream lives longer than this (EventSource reconnects by itself).
MAX_EVENT_STREAMS_PER_CLIENT = 4
MAX_STREAM_SECONDS = 300.0

Transition = dict[str, str | None]


class StreamRefused(Exception):
    """No stream for this client now: `status` 429 (its own cap) or 503 (all taken, fairly)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(eq=False)
class Subscription:
    """One event stream's slot: its transitions queue, whose it is, and until when."""

    client: str
    ends_at: float
    queue: asyncio.Queue[Transition] = field(default_factory=lambda: asyncio.Queue(maxsize=100))
    ended: bool = False  # given to another client: the stream ends within a snapshot interval


class CircuitObserver(pybreaker.CircuitBreakerListener):
    def __init__(self, breaker_name: str) -> None:
        self._name = breaker_name
        self.transitions: deque[Transition] = deque(maxlen=50)
        self._per_second: deque[list[int]] = deque()  # [second, hot, cold, not permitted]
        self._subscribers: list[Subscription] = []  # oldest first
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
        for subscription in self._subscribers:
            # A stalled reader misses transitions, it never stalls the breaker.
            if not subscription.queue.full():
                subscription.queue.put_nowait(transition)

    def served(self, outcome: Outcome, reason: str | None = None) -> None:
        """Count one `/offer` answer: hot (success); cold after a failure, an ignored error, a
        cut-short call or a released permit; or cold because the call was not permitted."""
        self._calls[outcome].inc()
        if reason:
            fallbacks = self._fallbacks.get(reason)
            if fallbacks is None:
                # Keyed by the reason itself, so that the label is worked out once per
                # reason; a few hundred at most (`partner-status-` and three digits).
                fallbacks = self._fallbacks[reason] = metrics.FALLBACKS.labels(metrics.reason_label(reason))
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

    def subscribe(self, client: str) -> Subscription:
        """A slot for one stream of `client` (its address), or `StreamRefused`.
        Taken before the stream starts, so that many clients at once cannot all pass the count."""
        mine = sum(1 for s in self._subscribers if s.client == client)
        if mine >= MAX_EVENT_STREAMS_PER_CLIENT:
            raise StreamRefused(
                429, f"{MAX_EVENT_STREAMS_PER_CLIENT} event streams from this address already"
            )
        if len(self._subscribers) >= MAX_EVENT_STREAMS:
            self._end(self._fair_victim(mine + 1))
        subscription = Subscription(client, time.monotonic() + MAX_STREAM_SECONDS)
        self._subscribers.append(subscription)
        return subscription

    def _fair_victim(self, would_hold: int) -> Subscription:
        """The oldest stream of the address holding the most, if it holds more than the
        newcomer would: an attacker's streams give way to the dashboard's, never the reverse."""
        held = Counter(s.client for s in self._subscribers)
        greediest, most = held.most_common(1)[0]
        if most <= would_hold:
            raise StreamRefused(503, f"{MAX_EVENT_STREAMS} event streams are open already")
        return next(s for s in self._subscribers if s.client == greediest)

    def _end(self, subscription: Subscription) -> None:
        subscription.ended = True
        self.unsubscribe(subscription)

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)

    async def events(
        self, subscription: Subscription, snapshot: Callable[[], dict[str, Any]]
    ) -> AsyncIterator[dict[str, str]]:
        """Server-Sent Events: every transition as it happens, and a snapshot every 250 ms,
        until the stream's life is over or its slot was given to another client."""
        while not subscription.ended and time.monotonic() < subscription.ends_at:
            yield {"event": "snapshot", "data": json.dumps({**snapshot(), "recent": self.recent()})}
            deadline = time.monotonic() + SNAPSHOT_INTERVAL
            while (left := deadline - time.monotonic()) > 0:
                try:
                    transition = await asyncio.wait_for(subscription.queue.get(), left)
                except TimeoutError:
                    break
                yield {"event": "transition", "data": json.dumps(transition)}

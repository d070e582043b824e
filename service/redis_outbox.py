"""What an instance has changed and Redis has not applied yet: the shared state's outbox.

A failure, a reset or a transition changes the instance's view at once and
joins the outbox as an entry `[op, the version it is based on, a count]`;
the writer sends the whole outbox as one batch (one Lua call, one round trip,
however many calls failed meanwhile). Failures and resets at one base
coalesce into one entry, so the outbox holds a handful of entries whatever
the request rate. A batch whose reply was lost stays in flight and is sent
again with its id: Redis applies it once.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("redis_state")

# Failures and resets coalesce into one entry, so the outbox holds a handful of
# entries whatever the load; this bound only matters if transitions pile up
# during a long outage, and the oldest of those are stale by then anyway.
MAX_OUTBOX = 64
COUNTS = ("failures", "reset-failures")  # entries that count failures in a row
NOT_TRANSITIONS = (*COUNTS, "window", "recount")  # the others are transitions
FORCED = ("force-open", "force-close", "hold")  # applied in Redis whatever their version


class Source(enum.Enum):
    """Where a snapshot of the record came from, which decides what it may undo here."""

    WRITE = "the reply to this instance's write"
    READ = "a read"
    MESSAGE = "a pub/sub message"
    SEED = "the start-up load or a seeding"


@dataclass(frozen=True, slots=True)
class Hold:
    """A Retry-After waiting in the outbox, with when it was heard (on the instance's clock)."""

    seconds: float
    heard: float


def has_transition(entries: list[list[Any]]) -> bool:
    return any(op not in NOT_TRANSITIONS for op, _, _ in entries)


class Outbox:
    """The entries not sent yet, and the batch in flight (sent, its reply not heard)."""

    def __init__(self) -> None:
        self.entries: list[list[Any]] = []  # [op, base version, count]
        self.in_flight: list[list[Any]] = []
        self.batch_id = 0
        self.dropped = 0
        self.wake = asyncio.Event()  # the writer's signal: something to send

    def send(self, op: str, base: int, count: int | str | Hold = 0) -> None:
        if len(self.entries) >= MAX_OUTBOX:
            self.entries.pop(0)
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("circuit updates dropped: %d so far (Redis unreachable too long)", self.dropped)
        self.entries.append([op, base, count])
        self.wake.set()

    def count(self, reset: bool, base: int) -> None:
        """Coalesce a failure or a reset into the last entry when it is a count at the same base."""
        last = self.entries[-1] if self.entries else None
        if last and last[0] in COUNTS and last[1] == base:
            if reset:
                last[0], last[2] = "reset-failures", 0
            else:
                last[2] += 1
            self.wake.set()
        else:
            self.send("reset-failures" if reset else "failures", base, 0 if reset else 1)

    def with_unsent_failures(self, counter: int, base: int) -> int:
        """Redis's count of failures in a row, plus what this instance has not sent at `base`."""
        for op, entry_base, count in self.entries:
            if entry_base == base and op in COUNTS:
                counter = count if op == "reset-failures" else counter + count
        return counter

    def pending(self) -> bool:
        return bool(self.in_flight or self.entries)

    def transitions_pending(self) -> bool:
        return has_transition(self.in_flight) or has_transition(self.entries)

    def still_to_apply(self, version: int, heard_version: int, source: Source) -> bool:
        """Whether writes made here and not in a snapshot at `version` would change what it says.

        A transition goes on top of a snapshot when it is forced (Redis applies it
        whatever the version) or based on the snapshot's version or a later one.
        Taking such a snapshot would roll this process's view back and forward
        again: an operator's open then close, back to back, were heard as
        closed->open->closed->open->closed when the reply to the open came in
        after the close was made here (its version is newer than this process
        had heard, so a check at the same version let it through). The reply
        to the write that carries them settles it, one round trip later.
        `heard_version`: the latest version this instance has heard.
        """
        if source is not Source.WRITE and version == heard_version and self.pending():
            return True
        return any(
            op in FORCED or (op not in NOT_TRANSITIONS and base >= version)
            for op, base, _ in (*self.in_flight, *self.entries)
        )

    def drop_holds(self) -> None:
        """A success closed the circuit: a Retry-After heard before, not sent yet, is over."""
        self.entries = [entry for entry in self.entries if entry[0] != "hold"]

    def next_batch(self) -> list[list[Any]]:
        """The batch to send: the one in flight if its reply was lost (sent again with its id,
        Redis applies it once), else the entries so far, as a new batch."""
        if not self.in_flight:
            self.batch_id += 1
            self.in_flight, self.entries = self.entries, []
        return self.in_flight

    def clear(self) -> None:
        """Everything here was based on a generation the fleet has left."""
        self.entries.clear()
        self.in_flight = []


def batch_args(batch: list[list[Any]], clock: Callable[[], float]) -> list[Any]:
    """The batch's entries as the script's arguments, three each. A hold leaves with what is
    left of it now (a hold heard during an outage counts from then), or not at all."""
    args: list[Any] = []
    for op, base, count in batch:
        if isinstance(count, Hold):
            left = int((count.seconds - (clock() - count.heard)) * 1000)
            if left <= 0:
                continue
            count = left
        args += [op, base, count]
    return args

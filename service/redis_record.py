"""The circuit's record in Redis, read as input.

Anyone with access to Redis can write the record, and so can a later version
of this code: a field this version cannot read (`hold_ms=abc`) once ended the
background task with no log line while `/health` said "ok" and the instance
stopped hearing the fleet. Every snapshot is checked here, and a field that
is not what this version writes raises `UnreadableRecord` naming it; the
shared state then logs one line and writes its own view over the record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pybreaker


@dataclass(frozen=True)
class Shared:
    """The circuit as Redis holds it; `open_age` is measured on Redis's clock."""

    state: str
    fail_counter: int
    open_age: float | None
    version: int
    exists: bool
    seq: int
    hold: float  # the open period lasts at least this long from its start (a Retry-After)
    seeded: str = ""  # the seeding's id, if an instance wrote it again after Redis lost it

    @classmethod
    def parse(cls, fields: list[Any]) -> Shared:
        """The snapshot's fields, checked: the record is input (anyone with access to Redis, or
        a later version of this code, may have written it), so a field that is not what
        this version writes raises `UnreadableRecord` naming it, never a bare ValueError."""
        state, counter, age, version, exists, seq, hold_ms = (
            f.decode(errors="replace") if isinstance(f, bytes) else str(f) for f in fields[:7]
        )
        if state not in STATES:
            raise UnreadableRecord("state", state)
        return cls(
            state,
            _number("fail_counter", counter),
            _number("opened_at", age) / 1000 if age else None,
            _number("version", version),
            exists == "1",
            _number("seq", seq),
            _number("hold_ms", hold_ms) / 1000,
            _seeding(fields[7] if len(fields) > 7 else "0"),
        )


class UnreadableRecord(ValueError):
    """A field of the circuit's record in Redis that this version cannot read."""

    def __init__(self, field: str, value: str) -> None:
        super().__init__(f"{field}={value[:40]!r}")
        self.field = field


def _seeding(field: Any) -> str:
    seeded = field.decode(errors="replace") if isinstance(field, bytes) else str(field)
    return "" if seeded == "0" else seeded


STATES = (pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN)


def _number(field: str, value: str) -> int:
    # ASCII digits only: int() also takes "١٢" and " 12_0 ", which no version of this code writes.
    digits = value[1:] if value.startswith("-") else value
    if not (digits.isascii() and digits.isdigit()):
        raise UnreadableRecord(field, value)
    return int(value)


def settings_in_use(policy: str, fail_max: str, window_ms: str, reset_ms: str) -> dict[str, str]:
    """The settings a user sets, by the names they set them with, as far as they decide the trip."""
    rule = (
        ("CIRCUIT_WINDOW", f"{int(window_ms) / 1000:g}")
        if policy == "rate"
        else ("CIRCUIT_FAIL_MAX", fail_max)
    )
    reset = f"{int(reset_ms or 0) / 1000:g}"
    return {"CIRCUIT_POLICY": policy, rule[0]: rule[1], "CIRCUIT_RESET_TIMEOUT": reset}


def settings_warning(name: str, theirs: dict[str, str], ours: dict[str, str]) -> str | None:
    """One line, in the settings' own names, when the first instance that wrote the record
    had other settings. A mixed fleet stays safe: every instance trips on its own rule
    (failures in a row counted fleet-wide, or the fleet's window), either's trip opens
    the fleet, and only a trial's success or an operator's reset closes it. The window
    is the first writer's width, whatever CIRCUIT_WINDOW says here."""
    differ = list(dict.fromkeys(n for n in (*theirs, *ours) if theirs.get(n) != ours.get(n)))
    if not differ:
        return None

    def say(settings: dict[str, str]) -> str:
        return " ".join(f"{n}={settings[n]}" for n in differ if n in settings)

    return (
        f"circuit {name!r} is shared with instances that use {say(theirs)}; this one uses "
        f"{say(ours)}: each trips on its own rule, either's trip opens the fleet, trials follow "
        "each one's reset timeout, and the fleet's window is the first one's"
    )

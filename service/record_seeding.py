"""Writing the circuit's record again from an instance's view, when Redis lost it.

A flush, an eviction, a `DEL` or a failover to a replica that missed writes
leaves Redis with no circuit, or an older one; a record may also hold a field
this version cannot read. The first instance to notice writes its own view
(`seed.lua`): open wins, with its Retry-After hold, and half-open counts as
open from now (its trial's lease is gone with the record). An instance that
finds the record seeded already keeps it, unless its own view is open and
the seeded one closed. Each seeding has an id, kept in the record until the
next transition, so that every instance adds its calls of the last window
again once per seeding (`service/fleet_window.py`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pybreaker
from redis.asyncio import Redis, RedisCluster

from service import redis_scripts as scripts
from service.redis_calls import shielded
from service.redis_record import Shared


@dataclass(frozen=True, slots=True)
class View:
    """What an instance knows of the circuit: the seed it would write."""

    state: str
    fail_counter: int
    open_age: float | None  # how long it has been open, on the instance's clock
    hold: float  # the open period's Retry-After hold
    version: int
    seq: int


class Seeder:
    def __init__(self, client: Redis | RedisCluster, keys: list[str], channel: str) -> None:
        self._seed = client.register_script(scripts.SEED)
        self._keys = keys
        self._channel = channel

    async def seed(self, view: View, replace: bool) -> tuple[bool, Shared]:
        """Seed the record from `view` (`replace`: over one that cannot be read). Whether this
        instance seeded it (False: another had, first), and the record as Redis has it now."""
        is_open = view.state != pybreaker.STATE_CLOSED
        # Half-open counts as open, from now: its trial's lease is gone with the record.
        opened = view.state == pybreaker.STATE_OPEN
        age = view.open_age if opened and view.open_age is not None else 0.0
        args = [
            self._channel,
            "open" if is_open else "closed",
            view.fail_counter,
            int(age * 1000),
            view.version,
            view.seq,
            int(replace),
            int(view.hold * 1000),  # 0 but in an open view: every transition ends a hold
            uuid.uuid4().hex,  # this seeding's id
        ]
        reply = await shielded(self._seed(keys=self._keys, args=args))
        return reply[0] != b"found", Shared.parse(reply[1:])

"""The fleet's one half-open trial: a lease in Redis, asked for once per reset timeout.

When the reset timeout has passed, the caller that wins the lease (SET NX
with an expiry, so a prober that crashes cannot wedge the circuit) makes the
trial call; every other caller in the fleet gets the fallback. A released
lease is published, so instances that were told "busy" may try again at
once; until then, an instance told "busy" answers "busy" itself, with no
round trip, for as long as the lease can last.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis, RedisCluster

from service import redis_scripts as scripts
from service.redis_calls import shielded


class TrialLease:
    """This instance's side of the fleet's trial lease. `release_late(token)` hands back a
    lease that Redis granted to a caller who had given up by then."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        keys: list[str],
        channel: str,
        owner: str,
        reset_timeout_ms: int,
        lease_ms: int,
        clock: Callable[[], float],
        release_late: Callable[[str], None],
    ) -> None:
        self._acquire = client.register_script(scripts.ACQUIRE_TRIAL)
        self._release = client.register_script(scripts.RELEASE_TRIAL)
        self._keys = keys
        self._channel = channel
        self._owner = owner
        self._reset_timeout_ms = reset_timeout_ms
        self._lease_ms = lease_ms
        self._clock = clock
        self._release_late = release_late
        self.busy_until: float | None = None  # another instance holds the lease
        self._grants = 0  # leases asked for: each grant's token is "owner:n"
        self._token = ""

    def told_busy(self) -> bool:
        return self.busy_until is not None and self._clock() < self.busy_until

    def heard_change(self) -> None:
        self.busy_until = None  # something changed in the fleet: a released lease, say

    async def ask(self) -> tuple[str, list[Any], str]:
        """Redis's verdict, the circuit's snapshot and this grant's token: one round trip.
        A caller cancelled meanwhile gets its CancelledError at once, and a lease Redis
        granted anyway goes back."""
        self._grants += 1
        token = f"{self._owner}:{self._grants}"
        args: list[str | int] = [self._channel, self._reset_timeout_ms, self._lease_ms, token, self._owner]
        call = asyncio.ensure_future(self._acquire(keys=self._keys, args=args))
        try:
            reply = await shielded(call, cancel_inner=False)
        except asyncio.CancelledError:
            call.add_done_callback(lambda done: self._release_if_granted(done, token))
            raise
        return reply[0].decode(), reply[1:], token

    def settle(self, verdict: str, token: str) -> None:
        """The verdict's snapshot was heard: remember a refusal, or the grant to release."""
        if verdict == "busy":
            self.busy_until = self._clock() + self._lease_ms / 1000
        elif verdict == "granted":
            self._token = token

    def release(self, token: str | None = None) -> Any:
        """The round trip that hands the lease back (this grant's, or the last one)."""
        return self._release(keys=self._keys, args=[self._channel, token or self._token])

    def _release_if_granted(self, call: asyncio.Future[Any], token: str) -> None:
        if not call.cancelled() and call.exception() is None and call.result()[0] == b"granted":
            self._release_late(token)

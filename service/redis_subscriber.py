"""How an instance hears the fleet's changes: pub/sub, and a read every refresh.

Every write script PUBLISHes the circuit's new snapshot; each instance
subscribes, and reads the record every refresh interval to catch a message
pub/sub dropped. A pub/sub connection that drops (a `CLIENT KILL`, a proxy's
idle timeout) is not an outage while Redis answers a read: the instance
subscribes again and carries on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from service.redis_calls import retrieve, shielded
from service.redis_record import Shared

log = logging.getLogger("redis_state")

Heard = Callable[[Shared], None]


class Subscriber:
    """Follows the circuit's channel until `stopping()`; `read` reads the record, and raises
    if Redis itself is gone (the supervisor's outage, not this module's)."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        channel: str,
        read: Callable[[], Awaitable[Shared]],
        on_message: Heard,
        on_read: Heard,
        stopping: Callable[[], bool],
    ) -> None:
        self._client = client
        self._channel = channel
        self._read = read
        self._on_message = on_message
        self._on_read = on_read
        self._stopping = stopping

    async def follow(self, refresh: float, reconnect: float) -> None:
        while not self._stopping():
            try:
                await self._subscribed(refresh)
            except (RedisError, OSError) as exc:
                if self._stopping():
                    return
                # Paced, so that a subscribe Redis keeps refusing (an ACL, say) is no busy loop;
                # the read then catches whatever was published meanwhile.
                await asyncio.sleep(reconnect)
                self._on_read(await self._read())  # raises if Redis itself is gone
                log.info("pub/sub connection lost (%r): subscribed again", exc)

    async def _subscribed(self, refresh: float) -> None:
        pubsub = self._client.pubsub()
        try:
            await shielded(pubsub.subscribe(self._channel))
            refresh_at = time.monotonic() + refresh
            while not self._stopping():
                message = await shielded(
                    pubsub.get_message(ignore_subscribe_messages=True, timeout=refresh / 4)
                )
                if message is not None:
                    self._on_message(Shared.parse(message["data"].split(b",")))
                if time.monotonic() >= refresh_at:
                    self._on_read(await self._read())
                    refresh_at = time.monotonic() + refresh
        finally:
            closing = asyncio.ensure_future(pubsub.aclose())
            closing.add_done_callback(retrieve)

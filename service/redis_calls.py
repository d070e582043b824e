"""Round trips to Redis that a cancellation always ends.

With redis-py 8.1 on Python 3.11, a task cancelled while it awaits a reply
often goes on running: in a loop of EVALSHAs through `register_script`, 176
of 200 cancelled tasks kept running on 3.11.7, and 34 of 50 around
`pubsub.subscribe`; on 3.12.1 with the same redis-py, none
(`tools/bench/cancel_swallow.py` measures it). The symptom is the one of
redis/redis-py#2028 and #2551; the exact line in the client is not pinned
down here. So every round trip of the shared state is awaited through
`shielded`, which delivers the caller's cancellation whatever the client
does with its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


async def shielded(awaitable: Awaitable[T], cancel_inner: bool = True) -> T:
    """Await `awaitable` so that a cancellation of the caller always takes effect.

    The Redis call runs as its own task; if the caller is cancelled, the
    shield raises `CancelledError` in the caller at once, even if the client
    swallows the cancellation it passes on to the call (see the module
    docstring). The abandoned call ends by itself within the socket timeout;
    `cancel_inner=False` lets it finish, for a caller that must see its result.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if cancel_inner:
            task.cancel()
        task.add_done_callback(retrieve)
        raise


def retrieve(task: asyncio.Future[Any]) -> None:
    """A done callback for a call nobody awaits any more: its error is expected, and must not
    be logged as never retrieved."""
    if not task.cancelled():
        task.exception()

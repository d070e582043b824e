"""How often a cancelled redis-py call keeps its task running: the reason redis_state.py
awaits every round trip through `asyncio.shield`.

    python tools/bench/cancel_swallow.py [REDIS_URL]     # default redis://127.0.0.1:6379/0

Run it with each Python (`python3.11`, `python3.12`...) to compare.
"""

from __future__ import annotations

import asyncio
import random
import sys

import redis
import redis.asyncio as aredis

URL = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"


async def kept_running(kind: str) -> bool:
    """Cancel a task looping on `kind` at a random moment: does it go on?"""
    client = aredis.Redis.from_url(URL, socket_timeout=0.25)
    script = client.register_script("return redis.call('TIME')")
    stop = False

    async def loop() -> None:
        while not stop:
            if kind == "evalsha":
                await script()
            else:
                ps = client.pubsub()
                await ps.subscribe("swallow-test")
                await ps.aclose()

    task = asyncio.create_task(loop())
    await asyncio.sleep(random.uniform(0.001, 0.02))
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.5)
    stop = True
    await asyncio.wait({task}, timeout=1.0)
    await client.aclose()
    return not done


async def main() -> None:
    for kind, n in (("evalsha", 200), ("subscribe", 50)):
        swallowed = sum([await kept_running(kind) for _ in range(n)])
        version = sys.version.split()[0]
        print(
            f"Python {version}, redis-py {redis.__version__}: {kind}: {swallowed} of {n} cancelled tasks kept running"
        )


if __name__ == "__main__":
    asyncio.run(main())

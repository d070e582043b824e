"""Shared fixtures: real services on free ports and a throwaway Redis server."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis

from circuit_breaker import AsyncCircuitBreaker
from offer_service import build_breaker, reach_redis, start_shared_state
from service.settings import OfferSettings
from tools import warm_starts
from tools.processes import EditablePartner, RedisClusterServers, RedisServer, redis_server_binary


def pytest_configure() -> None:
    """Services start warm here: their libraries imported once per test process (tools/warm_starts.py)."""
    warm_starts.enable()


REDIS_HINT = "no redis-server on PATH: install it (apt-get install redis-server) to run the Redis tests"


@pytest.fixture(scope="session")
def redis_binary() -> str:
    binary = redis_server_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(f"{REDIS_HINT}; in CI no Redis test may be skipped")
        pytest.skip(REDIS_HINT)
    return binary


@pytest.fixture(scope="session")
def faketime_binary() -> str:
    """libfaketime's `faketime`, to run a service whose wall clock is off."""
    binary = shutil.which("faketime")
    if binary is None:
        hint = "no faketime on PATH: install it (apt-get install faketime) to run the clock-skew tests"
        if os.environ.get("CI"):
            pytest.fail(f"{hint}; in CI no test may be skipped")
        pytest.skip(hint)
    return binary


@pytest.fixture
def redis_server(redis_binary: str, tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(redis_binary, tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def editable_partner(tmp_path: Path) -> Iterator[EditablePartner]:
    """The partner with reload, from a copy of the project a test may edit."""
    workdir = tmp_path / "partner"
    workdir.mkdir()
    with EditablePartner(workdir) as partner:
        yield partner


@pytest.fixture
def redis_cluster(redis_binary: str, tmp_path: Path) -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers(redis_binary, tmp_path).start()
    yield cluster
    cluster.stop()


Fleet = Callable[..., Awaitable[AsyncCircuitBreaker]]


@pytest.fixture
async def fleet(redis_server: RedisServer) -> AsyncIterator[Fleet]:
    """Makes breakers that share `redis_server`, as separate instances of the service would.

    `fleet(url=...)` points one at another address (a delay proxy, say); other
    keywords are settings (`circuit_fail_max`, `circuit_reset_timeout`, ...)
    or `clock`. Every breaker is stopped at the end, each within its bound."""
    made: list[AsyncCircuitBreaker] = []

    async def make(
        url: str | None = None, clock: Callable[[], float] | None = None, **settings: object
    ) -> AsyncCircuitBreaker:
        values: dict[str, object] = {"circuit_fail_max": 3, "redis_url": url or redis_server.url, **settings}
        options = {"clock": clock} if clock else {}
        config = OfferSettings(**values)
        assert config.redis_url is not None
        breaker = build_breaker(
            config,
            # As the service starts: the connection and the first load tried again until
            # Redis answers (a delay proxy on a loaded machine can overrun the 0.25 s of a try).
            await reach_redis(config.redis_url, config.redis_startup_seconds),
            **options,  # type: ignore[arg-type]
        )
        assert breaker.shared is not None
        await start_shared_state(breaker.shared, config)
        made.append(breaker)
        return breaker

    yield make
    for breaker in made:
        assert breaker.shared is not None
        await breaker.shared.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client of `redis_server`, to look at or tamper with what the breakers wrote."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()

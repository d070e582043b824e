"""Shared fixtures: real services on free ports and a throwaway Redis server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import EditablePartner, RedisClusterServers, RedisServer, redis_server_binary

REDIS_HINT = "no redis-server on PATH: install it (apt-get install redis-server) to run the Redis tests"


@pytest.fixture(scope="session")
def redis_binary() -> str:
    binary = redis_server_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(f"{REDIS_HINT}; in CI no Redis test may be skipped")
        pytest.skip(REDIS_HINT)
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

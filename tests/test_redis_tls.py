"""A circuit shared through a `redis-server` that speaks TLS only, with a certificate made here."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.breakers import eventually, trip
from tests.conftest import Fleet
from tools.processes import TlsFiles, TlsRedisServer, uvicorn_service


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    if shutil.which("openssl") is None:
        pytest.fail("no openssl on PATH: it makes the test certificates")
    return TlsFiles(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_redis(redis_binary: str, tls_files: TlsFiles, tmp_path: Path) -> Iterator[TlsRedisServer]:
    server = TlsRedisServer(redis_binary, tmp_path, tls_files).start()
    yield server
    server.stop()


async def test_instances_share_one_circuit_through_a_tls_only_redis(
    fleet: Fleet, tls_redis: TlsRedisServer
) -> None:
    first = await fleet(url=tls_redis.url)
    second = await fleet(url=tls_redis.url)
    await trip(first, alone=True)
    # The second made no call: open, it can only have heard the trip through Redis.
    await eventually(lambda: second.state_name == "open", within=10, what="the trip heard over TLS")


def start_up_error(url: str, log_dir: Path) -> str:
    """The offer service's output when it is started with `REDIS_URL=url` and must refuse."""
    service = uvicorn_service("offer_service:app", env={"REDIS_URL": url}, log_dir=log_dir)
    with pytest.raises(RuntimeError):
        service.start(timeout=15)
    return service.log()


def assert_one_line(log: str, expected: str) -> None:
    errors = [line for line in log.splitlines() if "error: REDIS_URL=" in line]
    assert len(errors) == 1, log
    assert expected in errors[0], log
    assert "Traceback" not in log


def test_a_certificate_from_another_authority_stops_start_up_with_one_line(
    tls_redis: TlsRedisServer, tls_files: TlsFiles, tmp_path: Path
) -> None:
    url = f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_ca_certs={tls_files.other_ca}"
    assert_one_line(start_up_error(url, tmp_path), "the TLS handshake failed (CERTIFICATE_VERIFY_FAILED)")


def test_a_missing_certificate_file_stops_start_up_with_one_line_naming_it(
    tls_redis: TlsRedisServer, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "ca.pem"
    url = f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_ca_certs={missing}"
    assert_one_line(start_up_error(url, tmp_path), f"ssl_ca_certs={missing} is not a file")

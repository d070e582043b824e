"""Local trouble is not the partner's fault: when the offer service cannot open a
connection because of its own limits (open files, its connection pool), the answer is a
fallback that says so, the breaker counts nothing, and the log says it once per burst."""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from service.partner_client import LocalResourceError, OncePerBurst, PartnerClient, PartnerFailure
from tests.breakers import PATIENCE
from tools.processes import RedisServer, Service, uvicorn_service, wait_for, with_open_files_limit

OPEN_FILES_LIMIT = 48
FIRST_LINE = "(not counted against the partner)"


def failing_connect(error: OSError) -> PartnerClient:
    """A client whose every connect fails the way aiohttp and the transport report it."""

    async def handler(request: httpx.Request) -> httpx.Response:
        try:
            raise error
        except OSError as exc:
            raise httpx.ConnectError("Cannot connect to host") from exc

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://partner")
    return PartnerClient(client, timeout=1)


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.EADDRNOTAVAIL])
async def test_running_out_of_descriptors_or_buffers_is_local(code: int) -> None:
    with pytest.raises(LocalResourceError) as trouble:
        await failing_connect(OSError(code, "out of something")).fetch_hot_offer()
    assert trouble.value.reason == "local-resource-exhausted"


@pytest.mark.parametrize("code", [errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH])
async def test_the_partners_own_connection_trouble_is_still_a_failure(code: int) -> None:
    with pytest.raises(PartnerFailure, match="partner-connection-error"):
        await failing_connect(OSError(code, "partner trouble")).fetch_hot_offer()


async def test_a_call_past_the_connection_limit_fails_at_once_as_local() -> None:
    release = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, stream=httpx.ByteStream(b"Hot offer 00:00"))

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://partner")
    deadline = 10.0  # what a call queued behind the slow one would wait before it failed
    partner = PartnerClient(client, timeout=deadline, max_connections=1)
    holder = asyncio.create_task(partner.fetch_hot_offer())
    await asyncio.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(LocalResourceError, match="connections to the partner in use"):
        await partner.fetch_hot_offer()
    took = time.monotonic() - started
    # Milliseconds when refused at once; the whole deadline when queued. Half of it tells
    # them apart on any machine.
    assert took < deadline / 2, f"refused after {took:.3f}s: it queued behind the slow call"
    release.set()
    assert await holder == "Hot offer 00:00"
    assert await partner.fetch_hot_offer() == "Hot offer 00:00"  # the connection is free again


async def test_a_burst_is_logged_once_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test_burst")
    burst = OncePerBurst(logger, "out of files", interval=0.1)
    with caplog.at_level(logging.WARNING, "test_burst"):
        for _ in range(1000):
            burst.occurred("Too many open files")
        await asyncio.sleep(0.15)
        burst.occurred("Too many open files")
        await asyncio.sleep(0.25)  # a summary, then a quiet interval ends the burst
        burst.occurred("Too many open files")
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "out of files: Too many open files (not counted against the partner)",
        "out of files: 999 more times in the last 0.1s",
        "out of files: 1 more times in the last 0.1s",
        "out of files: Too many open files (not counted against the partner)",
    ]


def starved(service: Service) -> Service:
    return with_open_files_limit(service, OPEN_FILES_LIMIT)


@pytest.fixture
def partner(tmp_path: Path) -> Iterator[Service]:
    # Slow enough that concurrent calls each need a connection of their own.
    with uvicorn_service(
        "partner_offer_service:app", env={"PARTNER_LATENCY": "0.2"}, log_dir=tmp_path
    ) as service:
        yield service


def flood(service: Service, rounds: int = 5) -> Counter[str]:
    """As many kept-alive client connections as the service has descriptors to spare, each
    asking for offers at once: no descriptor is left for connecting to the partner.

    The connections are opened first: a server at its limit cannot accept new ones
    (uvloop accepts and closes them), and the test is about the partner's side.
    """
    assert service.process is not None
    spare = OPEN_FILES_LIMIT - psutil.Process(service.process.pid).num_fds()
    clients = [httpx.Client(base_url=service.url, timeout=30) for _ in range(spare - 3)]
    ready = threading.Barrier(len(clients))

    def ask(client: httpx.Client) -> list[str]:
        client.get("/health")  # this client's connection, accepted while descriptors remain
        ready.wait(timeout=20)
        answers = []
        for _ in range(rounds):
            response = client.get("/offer")
            assert response.status_code == 200
            answers.append(response.headers.get("x-fallback-reason", "hot"))
        return answers

    try:
        with ThreadPoolExecutor(len(clients)) as pool:
            return Counter(reason for answers in pool.map(ask, clients) for reason in answers)
    finally:
        for client in clients:
            client.close()
        # The service frees those descriptors only once its loop has read each close: until
        # then a new connection is accepted and reset at once, which is the flood, not the test.
        wait_for(
            lambda: service.get("/health").status_code == 200,
            timeout=10,
            what=f"{service.url} accepting connections again after the flood's closed",
        )


def assert_closed_with_nothing_counted(service: Service) -> None:
    circuit = service.get("/offer/circuit").json()
    assert (circuit["current_state"], circuit["fail_counter"]) == ("closed", 0)


def lines_with(service: Service, text: str) -> Callable[[], list[str]]:
    return lambda: [line for line in service.log().splitlines() if text in line]


@pytest.mark.timeout(90)
def test_out_of_open_files_serves_fallbacks_and_keeps_the_circuit_closed(
    partner: Service, tmp_path: Path
) -> None:
    env = {"PARTNER_OFFER_URL": partner.url, "PARTNER_TIMEOUT": "2", "CIRCUIT_FAIL_MAX": "3"}
    with starved(uvicorn_service("offer_service:app", env=env, log_dir=tmp_path)) as offers:
        answers = flood(offers)
        print(answers)
        assert set(answers) <= {"hot", "local-resource-exhausted"}
        assert answers["local-resource-exhausted"] >= 3
        assert_closed_with_nothing_counted(offers)
        first = lines_with(offers, FIRST_LINE)()
        assert len(first) == 1
        assert "Too many open files" in first[0]
        summary = wait_for(
            lines_with(offers, "more times in the last"), timeout=20, what="the burst's summary"
        )
        assert f"{answers['local-resource-exhausted'] - 1} more times" in summary[0]
        # Descriptors free again: the partner is called as before.
        assert offers.get("/offer").headers["x-offer-source"] == "partner"


@pytest.mark.timeout(90)
def test_a_starved_instance_does_not_open_the_fleets_circuit(
    partner: Service, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {"PARTNER_OFFER_URL": partner.url, "REDIS_URL": redis_server.url, "CIRCUIT_FAIL_MAX": "3"}
    with (
        uvicorn_service("offer_service:app", env=env, log_dir=tmp_path) as healthy,
        starved(uvicorn_service("offer_service:app", env=env, log_dir=tmp_path)) as short,
    ):
        answers = flood(short)
        print(answers)
        assert answers["local-resource-exhausted"] >= 3
        wait_for(lines_with(short, FIRST_LINE), timeout=PATIENCE, what="the local trouble logged")
        for instance in (healthy, short):
            assert_closed_with_nothing_counted(instance)
        assert healthy.get("/offer").headers["x-offer-source"] == "partner"

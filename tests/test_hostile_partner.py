"""A partner that answers badly on purpose: each answer gets the fallback, counts as the
README says, and never a 500 or a stuck request."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.processes import Service, free_port, uvicorn_service

PARTNER_TIMEOUT = 0.5
Behaviour = Callable[[asyncio.StreamWriter], Awaitable[None]]


def head(status: str, content_type: str = "text/plain", length: int | None = None, extra: str = "") -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else ""
    return f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{size}{extra}Connection: close\r\n\r\n".encode()


async def empty(writer: asyncio.StreamWriter) -> None:
    writer.write(head("200 OK", length=0))


async def invalid_utf8(writer: asyncio.StreamWriter) -> None:
    writer.write(head("200 OK", length=4) + b"\xff\xfe\xfa\xfb")


async def ten_megabytes(writer: asyncio.StreamWriter) -> None:
    size = 10 * 1024 * 1024
    writer.write(head("200 OK", length=size))
    chunk = b"x" * 65536
    for _ in range(size // len(chunk)):
        writer.write(chunk)
        await writer.drain()


async def drip(writer: asyncio.StreamWriter) -> None:
    writer.write(head("200 OK", length=100))
    for _ in range(100):
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(0.05)  # each byte far inside any read timeout, the whole far beyond


async def wrong_content_type(writer: asyncio.StreamWriter) -> None:
    body = b'{"offer": "Hot offer 00:00"}'
    writer.write(head("200 OK", content_type="application/json", length=len(body)) + body)


async def redirect_loop(writer: asyncio.StreamWriter) -> None:
    writer.write(head("302 Found", length=0, extra="Location: /offer/hot\r\n"))


async def too_many_requests(writer: asyncio.StreamWriter) -> None:
    writer.write(head("429 Too Many Requests", length=0, extra="Retry-After: 30\r\n"))


async def reset_mid_body(writer: asyncio.StreamWriter) -> None:
    writer.write(head("200 OK", length=100) + b"Hot off")
    await writer.drain()
    writer.transport.abort()


async def not_found(writer: asyncio.StreamWriter) -> None:
    writer.write(head("404 Not Found", length=0))


class HostilePartner:
    """An HTTP server, in a thread of the test process, whose answer a test chooses."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.behaviour: Behaviour = empty
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await self.behaviour(writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> HostilePartner:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostilePartner]:
    with HostilePartner() as partner:
        yield partner


@pytest.fixture(scope="module")
def offers(hostile: HostilePartner, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    env = {
        "PARTNER_OFFER_URL": hostile.url,
        "PARTNER_TIMEOUT": str(PARTNER_TIMEOUT),
        "CIRCUIT_FAIL_MAX": "1000",
    }
    log_dir: Path = tmp_path_factory.mktemp("hostile")
    with uvicorn_service("offer_service:app", env=env, log_dir=log_dir) as service:
        yield service


CASES = [
    (empty, "partner-bad-body", "failure"),
    (invalid_utf8, "partner-bad-body", "failure"),
    (ten_megabytes, "partner-bad-body", "failure"),
    (drip, "partner-timeout", "failure"),
    (wrong_content_type, "partner-bad-body", "failure"),
    (redirect_loop, "partner-status-302", "failure"),
    (too_many_requests, "partner-status-429", "failure"),
    (reset_mid_body, "partner-connection-error", "failure"),
    (
        not_found,
        "partner-status-404",
        "success",
    ),  # a business "no": excluded, which pybreaker counts as a success
]


@pytest.mark.parametrize(
    ("behaviour", "reason", "counts_as"), CASES, ids=[case[0].__name__ for case in CASES]
)
def test_a_hostile_answer_gets_the_fallback_and_counts(
    hostile: HostilePartner, offers: Service, behaviour: Behaviour, reason: str, counts_as: str
) -> None:
    before = offers.get("/offer/circuit").json()["fail_counter"]
    hostile.behaviour = behaviour
    started = time.monotonic()
    response = offers.get("/offer")
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.json().startswith("Cold offer fallback ")
    assert response.headers["x-fallback-reason"] == reason
    assert elapsed < PARTNER_TIMEOUT + 0.5
    expected = before + 1 if counts_as == "failure" else 0
    assert offers.get("/offer/circuit").json()["fail_counter"] == expected


async def informational_status(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHot offer 00:00")


async def not_http(writer: asyncio.StreamWriter) -> None:
    writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")


@pytest.mark.parametrize("behaviour", [informational_status, not_http])
def test_an_answer_that_is_not_http_is_a_protocol_failure(
    hostile: HostilePartner, offers: Service, behaviour: Behaviour
) -> None:
    hostile.behaviour = behaviour
    response = offers.get("/offer")
    assert response.status_code == 200
    assert response.headers["x-fallback-reason"] in ("partner-protocol-error", "partner-connection-error")

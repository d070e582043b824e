"""What a client can make a service hold: bodies, headers, idle connections and event streams.

Against real processes, started the ways the README gives: `uvicorn ...` with
the flags of `http_limits.UVICORN_FLAGS`, and `python offer_service.py` (what
`make demo` runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from service import circuit_events, circuit_routes, http_limits
from service.circuit_events import MAX_EVENT_STREAMS, MAX_EVENT_STREAMS_PER_CLIENT, CircuitObserver
from tools.processes import Service, copy_project, free_port, uvicorn_service, wait_for

TOKEN = "limits-test-token-0123456789abcdef"
BIG = 256 * 1024 * 1024


def limited(app: str, tmp_path: Path, **env: str) -> Service:
    service = uvicorn_service(app, env={"ADMIN_TOKEN": TOKEN, **env}, log_dir=tmp_path)
    service.args += http_limits.UVICORN_FLAGS.split()
    return service


@pytest.fixture
def partner(tmp_path: Path) -> Iterator[Service]:
    with limited("partner_offer_service:app", tmp_path) as service:
        yield service


@pytest.fixture
def offers(partner: Service, tmp_path: Path) -> Iterator[Service]:
    with limited("offer_service:app", tmp_path, PARTNER_OFFER_URL=partner.url) as service:
        yield service


@pytest.fixture
def demo_offers(partner: Service, tmp_path: Path) -> Iterator[Service]:
    """`python offer_service.py`, as `make demo` runs it (from a copy: reload watches its folder)."""
    workdir = copy_project(tmp_path)
    env = {"ADMIN_TOKEN": TOKEN, "PARTNER_OFFER_URL": partner.url}
    with Service([sys.executable, "offer_service.py"], free_port(), env, cwd=workdir, log_dir=tmp_path) as s:
        yield s


def connect(service: Service) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    return sock


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def serving_process(service: Service) -> psutil.Process:
    """The process that serves requests: uvicorn itself, or the reloader's child."""
    assert service.process is not None
    root = psutil.Process(service.process.pid)
    children = root.children(recursive=True)
    return children[-1] if children else root


def peak_rss_mib(process: psutil.Process) -> float:
    """The process's peak resident memory (VmHWM, Linux), which a brief spike cannot hide from."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def put_head(path: str, length: int, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{auth}Content-Length: {length}\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(("service_name", "path"), [("offers", "/partner/chaos"), ("partner", "/chaos")])
def test_an_unauthenticated_huge_put_is_refused_before_its_body_is_read(
    request: pytest.FixtureRequest, service_name: str, path: str
) -> None:
    service: Service = request.getfixturevalue(service_name)
    process = serving_process(service)
    before = peak_rss_mib(process)
    with connect(service) as sock:
        sock.sendall(put_head(path, BIG))  # and not one byte of the body
        answer = read_answer_or_first(sock)
    # Answered from the head alone: 413 from the length (the body cap wins over the 401).
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    # Now send the 256 MiB anyway, as an attacker would.
    with connect(service) as sock:
        sock.sendall(put_head(path, BIG))
        chunk = b"x" * (1024 * 1024)
        try:
            for _ in range(BIG // len(chunk)):
                sock.sendall(chunk)
        except OSError:
            pass  # the server closed the connection: what it should do
    assert service.get("/health").status_code == 200
    assert peak_rss_mib(process) - before < 32  # it was 1.1 GB


@pytest.mark.parametrize(("service_name", "path"), [("offers", "/partner/chaos"), ("partner", "/chaos")])
def test_the_admin_check_comes_before_the_body_is_parsed(
    request: pytest.FixtureRequest, service_name: str, path: str
) -> None:
    service: Service = request.getfixturevalue(service_name)
    not_json = b"{" * 3000
    with connect(service) as sock:
        sock.sendall(put_head(path, len(not_json)) + not_json)
        answer = read_answer_or_first(sock)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]  # not a 400 about the JSON


def read_answer_or_first(sock: socket.socket) -> bytes:
    """The first bytes of the answer: the server may keep the connection open for more."""
    return sock.recv(65536)


def test_a_body_over_the_cap_is_413_with_or_without_a_length(offers: Service, partner: Service) -> None:
    body = b'{"latency": 0.0, "padding": "' + b"x" * http_limits.MAX_BODY_BYTES + b'"}'
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    for url in (f"{offers.url}/partner/chaos", f"{partner.url}/chaos"):
        assert httpx.put(url, content=body, headers=auth, timeout=10).status_code == 413
        chunked = httpx.put(url, content=iter([body[:1000], body[1000:]]), headers=auth, timeout=10)
        assert chunked.status_code == 413
    # A body under the cap still works.
    assert (
        httpx.put(f"{partner.url}/chaos", json={"latency": 0.0}, headers=auth, timeout=10).status_code == 200
    )


@pytest.mark.parametrize("started_as", ["uvicorn", "python script"])
def test_a_header_over_the_limit_is_431_and_never_held_whole(
    request: pytest.FixtureRequest, started_as: str
) -> None:
    service: Service = request.getfixturevalue("offers" if started_as == "uvicorn" else "demo_offers")
    process = serving_process(service)
    before = peak_rss_mib(process)
    with connect(service) as sock:
        sock.sendall(b"GET /offer HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        sent = 0
        try:
            while sent < 64 * 1024 * 1024:  # the 64 MiB header that used to be accepted
                sock.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert sent < 4 * 1024 * 1024  # refused early, not after the 64 MiB
    assert peak_rss_mib(process) - before < 16
    ok = httpx.get(f"{service.url}/offer", headers={"X-Fine": "a" * 8000}, timeout=10)
    assert ok.status_code == 200


@pytest.mark.timeout(90)
@pytest.mark.parametrize("started_as", ["uvicorn", "python script"])
def test_idle_and_slow_header_connections_are_closed(request: pytest.FixtureRequest, started_as: str) -> None:
    service: Service = request.getfixturevalue("offers" if started_as == "uvicorn" else "demo_offers")
    process = serving_process(service)
    files_before = process.num_fds()
    idle = [connect(service) for _ in range(100)]
    slow = [connect(service) for _ in range(100)]
    slow_body = [connect(service) for _ in range(50)]
    for sock in slow:
        sock.sendall(b"GET /offer HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    for sock in slow_body:
        sock.sendall(put_head("/partner/chaos", 100, TOKEN) + b'{"lat')
    # Most of them at once is proof enough that they were accepted: on a busy machine the
    # first ones may already be closed (after REQUEST_READ_TIMEOUT) before the last are.
    wait_for(lambda: process.num_fds() >= files_before + 150, timeout=10, what="connections accepted")
    started = time.monotonic()
    # Keep the slow headers dripping: a byte now and then must not keep them alive.
    while time.monotonic() - started < http_limits.REQUEST_READ_TIMEOUT + 10:
        for sock in slow:
            with contextlib.suppress(OSError):
                sock.sendall(b"X")
        if process.num_fds() <= files_before + 5:
            break
        time.sleep(0.5)
    closed_after = time.monotonic() - started
    answers = [read_answer(sock) for sock in idle + slow + slow_body]
    for sock in idle + slow + slow_body:
        sock.close()
    assert process.num_fds() <= files_before + 5, "connections still open"
    assert closed_after < http_limits.REQUEST_READ_TIMEOUT + 10
    assert all(answer == b"" for answer in answers[:100])  # idle: closed, nothing said
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers[100:200])
    assert service.get("/offer").status_code == 200


def open_stream(service: Service, source: str = "127.0.0.1") -> tuple[socket.socket, bytes]:
    """An event stream from `source`, a loopback address: each is another client to the service."""
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=10, source_address=(source, 0))
    sock.sendall(b"GET /offer/circuit/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return sock, sock.recv(4096)


def status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0


def many_clients(count: int) -> list[str]:
    """Loopback addresses other than the dashboard's 127.0.0.1, `MAX_EVENT_STREAMS_PER_CLIENT` each."""
    return [f"127.0.0.{2 + i // MAX_EVENT_STREAMS_PER_CLIENT}" for i in range(count)]


def test_event_streams_are_capped_and_a_closed_one_frees_its_slot(offers: Service) -> None:
    streams = []
    try:
        for source in many_clients(MAX_EVENT_STREAMS):
            sock, head = open_stream(offers, source)
            streams.append(sock)
            assert head.startswith(b"HTTP/1.1 200 "), head[:200]
        # All taken, each address at its cap: one more from a holder of a full share is refused.
        refused, head = open_stream(offers, "127.0.0.2")
        refused.close()
        assert status_of(head) == 429, head[:200]
        assert b"retry-after: 10" in head.lower()
        refused, head = open_stream(offers, "127.0.0.200")  # a new address, but every share is 4
        assert offers.get("/offer").status_code == 200
        refused.close()
        streams.pop().close()

        def a_slot_is_free() -> bool:
            sock, head = open_stream(offers, many_clients(MAX_EVENT_STREAMS)[-1])
            streams.append(sock)
            return head.startswith(b"HTTP/1.1 200 ")

        wait_for(a_slot_is_free, timeout=10, interval=0.2, what="the closed stream's slot free again")
    finally:
        for sock in streams:
            sock.close()


@pytest.mark.timeout(60)
def test_the_dashboard_gets_a_stream_while_others_hold_every_slot(offers: Service) -> None:
    """Before: 32 sockets that never read kept the dashboard at 503 for 30-55 s."""
    attackers: list[socket.socket] = []
    try:
        # One address trying to take them all gets its share and 429s for the rest.
        statuses = []
        for _ in range(MAX_EVENT_STREAMS + 8):
            sock, head = open_stream(offers, "127.0.0.2")
            attackers.append(sock)
            statuses.append(status_of(head))
        assert statuses.count(200) == MAX_EVENT_STREAMS_PER_CLIENT
        assert set(statuses[MAX_EVENT_STREAMS_PER_CLIENT:]) == {429}
        # Many addresses, a full share each: every slot taken by sockets that read nothing.
        for source in many_clients(MAX_EVENT_STREAMS)[MAX_EVENT_STREAMS_PER_CLIENT:]:
            sock, head = open_stream(offers, source)
            attackers.append(sock)
            assert status_of(head) == 200
        # The dashboard, from its own address, is served at once: the greediest gives way.
        dashboard, head = open_stream(offers, "127.0.0.1")
        with dashboard:
            assert status_of(head) == 200, head[:200]
            assert b"event: snapshot" in head or b"event: snapshot" in dashboard.recv(4096)
        # ... and they cannot take it back.
        sock, head = open_stream(offers, "127.0.0.3")
        attackers.append(sock)
        assert status_of(head) in (429, 503)
    finally:
        for sock in attackers:
            sock.close()


async def test_a_stream_whose_client_stops_reading_is_dropped_and_frees_its_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # In-process: a real socket takes minutes of snapshots to fill the kernel's buffers
    # before a send blocks; here the send blocks at once, as it then would.
    monkeypatch.setattr(circuit_routes, "SEND_TIMEOUT", 0.5)
    observer = CircuitObserver("test")
    subscription = observer.subscribe("127.0.0.1")
    stream = circuit_routes.EventStream(
        observer.events(subscription, dict), lambda: observer.unsubscribe(subscription)
    )
    never = asyncio.Event()

    async def receive() -> dict[str, str]:
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.body":
            await never.wait()  # a client that reads nothing

    scope = {"type": "http", "method": "GET", "headers": []}
    started = time.monotonic()
    await asyncio.wait_for(stream(scope, receive, send), timeout=10)
    assert time.monotonic() - started < 5
    for _ in range(MAX_EVENT_STREAMS_PER_CLIENT):
        observer.subscribe("127.0.0.1")  # the slot came back: a full share is free again


async def test_no_event_stream_lives_longer_than_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(circuit_events, "MAX_STREAM_SECONDS", 0.5)
    observer = CircuitObserver("test")
    subscription = observer.subscribe("127.0.0.1")
    started = time.monotonic()
    snapshots = [event async for event in observer.events(subscription, dict)]
    assert 0.5 <= time.monotonic() - started < 5
    assert snapshots and snapshots[0]["event"] == "snapshot"


def one_write(service: Service, request: bytes) -> bytes:
    """The answer to `request` sent in one write; b"" if the server reset the connection.

    A server that refuses a head and closes with the rest unread makes the kernel
    send a reset, which may overtake its 431: either is a refusal, a 200 is not."""
    with connect(service) as sock:
        try:
            sock.sendall(request)
            return read_answer(sock)
        except ConnectionResetError:
            return b""


@pytest.mark.parametrize(
    "head",
    [
        b"X-Big: " + b"a" * 100 * 1024 + b"\r\n",
        b"".join(b"X-%d: a\r\n" % i for i in range(3_000)),  # 30 KiB: one read
        b"",  # the same limit on the URL: the head is the request line and the headers
    ],
    ids=["one-100KiB-header", "3000-small-headers", "100KiB-url"],
)
def test_a_head_over_the_limit_sent_in_one_write_is_431(offers: Service, head: bytes) -> None:
    path = b"/offer" if head else b"/offer?" + b"a" * 100 * 1024
    answer = one_write(offers, b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + head + b"\r\n")
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    fine = (
        b"GET /offer HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Fine: " + b"a" * 8000 + b"\r\nConnection: close\r\n\r\n"
    )
    assert one_write(offers, fine).startswith(b"HTTP/1.1 200 ")


def limits_warnings(service: Service) -> list[str]:
    return [line for line in service.log().splitlines() if "HTTP limits" in line]


def test_started_without_the_limits_the_service_says_which_and_how_in_one_warning(tmp_path: Path) -> None:
    """Plain `uvicorn offer_service:app`, what most FastAPI users type, held 0 of 40 idle
    connections closed in 8 s and answered a 64 MiB header with a 200, silently."""
    with uvicorn_service("offer_service:app", log_dir=tmp_path) as plain:
        (line,) = limits_warnings(plain)
    assert line.startswith("WARNING ")
    assert "deadline to read a request" in line and "16 KiB limit on a request's head" in line
    assert http_limits.UVICORN_FLAGS in line


@pytest.mark.parametrize("started_as", ["uvicorn", "python script"])
def test_started_the_documented_ways_the_service_warns_of_nothing(
    request: pytest.FixtureRequest, started_as: str
) -> None:
    service: Service = request.getfixturevalue("offers" if started_as == "uvicorn" else "demo_offers")
    assert limits_warnings(service) == []

"""Every setting's bad values stop start-up with one line naming the variable."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from offer_service import build_breaker, create_app, reach_redis, start_shared_state
from service import settings
from service.settings import OfferSettings, PartnerSettings
from tests.breakers import shared
from tests.fake_clock import FakeClock
from tools.processes import PROJECT_DIR, RedisServer, free_port

BAD_OFFER_SETTINGS = [
    ("PARTNER_OFFER_URL", "not a url", "an http(s) URL"),
    ("PARTNER_OFFER_URL", "ftp://127.0.0.1:8000", "an http(s) URL"),
    ("PARTNER_TIMEOUT", "abc", "a number > 0"),
    ("PARTNER_TIMEOUT", "0", "a number > 0"),
    ("PARTNER_TIMEOUT", "-1", "a number > 0"),
    ("PARTNER_TIMEOUT", "inf", "a number > 0 and <= 86400"),
    ("PARTNER_TIMEOUT", "nan", "a number > 0 and <= 86400"),
    ("PARTNER_TIMEOUT", "86401", "a number > 0 and <= 86400"),
    ("PARTNER_OFFER_URL", "http://127.0.0.1:99999", "(invalid port number)"),
    ("PARTNER_OFFER_URL", "http://127.0.0.1:abc", "(invalid port number)"),
    ("PARTNER_OFFER_URL", "http://partner .example:8000", "(invalid international domain name)"),
    ("PARTNER_OFFER_URL", "http://256.0.0.1:8000", "(invalid IPv4 address)"),
    ("CIRCUIT_FAIL_MAX", "0", "a whole number from 1 to 1000000"),
    ("CIRCUIT_FAIL_MAX", "2.5", "a whole number from 1 to 1000000"),
    ("CIRCUIT_FAIL_MAX", "three", "a whole number from 1 to 1000000"),
    ("CIRCUIT_FAIL_MAX", "10000000000000000000000", "a whole number from 1 to 1000000"),
    ("CIRCUIT_RESET_TIMEOUT", "0", "a number > 0"),
    ("CIRCUIT_RESET_TIMEOUT", "soon", "a number > 0"),
    ("CIRCUIT_RESET_TIMEOUT", "inf", "a number > 0 and <= 86400"),
    ("CIRCUIT_RESET_TIMEOUT", "-inf", "a number > 0 and <= 86400"),
    ("CIRCUIT_RESET_TIMEOUT", "NaN", "a number > 0 and <= 86400"),
    ("CIRCUIT_RESET_TIMEOUT", "1e15", "a number > 0 and <= 86400"),
    ("CIRCUIT_POLICY", "sliding", "consecutive (CIRCUIT_FAIL_MAX failures in a row) or rate"),
    ("CIRCUIT_WINDOW", "0", "from 0.1 to 86400"),
    ("CIRCUIT_WINDOW", "nan", "from 0.1 to 86400"),
    ("CIRCUIT_MIN_CALLS", "0", "a whole number from 1 to 1000000"),
    ("CIRCUIT_MIN_CALLS", "ten", "a whole number from 1 to 1000000"),
    ("CIRCUIT_FAILURE_RATE", "0", "a number > 0 and <= 1"),
    ("CIRCUIT_FAILURE_RATE", "50", "a number > 0 and <= 1"),
    ("CIRCUIT_FAILURE_RATE", "50%", "a number > 0 and <= 1"),
    ("CIRCUIT_SLOW_CALL_SECONDS", "0", "a number > 0 and <= 86400"),
    ("CIRCUIT_SLOW_CALL_SECONDS", "inf", "a number > 0 and <= 86400"),
    ("CIRCUIT_SLOW_CALL_RATE", "1.5", "a number > 0 and <= 1"),
    ("CIRCUIT_SLOW_CALL_RATE", "-0.1", "a number > 0 and <= 1"),
    ("CIRCUIT_HALF_OPEN_CALLS", "0", "1 to 1000"),
    ("CIRCUIT_HALF_OPEN_CALLS", "1001", "1 to 1000"),
    ("CIRCUIT_RETRY_AFTER_MAX", "-1", "from 0 (ignore them) to 600"),
    ("CIRCUIT_RETRY_AFTER_MAX", "forever", "from 0 (ignore them) to 600"),
    ("CIRCUIT_RETRY_AFTER_MAX", "86400", "from 0 (ignore them) to 600"),
    ("REDIS_STARTUP_SECONDS", "0", "a number > 0 and <= 86400"),
    ("REDIS_STARTUP_SECONDS", "forever", "a number > 0 and <= 86400"),
    ("REDIS_STARTUP_SECONDS", "1e6", "a number > 0 and <= 86400"),
    ("REDIS_URL", "redis://127.0.0.1:99999/0", "(invalid port number)"),
    ("REDIS_URL", "redis://red is:6379/0", "(invalid domain character)"),
    ("REDIS_URL", "localhost:6379", "a redis:// URL"),
    ("REDIS_URL", "http://127.0.0.1:6379", "a redis:// URL"),
    ("LOG_LEVEL", "loud", "one of debug, info"),
    ("HTTPX_LOG_LEVEL", "verbose", "one of debug, info"),
    ("HOST", "", "an address"),
    ("PORT", "0", "a TCP port"),
    ("PORT", "70000", "a TCP port"),
    ("PORT", "http", "a TCP port"),
]

BAD_PARTNER_SETTINGS = [
    ("PARTNER_LATENCY", "-0.5", "a number from 0 to 300"),
    ("PARTNER_LATENCY", "slow", "a number from 0 to 300"),
    ("PARTNER_LATENCY", "inf", "a number from 0 to 300"),
    ("PARTNER_LATENCY", "nan", "a number from 0 to 300"),
    ("PARTNER_LATENCY", "301", "a number from 0 to 300"),
    ("PORT", "-1", "a TCP port"),
    ("LOG_LEVEL", "chatty", "one of debug"),
]


@pytest.mark.parametrize(("variable", "value", "expected"), BAD_OFFER_SETTINGS)
def test_bad_offer_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as stop:
        settings.load(OfferSettings)
    message = str(stop.value)
    assert message.startswith(f"error: {variable}={value!r} is invalid, expected ")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(("variable", "value", "expected"), BAD_PARTNER_SETTINGS)
def test_bad_partner_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as stop:
        settings.load(PartnerSettings)
    assert str(stop.value).startswith(f"error: {variable}={value!r} is invalid, expected ")
    assert expected in str(stop.value)


def test_defaults_are_the_walkthroughs(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "PARTNER_OFFER_URL",
        "PARTNER_TIMEOUT",
        "CIRCUIT_FAIL_MAX",
        "CIRCUIT_RESET_TIMEOUT",
        "CIRCUIT_POLICY",
        "CIRCUIT_HALF_OPEN_CALLS",
        "REDIS_URL",
        "HOST",
        "PORT",
        "LOG_LEVEL",
        "HTTPX_LOG_LEVEL",
    ):
        monkeypatch.delenv(name, raising=False)
    offer = settings.load(OfferSettings)
    assert (offer.host, offer.port, offer.partner_offer_url) == ("127.0.0.1", 8001, "http://127.0.0.1:8000")
    assert (offer.circuit_fail_max, offer.circuit_reset_timeout, offer.partner_timeout) == (3, 15, 2)
    assert offer.redis_url is None
    assert (offer.circuit_policy, offer.circuit_half_open_calls) == ("consecutive", 1)
    assert settings.load(PartnerSettings).port == 8000


def test_values_are_parsed_leniently_where_it_is_harmless(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRCUIT_RESET_TIMEOUT", "0.5")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("REDIS_URL", "")
    offer = settings.load(OfferSettings)
    assert (offer.circuit_reset_timeout, offer.log_level, offer.redis_url) == (0.5, "debug", None)


@pytest.mark.parametrize("script", ["offer_service.py", "partner_offer_service.py"])
def test_a_service_started_with_a_bad_setting_prints_one_line_and_no_traceback(script: str) -> None:
    result = subprocess.run(
        [sys.executable, script],
        cwd=PROJECT_DIR,
        env={"PATH": "/usr/bin:/bin", "PORT": "eighty"},
        capture_output=True,
        text=True,
        timeout=50,  # the imports alone: seconds of CPU, stretched on a loaded machine
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: PORT='eighty' is invalid, expected a TCP port, 1-65535"
    ]


def test_an_unreachable_redis_at_start_up_is_one_line() -> None:
    """The line names the setting that would have waited longer, with the wait it had."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = subprocess.run(
        [sys.executable, "offer_service.py"],
        cwd=PROJECT_DIR,
        # Nothing listens there: 0.5 s of tries (the default 10 s would only wait longer).
        env={"PATH": "/usr/bin:/bin", "REDIS_URL": url, "REDIS_STARTUP_SECONDS": "0.5"},
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        f"error: REDIS_URL='{url}' is unreachable after 0.5 s of tries (REDIS_STARTUP_SECONDS): "
    ), lines[0]


def test_credentials_in_the_partner_url_are_refused_and_never_printed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PARTNER_OFFER_URL", "http://user:s3cret-pass@127.0.0.1:8000")
    with pytest.raises(SystemExit) as stop:
        settings.load(OfferSettings)
    assert str(stop.value).startswith("error: PARTNER_OFFER_URL='http://user:***@127.0.0.1:8000' is invalid")
    assert "credentials" in str(stop.value)
    assert "s3cret-pass" not in str(stop.value)


@pytest.fixture(scope="module")
def not_redis() -> Iterator[str]:
    """A server on a free port that answers every connection as a web server would."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    stop.set()
    thread.join(5)
    server.close()


@pytest.fixture(scope="module")
def echo_server() -> Iterator[str]:
    """A server on a free port that sends every byte back: redis-py once raised an
    AttributeError of its own on what it read, and start-up printed a traceback."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def echo(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                while data := conn.recv(65536):
                    conn.sendall(data)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    stop.set()
    thread.join(5)
    server.close()


START_METHODS = ["python script", "uvicorn", "make demo"]
# (service, variable, value, what the one line says after the variable's value)
HOSTILE_VALUES = [
    ("offer", "CIRCUIT_RESET_TIMEOUT", "inf", "is invalid"),
    ("offer", "CIRCUIT_RESET_TIMEOUT", "1e15", "is invalid"),
    ("offer", "PARTNER_TIMEOUT", "inf", "is invalid"),
    ("offer", "PARTNER_OFFER_URL", "http://127.0.0.1:99999", "is invalid"),
    ("offer", "PARTNER_OFFER_URL", "http://127.0.0.1:abc", "is invalid"),
    ("offer", "PARTNER_OFFER_URL", "http://partner .example", "is invalid"),
    ("offer", "PARTNER_OFFER_URL", "http://user:pw@127.0.0.1:8000", "is invalid"),
    ("offer", "REDIS_URL", "<unreachable>", "is unreachable after 0.5 s of tries"),
    ("offer", "REDIS_URL", "<not redis>", "does not answer as a Redis server: "),
    ("offer", "REDIS_URL", "<echo>", "does not answer as a Redis server: "),
    ("offer", "PARTNER_OFFER_URL", "http://[::1", "is invalid"),
    ("partner", "PARTNER_LATENCY", "inf", "is invalid"),
]


def start_command(method: str, service: str, port: int) -> list[str]:
    module = "offer_service" if service == "offer" else "partner_offer_service"
    if method == "python script":
        return [sys.executable, f"{module}.py"]
    if method == "uvicorn":
        return [sys.executable, "-m", "uvicorn", f"{module}:app", "--port", str(port)]
    # `make demo` is honcho on the Procfile; one of its lines, so that no fixed port is taken.
    return [str(Path(sys.executable).with_name("honcho")), "start", service]


# Each start imports the whole service (FastAPI, pydantic, redis-py): seconds of CPU that
# a loaded machine stretches past 25 s. Nothing here waits on a deadline of the service's.
@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", START_METHODS)
@pytest.mark.parametrize(("service", "variable", "value", "says"), HOSTILE_VALUES)
def test_a_hostile_setting_stops_every_start_method_with_one_line(
    not_redis: str, echo_server: str, method: str, service: str, variable: str, value: str, says: str
) -> None:
    port = free_port()
    if value == "<unreachable>":
        value = f"redis://127.0.0.1:{free_port()}/0"
    elif value == "<not redis>":
        value = not_redis
    elif value == "<echo>":
        value = echo_server
    shown = value.replace(":pw@", ":***@")
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PORT": str(port),
        # An unreachable Redis is given up on after half a second, not the default 10 s.
        "REDIS_STARTUP_SECONDS": "0.5",
        variable: value,
    }
    result = subprocess.run(
        start_command(method, service, port),
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=80,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if f"error: {variable}=" in line]
    assert len(lines) == 1, output
    assert f"error: {variable}={shown!r} {says}" in lines[0]
    assert ":pw@" not in output
    if method == "python script":
        assert result.stderr.strip().splitlines() == lines  # nothing else at all


def test_the_default_slow_call_threshold_is_below_the_partner_timeout() -> None:
    """Before: 5 s against a 2 s timeout; 40 calls of 1.9 s were all "success, not slow"."""
    defaults = OfferSettings(circuit_policy="rate")
    assert defaults.circuit_slow_call_seconds < defaults.partner_timeout
    assert settings.combination_warnings(defaults) == []


async def test_calls_just_under_the_default_timeout_are_slow_with_the_default_settings() -> None:
    clock = FakeClock()
    defaults = OfferSettings(circuit_policy="rate")
    breaker = build_breaker(defaults, clock=clock)

    answered = asyncio.Event()

    async def answers_just_in_time() -> str:
        await answered.wait()
        return "hot"

    # The load of a real service: the calls in flight together, all answered after 1.9 s.
    calls = [
        asyncio.create_task(breaker.call(answers_just_in_time)) for _ in range(defaults.circuit_min_calls)
    ]
    await asyncio.sleep(0)
    clock.advance(defaults.partner_timeout * 0.95)
    answered.set()
    await asyncio.gather(*calls)
    assert breaker.state == "open"


async def test_a_slow_call_rule_that_can_never_trip_is_named_at_start_up(
    capsys: pytest.CaptureFixture[str],
) -> None:
    never = OfferSettings(circuit_policy="rate", partner_timeout=2, circuit_slow_call_seconds=5)
    (line,) = settings.combination_warnings(never)
    assert line.startswith("CIRCUIT_SLOW_CALL_SECONDS=5 is not below PARTNER_TIMEOUT=2")
    assert settings.combination_warnings(never.model_copy(update={"circuit_policy": "consecutive"})) == []
    app = create_app(never)
    async with app.router.lifespan_context(app):  # its logging writes to stderr, not to caplog
        pass
    warnings = [row for row in capsys.readouterr().err.splitlines() if row.startswith("WARNING ")]
    assert [row for row in warnings if row.endswith(f"offer_service - {line}")] != []


@pytest.mark.timeout(30)
async def test_start_up_waits_for_a_redis_that_comes_up_late(redis_binary: str, tmp_path: Path) -> None:
    """A deployment starts beside a Redis that is starting too, or on a loaded machine:
    one failed try is no verdict. Before: one try, and "REDIS_URL ... is unreachable"."""
    server = RedisServer(redis_binary, tmp_path)
    app = create_app(OfferSettings(redis_url=server.url))

    async def start_redis_later() -> None:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(server.start)

    late = asyncio.create_task(start_redis_later())
    try:
        async with app.router.lifespan_context(app):
            assert app.state.breaker.shared.connected
    finally:
        await late
        server.stop()


@pytest.mark.timeout(30)
async def test_start_up_waits_for_a_redis_too_slow_for_its_first_load(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """The first load of the shared state is one round trip with the breaker's 0.25 s
    timeout: beside a Redis 0.2 s away on a loaded machine, one try ended start-up with a
    traceback. Here Redis holds every other client's commands for a second (CLIENT PAUSE)."""
    config = OfferSettings(redis_url=redis_server.url)
    breaker = build_breaker(config, await reach_redis(redis_server.url, config.redis_startup_seconds))
    state = shared(breaker)
    redis_client.client_pause(1000)
    try:
        await start_shared_state(state, config)
        assert state.connected
    finally:
        await state.stop()

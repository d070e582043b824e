"""A fleet on a Redis that fails over: real `redis-server --sentinel` processes, a primary and a
replica on free ports, and the primary killed while the circuit is open, while a trial is in
flight, and while it is closed under load."""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service import settings
from service.redis_connection import SentinelAddress
from service.settings import OfferSettings
from tests.breakers import PATIENCE
from tools.processes import RedisSentinels, Service, uvicorn_service, wait_for

# Longer than a failover on a busy machine (2.2 s measured idle), so that the circuit
# is still open when the fleet is back, and the test can see that it kept it.
RESET_TIMEOUT = 8.0
PARTNER_TIMEOUT = 3.0
FAILOVER = 20.0  # the longest a failover may take here: Sentinel's own timings, on a busy machine


# The URL


@pytest.mark.parametrize(
    ("url", "sentinels", "service", "db"),
    [
        ("redis+sentinel://127.0.0.1:26380/mymaster", [("127.0.0.1", 26380)], "mymaster", 0),
        (
            "redis+sentinel://s1,s2:26380,s3/mymaster/2",
            [("s1", 26379), ("s2", 26380), ("s3", 26379)],
            "mymaster",
            2,
        ),
        ("redis+sentinel://:secret@s1:26379,s2:26379/cache/1", [("s1", 26379), ("s2", 26379)], "cache", 1),
    ],
)
def test_a_sentinel_url_names_the_sentinels_the_primary_and_its_db(
    url: str, sentinels: list[tuple[str, int]], service: str, db: int
) -> None:
    address = SentinelAddress.parse(url)
    assert (address.sentinels, address.service_name, address.primary_options["db"]) == (
        sentinels,
        service,
        db,
    )
    assert OfferSettings(redis_url=url).redis_url == url


def test_credentials_go_to_the_primary_and_sentinel_ones_to_the_sentinels() -> None:
    address = SentinelAddress.parse(
        "rediss+sentinel://app:primary-secret@s1:26379/mymaster?sentinel_password=watch&ssl_ca_certs=/ca.pem"
    )
    assert address.primary_options["username"] == "app"
    assert address.primary_options["password"] == "primary-secret"
    assert address.primary_options["ssl"] is True
    assert address.sentinel_options == {"password": "watch", "ssl": True, "ssl_ca_certs": "/ca.pem"}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis+sentinel://s1:26379", "(no service name: add it as the path, e.g. /mymaster)"),
        ("redis+sentinel://s1:26379/mymaster/db0", "(the path must be /service_name or /service_name/db)"),
        (
            "redis+sentinel://s1:99999/mymaster",
            "(the port of the Sentinel address 's1:99999' is not 1-65535)",
        ),
        ("redis+sentinel://s1:26379,/mymaster", "(no host in the Sentinel address '')"),
    ],
)
def test_a_bad_sentinel_url_stops_start_up_with_one_line(
    monkeypatch: pytest.MonkeyPatch, url: str, expected: str
) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(SystemExit) as stop:
        settings.load(OfferSettings)
    message = str(stop.value)
    assert message.startswith(f"error: REDIS_URL={url!r} is invalid, expected a redis:// URL")
    assert message.endswith(expected)
    assert "\n" not in message


def test_a_sentinel_that_knows_no_such_primary_stops_start_up_with_one_line(
    sentinels: RedisSentinels, tmp_path: Path
) -> None:
    url = sentinels.url.replace("/mymaster/", "/elsewhere/")
    # The Sentinels answer at once, each without that primary: one second of tries is plenty.
    env = {"REDIS_URL": url, "REDIS_STARTUP_SECONDS": "1"}
    service = uvicorn_service("offer_service:app", env=env, log_dir=tmp_path)
    with pytest.raises(RuntimeError):
        service.start(timeout=15)
    errors = [line for line in service.log().splitlines() if "error: REDIS_URL=" in line]
    assert len(errors) == 1
    assert "no Sentinel of 127.0.0.1:" in errors[0]
    assert "answered with a primary named 'elsewhere'" in errors[0]
    assert "Traceback" not in service.log()


# Failovers


@pytest.fixture
def sentinels(redis_binary: str, tmp_path: Path) -> Iterator[RedisSentinels]:
    workdir = tmp_path / "redis"
    workdir.mkdir()
    servers = RedisSentinels(redis_binary, workdir).start()
    yield servers
    servers.stop()


@pytest.fixture
def partner(tmp_path: Path) -> Iterator[Service]:
    with uvicorn_service("partner_offer_service:app", log_dir=tmp_path) as service:
        yield service


@pytest.fixture
def instances(partner: Service, sentinels: RedisSentinels, tmp_path: Path) -> Iterator[list[Service]]:
    env = {
        "PARTNER_OFFER_URL": partner.url,
        "REDIS_URL": sentinels.url,
        "CIRCUIT_RESET_TIMEOUT": str(RESET_TIMEOUT),
        "PARTNER_TIMEOUT": str(PARTNER_TIMEOUT),
    }
    services = [uvicorn_service("offer_service:app", env=env, log_dir=tmp_path) for _ in range(2)]
    try:
        yield [service.start() for service in services]
    finally:
        for service in services:
            service.stop()


def set_partner(partner: Service, **chaos: object) -> None:
    httpx.put(f"{partner.url}/chaos", json=chaos, timeout=PATIENCE).raise_for_status()


def circuit(service: Service) -> dict[str, object]:
    return dict(service.get("/offer/circuit").json())


def open_everywhere(instances: list[Service], partner: Service) -> None:
    set_partner(partner, status_code=500)
    for _ in range(3):
        instances[0].get("/offer")
    for service in instances:
        wait_for(
            lambda s=service: circuit(s)["current_state"] == "open", timeout=PATIENCE, what="open everywhere"
        )


def fail_over(sentinels: RedisSentinels, instances: list[Service]) -> None:
    """Kill the primary; return once the replica is promoted and every instance is back on it."""
    new_primary = sentinels.kill_primary()
    for service in instances:
        wait_for(
            lambda s=service: s.get("/health").json()["status"] == "degraded",
            timeout=PATIENCE,
            what="the loss seen",
        )
    wait_for(
        lambda: sentinels.primary_port() == new_primary.port, timeout=FAILOVER, what="a replica promoted"
    )
    for service in instances:
        wait_for(
            lambda s=service: s.get("/health").json()["status"] == "ok",
            timeout=FAILOVER,
            what="back on the new primary",
        )


def assert_each_outage_said_once(service: Service) -> None:
    """One "Redis lost" line per outage and one "Redis is back" after it: the failover is not
    a line per retry. (A busy machine may make one call miss its 250 ms: a second outage,
    said once too, and its "back" may still be on its way: waited for.)"""

    def said() -> list[str]:
        return [
            "lost" if "Redis lost" in line else "back"
            for line in service.log().splitlines()
            if "Redis lost" in line or "Redis is back" in line
        ]

    with contextlib.suppress(TimeoutError):  # the assertion below says what was seen
        wait_for(lambda: said()[-1:] == ["back"], timeout=PATIENCE, what="Redis is back, said last")
    lines = said()
    assert lines and lines == ["lost", "back"] * (len(lines) // 2), lines


def assert_an_offer(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.text.startswith(('"Hot offer ', '"Cold offer fallback ')), response.text


@pytest.mark.timeout(90)
def test_a_circuit_open_when_the_primary_dies_stays_open_on_the_new_one(
    instances: list[Service], partner: Service, sentinels: RedisSentinels
) -> None:
    open_everywhere(instances, partner)
    received = partner.get("/stats").json()["requests_received"]
    fail_over(sentinels, instances)
    for service in instances:
        response = service.get("/offer")
        assert_an_offer(response)
        assert response.headers["x-fallback-reason"] == "circuit-open"
        assert circuit(service)["current_state"] == "open"
        assert_each_outage_said_once(service)
    assert partner.get("/stats").json()["requests_received"] == received
    # The fleet shares the new primary: one instance's trial closes the circuit for both.
    set_partner(partner, status_code=200)
    wait_for(
        lambda: circuit(instances[0])["seconds_until_trial"] == 0,
        timeout=RESET_TIMEOUT + PATIENCE,
        what="trial time",
    )
    assert instances[0].get("/offer").headers["x-offer-source"] == "partner"
    wait_for(
        lambda: circuit(instances[1])["current_state"] == "closed", timeout=PATIENCE, what="the close heard"
    )


@pytest.mark.timeout(90)
def test_a_trial_in_flight_when_the_primary_dies_ends_and_the_fleet_agrees_on_its_verdict(
    instances: list[Service], partner: Service, sentinels: RedisSentinels
) -> None:
    open_everywhere(instances, partner)
    set_partner(partner, status_code=200, latency=2.0)
    wait_for(
        lambda: circuit(instances[0])["seconds_until_trial"] == 0,
        timeout=RESET_TIMEOUT + PATIENCE,
        what="trial time",
    )
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        trial = pool.submit(instances[0].get, "/offer")
        wait_for(
            lambda: circuit(instances[1])["current_state"] == "half-open",
            timeout=PATIENCE,
            what="the trial's lease",
        )
        fail_over(sentinels, instances)
        assert trial.result().headers["x-offer-source"] == "partner"
    for service in instances:
        wait_for(
            lambda s=service: circuit(s)["current_state"] == "closed",
            timeout=PATIENCE,
            what="the success heard",
        )
        assert_each_outage_said_once(service)
    set_partner(partner, status_code=200, latency=0.0)
    assert instances[1].get("/offer").headers["x-offer-source"] == "partner"


@pytest.mark.timeout(90)
def test_a_closed_circuit_under_load_serves_every_request_through_a_failover_and_stays_shared(
    instances: list[Service], partner: Service, sentinels: RedisSentinels
) -> None:
    stop = threading.Event()
    answers: list[httpx.Response] = []

    def load(service: Service) -> None:
        with httpx.Client(base_url=service.url, timeout=10) as client:
            while not stop.is_set():
                answers.append(client.get("/offer"))

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        workers = [pool.submit(load, instances[i % 2]) for i in range(6)]
        wait_for(lambda: len(answers) > 50, timeout=10, what="load running")
        fail_over(sentinels, instances)
        before = len(answers)
        wait_for(lambda: len(answers) > before + 50, timeout=10, what="load on the new primary")
        stop.set()
        for worker in workers:
            worker.result()
    for response in answers:
        assert_an_offer(response)
    for service in instances:
        assert_each_outage_said_once(service)
    # Shared through the new primary: a trip through one instance reaches the other.
    open_everywhere(instances, partner)

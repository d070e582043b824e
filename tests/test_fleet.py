"""Several offer-service processes sharing one circuit through a real redis-server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis as redis_module

from tests.breakers import PATIENCE, script_calls
from tools.processes import (
    EditablePartner,
    RedisClusterServers,
    RedisServer,
    Service,
    script_service,
    uvicorn_service,
    wait_for,
)

RESET_TIMEOUT = 4.0  # long enough that a busy machine's slow requests stay inside one open period
PARTNER_TIMEOUT = 1.0


def start_instances(partner: Service, redis_url: str, log_dir: Path, count: int = 2) -> list[Service]:
    env = {
        "PARTNER_OFFER_URL": partner.url,
        "REDIS_URL": redis_url,
        "CIRCUIT_RESET_TIMEOUT": str(RESET_TIMEOUT),
        "PARTNER_TIMEOUT": str(PARTNER_TIMEOUT),
    }
    return [uvicorn_service("offer_service:app", env=env, log_dir=log_dir).start() for _ in range(count)]


@pytest.fixture
def instances(
    editable_partner: EditablePartner, redis_server: RedisServer, tmp_path: Path
) -> Iterator[list[Service]]:
    services = start_instances(editable_partner, redis_server.url, tmp_path)
    yield services
    for service in services:
        service.stop()


def state_of(service: Service) -> str:
    return str(service.get("/offer/circuit").json()["current_state"])


def trip_through(service: Service) -> None:
    for _ in range(3):
        service.get("/offer")
    assert state_of(service) == "open"


def test_a_circuit_tripped_through_one_instance_protects_the_partner_from_all(
    instances: list[Service], editable_partner: EditablePartner
) -> None:
    first, second = instances
    editable_partner.set_status(500)
    trip_through(first)
    wait_for(
        lambda: state_of(second) == "open", timeout=PATIENCE, what="second instance sees the open circuit"
    )
    received = editable_partner.requests_received()
    for _ in range(10):
        response = second.get("/offer")
        assert response.headers["x-fallback-reason"] == "circuit-open"
    assert editable_partner.requests_received() == received
    assert second.get("/offer/circuit").json()["fail_counter"] == 3


def test_after_the_reset_timeout_exactly_one_trial_reaches_the_partner(
    instances: list[Service], editable_partner: EditablePartner
) -> None:
    editable_partner.set_status(500)
    trip_through(instances[0])
    for service in instances:
        wait_for(lambda s=service: state_of(s) == "open", timeout=PATIENCE, what="open everywhere")
    received = editable_partner.requests_received()
    wait_for(
        lambda: all(s.get("/offer/circuit").json()["seconds_until_trial"] == 0 for s in instances),
        timeout=RESET_TIMEOUT + PATIENCE,
        what="reset timeout passed",
    )

    async def burst() -> tuple[list[httpx.Response], float]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:
            started = time.monotonic()
            responses = await asyncio.gather(
                *(client.get(f"{instances[i % 2].url}/offer") for i in range(100))
            )
            return responses, time.monotonic() - started

    responses, elapsed = asyncio.run(burst())
    assert all(response.status_code == 200 for response in responses)
    # One trial per open period: the failed trial opens the circuit for RESET_TIMEOUT again,
    # so a burst that a loaded machine stretches past it rightly lets one more through.
    # Without the fleet's lease, dozens of the 100 concurrent requests would be trials.
    periods = 1 + int(elapsed // RESET_TIMEOUT)
    trials = editable_partner.requests_received() - received
    assert 1 <= trials <= periods, (
        f"{trials} trials reached the partner in {elapsed:.1f}s ({periods} periods)"
    )
    reasons = [response.headers["x-fallback-reason"] for response in responses]
    assert reasons.count("partner-status-500") == trials


def test_killing_redis_under_load_serves_every_request_and_the_fleet_converges_after(
    instances: list[Service], editable_partner: EditablePartner, redis_server: RedisServer
) -> None:
    stop = threading.Event()
    answers: list[tuple[int, str, float]] = []

    def load(service: Service) -> None:
        with httpx.Client(base_url=service.url, timeout=10) as client:
            while not stop.is_set():
                started = time.monotonic()
                response = client.get("/offer")
                answers.append((response.status_code, response.text, time.monotonic() - started))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        workers = [pool.submit(load, instances[i % 2]) for i in range(8)]
        time.sleep(0.5)
        redis_server.stop()
        for service in instances:
            wait_for(
                lambda s=service: s.get("/health").json()["status"] == "degraded",
                timeout=PATIENCE,
                what="degraded",
            )
        assert instances[0].get("/offer/circuit").json()["degraded"] is True
        time.sleep(0.5)
        redis_server.restart()
        for service in instances:
            wait_for(
                lambda s=service: s.get("/health").json()["status"] == "ok",
                timeout=PATIENCE,
                what="recovered",
            )
        time.sleep(0.3)
        stop.set()
        for worker in workers:
            worker.result()

    assert len(answers) > 100
    for status, body, latency in answers:
        assert status == 200
        assert body.startswith(('"Hot offer ', '"Cold offer fallback '))
        assert latency < PARTNER_TIMEOUT + 0.5
    # Shared again: a trip through one instance reaches the other.
    editable_partner.set_status(500)
    trip_through(instances[1])
    wait_for(lambda: state_of(instances[0]) == "open", timeout=PATIENCE, what="first instance sees the trip")
    for service in instances:
        # One line per loss, each followed by its recovery. (A busy machine can make a Redis
        # call miss its 250 ms once more around the restart: a second loss, said once too.)
        assert service.log().count("Redis lost") >= 1
        wait_for(
            lambda s=service: s.log().count("Redis is back") == s.log().count("Redis lost"),
            timeout=PATIENCE,
            what="every loss followed by its recovery",
        )


def test_two_instances_on_a_redis_cluster_report_the_same_circuit(
    editable_partner: EditablePartner, redis_cluster: RedisClusterServers, tmp_path: Path
) -> None:
    services = start_instances(editable_partner, redis_cluster.url, tmp_path)
    try:
        editable_partner.set_status(500)
        trip_through(services[0])
        wait_for(
            lambda: state_of(services[1]) == "open", timeout=PATIENCE, what="second instance sees the trip"
        )
        assert services[1].get("/offer").headers["x-fallback-reason"] == "circuit-open"
    finally:
        for service in services:
            service.stop()


def test_workers_of_one_service_share_the_circuit_through_redis(
    editable_partner: EditablePartner, redis_server: RedisServer
) -> None:
    env = {"PARTNER_OFFER_URL": editable_partner.url, "REDIS_URL": redis_server.url, "WORKERS": "2"}
    with script_service(editable_partner.cwd, "offer_service.py", env) as service:
        editable_partner.set_status(500)
        for _ in range(6):  # enough failures whichever worker answers
            service.get("/offer")
        received = editable_partner.requests_received()
        states = {state_of(service) for _ in range(20)}
        reasons = {service.get("/offer").headers["x-fallback-reason"] for _ in range(20)}
        assert states == {"open"}
        assert reasons == {"circuit-open"}
        assert editable_partner.requests_received() == received
        assert service.log().count("Started server process") == 2


@pytest.mark.timeout(90)
def test_instances_whose_wall_clocks_are_30_s_off_keep_the_open_period_and_make_no_round_trips(
    editable_partner: EditablePartner, redis_server: RedisServer, faketime_binary: str, tmp_path: Path
) -> None:
    env = {
        "PARTNER_OFFER_URL": editable_partner.url,
        "REDIS_URL": redis_server.url,
        # Longer than 400 requests take on a loaded machine (10 s was not): the open period
        # must outlast them.
        "CIRCUIT_RESET_TIMEOUT": "60",
        # libfaketime moves the wall clock only: the event loop's monotonic clock stays true.
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    skewed = []
    for offset in ("+30s", "-30s"):
        service = uvicorn_service("offer_service:app", env=env, log_dir=tmp_path)
        service.args = [faketime_binary, "-f", offset, *service.args]
        skewed.append(service.start())
    redis = redis_module.Redis.from_url(redis_server.url)
    try:
        editable_partner.set_status(500)
        trip_through(skewed[0])
        for service in skewed:
            wait_for(lambda s=service: state_of(s) == "open", timeout=PATIENCE, what="open on both")
            left = service.get("/offer/circuit").json()["seconds_until_trial"]
            assert 50 < left <= 60, left  # neither 30 s longer nor 30 s shorter
        before = script_calls(redis)
        started = time.monotonic()
        with httpx.Client(timeout=10) as client:
            for i in range(400):
                response = client.get(f"{skewed[i % 2].url}/offer")
                assert response.headers["x-fallback-reason"] == "circuit-open"
        elapsed = time.monotonic() - started
        round_trips = script_calls(redis) - before
        # Only the refreshes, one read a second per instance: no round trip per request.
        assert round_trips <= 2 * (int(elapsed) + 2), f"{round_trips} Redis round trips for 400 requests"
    finally:
        redis.close()
        for service in skewed:
            service.stop()

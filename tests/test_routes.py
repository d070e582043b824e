"""Both apps' routes in milliseconds: the real ASGI apps driven in this process through
httpx's ASGI transport, the partner behind an injected transport. The end-to-end tests
keep what only real processes show (reload, sockets, signals, several instances)."""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI

import partner_offer_service
from offer_service import UNEXPECTED_ERROR, create_app
from service.admin import AdminGuard
from service.partner_client import ACCEPT_ENCODING
from service.settings import OfferSettings

TOKEN = "a-test-token-of-at-least-16-chars"
Handler = Callable[[httpx.Request], httpx.Response]


class Body(httpx.AsyncByteStream):
    """A body still to be read, as it comes off a socket (`content=` would read it at once)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._data


class Partner:
    """The partner as an httpx transport: answers what the test says, counts the calls."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b"Hot offer 12:34"
        self.headers: dict[str, str] = {"content-type": "text/plain; charset=utf-8"}
        self.calls = 0
        self.refuses = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.refuses:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/offer/hot":
            self.calls += 1
            return httpx.Response(self.status, stream=Body(self.body), headers=self.headers)
        if request.url.path == "/chaos":
            chaos = b'{"status_code": null, "latency": 0.0}'
            return httpx.Response(200, stream=Body(chaos), headers={"content-type": "application/json"})
        return httpx.Response(404)


@asynccontextmanager
async def offer_service(partner: Partner, **settings: object) -> AsyncIterator[httpx.AsyncClient]:
    """The offer service with its lifespan run, as uvicorn would, and a client for it."""
    values: dict[str, object] = {"circuit_fail_max": 3, "circuit_reset_timeout": 15, **settings}

    @asynccontextmanager
    async def partner_client(config: OfferSettings) -> AsyncIterator[httpx.AsyncClient]:
        async with httpx.AsyncClient(
            transport=httpx.MockTransport(partner),
            base_url=config.partner_offer_url,
            headers={"Accept-Encoding": ACCEPT_ENCODING},
        ) as client:
            yield client

    app = create_app(OfferSettings(**values), client_factory=partner_client)  # type: ignore[arg-type]
    async with lifespan(app), asgi_client(app) as client:
        yield client


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with app.router.lifespan_context(app):
        yield


def asgi_client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


@pytest.fixture
def partner() -> Partner:
    return Partner()


async def test_a_healthy_partner_gives_a_hot_offer(partner: Partner) -> None:
    async with offer_service(partner) as client:
        response = await client.get("/offer")
    assert response.status_code == 200
    assert response.json() == "Hot offer 12:34"
    assert response.headers["x-offer-source"] == "partner"
    assert response.headers["x-call-outcome"] == "success"
    assert response.headers["x-circuit-state"] == "closed"
    assert "x-fallback-reason" not in response.headers


async def test_three_failures_open_the_circuit_and_the_partner_is_called_no_more(partner: Partner) -> None:
    partner.status = 500
    async with offer_service(partner) as client:
        answers = [await client.get("/offer") for _ in range(6)]
        circuit = (await client.get("/offer/circuit")).json()
    assert [a.headers["x-fallback-reason"] for a in answers] == ["partner-status-500"] * 3 + [
        "circuit-open"
    ] * 3
    assert [a.headers["x-call-outcome"] for a in answers] == ["failure"] * 3 + ["not-permitted"] * 3
    assert partner.calls == 3
    assert circuit["current_state"] == "open"
    assert circuit["fail_counter"] == 3
    assert 0 < circuit["seconds_until_trial"] <= 15


async def test_a_4xx_is_a_fallback_that_never_opens_the_circuit(partner: Partner) -> None:
    partner.status = 404
    async with offer_service(partner) as client:
        answers = [await client.get("/offer") for _ in range(10)]
        circuit = (await client.get("/offer/circuit")).json()
    assert {a.headers["x-fallback-reason"] for a in answers} == {"partner-status-404"}
    assert {a.headers["x-call-outcome"] for a in answers} == {"ignored"}
    assert (circuit["current_state"], circuit["fail_counter"]) == ("closed", 0)


@pytest.mark.parametrize(
    ("status", "body", "headers", "reason"),
    [
        (200, b"", {}, "partner-bad-body"),
        (200, b"\xff\xfe", {}, "partner-bad-body"),
        (200, b'{"offer": 1}', {"content-type": "application/json"}, "partner-bad-body"),
        (200, b"x" * (64 * 1024 + 1), {}, "partner-bad-body"),
        (
            200,
            gzip.compress(gzip.compress(b"0" * 1_000_000, mtime=0), mtime=0),
            {"content-encoding": "gzip, gzip"},
            "partner-bad-body",
        ),
        (429, b"slow down", {"retry-after": "5"}, "partner-status-429"),
        (503, b"down", {}, "partner-status-503"),
        (302, b"", {"location": "/elsewhere"}, "partner-status-302"),
    ],
    ids=["empty", "not-utf8", "json", "too-large", "gzip-gzip", "429", "503", "302"],
)
async def test_every_bad_answer_is_a_counted_failure_and_a_fallback(
    partner: Partner, status: int, body: bytes, headers: dict[str, str], reason: str
) -> None:
    partner.status, partner.body = status, body
    partner.headers = {"content-type": "text/plain", **headers}
    async with offer_service(partner) as client:
        response = await client.get("/offer")
        circuit = (await client.get("/offer/circuit")).json()
    assert response.status_code == 200
    assert response.json().startswith("Cold offer fallback ")
    assert response.headers["x-fallback-reason"] == reason
    assert circuit["fail_counter"] == 1


@pytest.mark.parametrize("status", [429, 503])
async def test_a_retry_after_holds_the_circuit_open_that_long_once_it_opens(
    partner: Partner, status: int
) -> None:
    partner.status, partner.body = status, b"busy"
    partner.headers = {"content-type": "text/plain", "retry-after": "120"}
    async with offer_service(partner, circuit_reset_timeout=15, circuit_fail_max=3) as client:
        answers = [await client.get("/offer") for _ in range(4)]
        circuit = (await client.get("/offer/circuit")).json()
    # One "come back later" is a failure like any other; the third opens the circuit.
    assert [a.headers["x-call-outcome"] for a in answers] == ["failure"] * 3 + ["not-permitted"]
    assert circuit["current_state"] == "open" and 110 < circuit["seconds_until_trial"] <= 120
    assert partner.calls == 3


async def test_the_rate_policy_shows_its_window(partner: Partner) -> None:
    partner.status = 500
    async with offer_service(
        partner, circuit_policy="rate", circuit_min_calls=4, circuit_failure_rate=0.5
    ) as client:
        answers = [await client.get("/offer") for _ in range(3)]
        closed = (await client.get("/offer/circuit")).json()
        await client.get("/offer")
        opened = (await client.get("/offer/circuit")).json()
    assert [a.headers["x-call-outcome"] for a in answers] == ["failure"] * 3  # under min_calls: no trip
    assert closed["policy"] == "rate" and closed["current_state"] == "closed"
    assert closed["window"]["calls"] == 3 and closed["window"]["failure_rate"] == 1.0
    assert opened["current_state"] == "open"


async def test_a_gzipped_hot_offer_is_read(partner: Partner) -> None:
    partner.body = gzip.compress(b"Hot offer 56:78", mtime=0)
    partner.headers = {"content-type": "text/plain", "content-encoding": "gzip"}
    async with offer_service(partner) as client:
        assert (await client.get("/offer")).json() == "Hot offer 56:78"


async def test_a_partner_that_cannot_be_reached_is_a_connection_error(partner: Partner) -> None:
    partner.refuses = True
    async with offer_service(partner) as client:
        response = await client.get("/offer")
    assert response.headers["x-fallback-reason"] == "partner-connection-error"


async def test_forcing_the_circuit_with_the_token(partner: Partner) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with offer_service(partner, admin_token=TOKEN) as client:
        assert (await client.post("/offer/circuit/open")).status_code == 401
        opened = await client.post("/offer/circuit/open", headers=auth)
        assert opened.json()["current_state"] == "open"
        assert (await client.get("/offer")).headers["x-fallback-reason"] == "circuit-open"
        assert partner.calls == 0
        closed = await client.post("/offer/circuit/close", headers=auth)
        assert closed.json()["current_state"] == "closed"
        assert (await client.get("/offer")).headers["x-offer-source"] == "partner"


async def test_health_metrics_and_the_circuits_keys(partner: Partner) -> None:
    async with offer_service(partner) as client:
        await client.get("/offer")
        health = (await client.get("/health")).json()
        metrics = (await client.get("/metrics")).text
        circuit = (await client.get("/offer/circuit")).json()
    assert health == {"status": "ok", "storage": "memory"}
    assert 'circuit_breaker_calls_total{breaker="partner-offer",outcome="success"}' in metrics
    assert set(circuit) == {
        "name",
        "current_state",
        "fail_counter",
        "fail_max",
        "reset_timeout",
        "opened_at",
        "seconds_until_trial",
        "trial_in_flight",
        "storage",
        "degraded",
        "policy",
        "window",
    }


async def test_a_body_over_the_cap_is_refused_before_it_is_read(partner: Partner) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    async with offer_service(partner, admin_token=TOKEN) as client:
        response = await client.put("/partner/chaos", content=b"{" + b" " * 100_000 + b"}", headers=auth)
    assert response.status_code == 413


async def test_the_partner_app_serves_offers_stats_and_its_chaos_settings() -> None:
    async with lifespan(partner_offer_service.app), asgi_client(partner_offer_service.app) as client:
        hot = await client.get("/offer/hot")
        chaos = (await client.get("/chaos")).json()
        # No token set, and no socket to prove a loopback bind: an admin action is refused.
        refused = await client.put("/chaos", json={"status_code": 503})
        stats = (await client.get("/stats")).json()
    assert hot.status_code == partner_offer_service.STATUS_CODE
    assert hot.text.startswith("Hot offer ")
    assert chaos["effective_status_code"] == partner_offer_service.STATUS_CODE
    assert refused.status_code == 403
    assert stats == {"requests_received": 1, "status_code": partner_offer_service.STATUS_CODE}


class Unforeseen(Exception):
    """What no rule of the partner client names: a bug, or an answer nobody imagined."""


@pytest.mark.parametrize("error", [Unforeseen("?"), ValueError("could not convert"), KeyError("x")])
async def test_whatever_the_partner_path_raises_is_a_counted_failure_and_a_fallback(error: Exception) -> None:
    async def raising() -> str:
        raise error

    app = create_app(OfferSettings(circuit_fail_max=3))  # type: ignore[call-arg]
    async with lifespan(app), asgi_client(app) as client:
        app.state.partner.fetch_hot_offer = raising
        response = await client.get("/offer")
        circuit = (await client.get("/offer/circuit")).json()
    assert response.status_code == 200
    assert response.json().startswith("Cold offer fallback ")
    assert response.headers["x-offer-source"] == "fallback"
    assert response.headers["x-call-outcome"] == "failure"
    assert response.headers["x-fallback-reason"] == UNEXPECTED_ERROR
    assert circuit["fail_counter"] == 1


UNWRITABLE_BODIES = [
    b'{"latency": NaN}',
    b'{"latency": Infinity}',
    b'{"failure_rate": -Infinity}',
    b'{"latency": 1e999}',
    b'{"mode": "\\ud800"}',
]


@pytest.mark.parametrize("body", UNWRITABLE_BODIES, ids=[b.decode() for b in UNWRITABLE_BODIES])
async def test_a_chaos_body_python_reads_but_json_cannot_write_is_a_422(
    partner: Partner, body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(partner_offer_service.app.state._state, "admin_guard", AdminGuard(TOKEN))
    headers = {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"}
    async with (
        offer_service(partner, admin_token=TOKEN) as offers,
        asgi_client(partner_offer_service.app) as partner_app,
    ):
        relayed = await offers.put("/partner/chaos", content=body, headers=headers)
        direct = await partner_app.put("/chaos", content=body, headers=headers)
    for response in (relayed, direct):
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"][0] == "body"

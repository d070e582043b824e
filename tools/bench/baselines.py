"""What the offer service is measured against, each an ASGI app serving `GET /offer`.

- `naive_app`: the pattern as it is usually written: a sync endpoint, the
  `@breaker` decorator, and a new `httpx.Client` per request.
- `naive_async_app`: the same with an async endpoint and a new
  `httpx.AsyncClient` per request (and `breaker.calling()` around it).
- `shared_httpx_app`: this project's service on httpx's default transport, to
  show what the aiohttp transport buys.
- `aiohttp_proxy_app`: one shared aiohttp session and no breaker: the cost of
  a Python proxy hop, the ceiling for a healthy partner.
- `fallback_app`: answers the cold offer without calling anyone: the ceiling
  for an open circuit.
- `plain_fallback_app`: the same through `PlainRoute`, as `/offer` is served:
  what an open circuit's request would cost with no breaker, no counters and
  no headers saying why.

Configured from the same environment as the offer service.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import httpx
import pybreaker
from fastapi import FastAPI, Request, Response

from offer_service import OfferResponse, cold_offer, cold_offer_body, create_app
from service.partner_client import MAX_CONNECTIONS
from service.plain_route import PlainRoute
from service.settings import OfferSettings

PARTNER_URL = os.environ.get("PARTNER_OFFER_URL", "http://127.0.0.1:8000") + "/offer/hot"
TIMEOUT = float(os.environ.get("PARTNER_TIMEOUT", "2"))
naive_breaker = pybreaker.CircuitBreaker(
    fail_max=3, reset_timeout=float(os.environ.get("CIRCUIT_RESET_TIMEOUT", "15"))
)


naive_app = FastAPI()


@naive_breaker
def fetch_hot_offer_naively() -> str:
    with httpx.Client(timeout=TIMEOUT) as client:
        response = client.get(PARTNER_URL)
        response.raise_for_status()
        return response.text


@naive_app.get("/offer")
def naive_offer() -> str:
    try:
        return fetch_hot_offer_naively()  # type: ignore[no-any-return]
    except Exception:
        return cold_offer()


naive_async_app = FastAPI()


@naive_async_app.get("/offer")
async def naive_async_offer() -> str:
    try:
        with naive_breaker.calling():
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                response = await client.get(PARTNER_URL)
                response.raise_for_status()
                return response.text
    except Exception:
        return cold_offer()


@asynccontextmanager
async def default_httpx_client(settings: OfferSettings) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS)
    async with httpx.AsyncClient(
        base_url=settings.partner_offer_url, timeout=settings.partner_timeout, limits=limits
    ) as client:
        yield client


shared_httpx_app = create_app(client_factory=default_httpx_client)


@asynccontextmanager
async def aiohttp_session(app: FastAPI) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT)
    ) as session:
        app.state.session = session
        yield


aiohttp_proxy_app = FastAPI(lifespan=aiohttp_session)


@aiohttp_proxy_app.get("/offer")
async def aiohttp_proxy_offer(request: Request) -> str:
    try:
        async with request.app.state.session.get(PARTNER_URL) as response:
            if response.status == 200:
                return await response.text()  # type: ignore[no-any-return]
    except (aiohttp.ClientError, TimeoutError):
        pass
    return cold_offer()


fallback_app = FastAPI()


@fallback_app.get("/offer")
async def fallback_offer() -> str:
    return cold_offer()


plain_fallback_app = FastAPI()


async def plain_fallback_offer() -> Response:
    return OfferResponse(cold_offer_body(), head=())


plain_fallback_app.router.add_api_route("/offer", plain_fallback_offer, route_class_override=PlainRoute)


async def health() -> dict[str, str]:
    return {"status": "ok"}


for _app in (naive_app, naive_async_app, aiohttp_proxy_app, fallback_app, plain_fallback_app):
    _app.get("/health")(health)

"""The offer service: a hot offer from the partner when it can, a cold one when it can't.

Every partner call goes through the circuit breaker. When the call fails, or
the circuit is open and the call is not even attempted, the client still gets
200 and an offer: the cold fallback. Response headers say which one it got and
why, so the fallback is never silent.

Run it with `python offer_service.py` (uvicorn, reload, 127.0.0.1:8001).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
import uvicorn
from fastapi import FastAPI, Request, Response

import settings as settings_module
from circuit_breaker import AsyncCircuitBreaker, CircuitOpen, PartnerRejected, build_breaker
from partner_client import HttpClientFactory, PartnerClient, PartnerFailure, http_client
from settings import OfferSettings

# Redis is local infrastructure: if it can't answer in half a second it is
# down, and the breaker should not make requests wait longer than that.
REDIS_TIMEOUT = 0.5


def cold_offer() -> str:
    return f"Cold offer fallback {datetime.now():%M:%S}"


def _offer_response(offer: str, headers: dict[str, str]) -> Response:
    # Built by hand rather than through a response model: this is the hot
    # path, and the body is one JSON string.
    return Response(json.dumps(offer), media_type="application/json", headers=headers)


OFFER_HEADERS = {
    "X-Offer-Source": {"description": "`partner` or `fallback`", "schema": {"type": "string"}},
    "X-Fallback-Reason": {"description": "why the fallback was served", "schema": {"type": "string"}},
    "X-Circuit-State": {"description": "closed, open or half-open", "schema": {"type": "string"}},
}


def _redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT)


def create_app(
    settings: OfferSettings | None = None, client_factory: HttpClientFactory = http_client
) -> FastAPI:
    """The offer service; `client_factory` swaps the HTTP client, as `bench/` does to compare them."""
    settings = settings or settings_module.load(OfferSettings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis_client = _redis_client(settings.redis_url) if settings.redis_url else None
        # Building pybreaker's Redis storage talks to Redis: not on the event loop.
        app.state.breaker = await asyncio.to_thread(build_breaker, settings, redis_client)
        async with client_factory(settings) as client:
            app.state.partner = PartnerClient(client, settings.partner_timeout)
            yield
        if redis_client is not None:
            redis_client.close()

    app = FastAPI(
        title="Offer service",
        description="Hot offers from the partner through a circuit breaker, cold ones when it is open.",
        lifespan=lifespan,
    )
    app.state.settings = settings

    # The routes read the breaker and the client from `request.app.state`
    # (set by the lifespan) rather than through `Depends`: resolving
    # dependencies was about a tenth of the CPU of an open-circuit request.

    @app.get(
        "/offer",
        response_model=str,
        summary="A hot offer from the partner, or a cold fallback",
        responses={200: {"headers": OFFER_HEADERS}},
    )
    async def offer(request: Request) -> Response:
        breaker: AsyncCircuitBreaker = request.app.state.breaker
        partner: PartnerClient = request.app.state.partner
        try:
            hot = await breaker.call(partner.fetch_hot_offer)
        except (CircuitOpen, PartnerFailure) as exc:
            reason = exc.reason
        except PartnerRejected as exc:
            reason = str(exc)
        else:
            return _offer_response(hot, {"X-Offer-Source": "partner", "X-Circuit-State": breaker.state_name})
        return _offer_response(
            cold_offer(),
            {
                "X-Offer-Source": "fallback",
                "X-Fallback-Reason": reason,
                "X-Circuit-State": breaker.state_name,
            },
        )

    @app.get("/offer/circuit", summary="The circuit breaker's state")
    async def circuit(request: Request) -> dict[str, Any]:
        return await request.app.state.breaker.snapshot()  # type: ignore[no-any-return]

    @app.get("/health", summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


app = create_app()


if __name__ == "__main__":
    config: OfferSettings = app.state.settings
    here = str(Path(__file__).resolve().parent)
    uvicorn.run(
        "offer_service:app",
        host=config.host,
        port=config.port,
        reload=True,
        app_dir=here,
        reload_dirs=[here],
        # The walkthrough edits the partner's file; restarting this service
        # too would reset its circuit and hide what the breaker does.
        reload_excludes=["partner_offer_service.py"],
        log_config=settings_module.log_config(config.log_level, config.httpx_log_level),
    )

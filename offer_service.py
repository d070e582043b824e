"""The offer service: a hot offer from the partner when it can, a cold one when it can't.

Every partner call goes through the circuit breaker. When the call fails, or
the circuit is open and the call is not even attempted, the client still gets
200 and an offer: the cold fallback. Response headers say which one it got and
why, so the fallback is never silent.

Run it with `python offer_service.py` (uvicorn, reload, 127.0.0.1:8001).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles

from circuit_breaker import BREAKER_NAME, AsyncCircuitBreaker, CircuitOpen, PartnerRejected, build_breaker
from service import http_limits, method_not_allowed
from service import settings as settings_module
from service.admin import AdminGuard
from service.circuit_events import CircuitObserver, Outcome
from service.dashboard import STATIC_DIR, build_router
from service.partner_client import (
    HttpClientFactory,
    LocalResourceError,
    PartnerClient,
    PartnerFailure,
    http_client,
)
from service.redis_state import SharedCircuitState, connect_cluster_aware
from service.settings import OfferSettings

log = logging.getLogger("offer_service")


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


def create_app(
    settings: OfferSettings | None = None, client_factory: HttpClientFactory = http_client
) -> FastAPI:
    """The offer service; `client_factory` swaps the HTTP client, as `tools/bench/` does to compare them."""
    settings = settings or settings_module.load(OfferSettings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings_module.configure_logging(settings.log_level, settings.httpx_log_level)
        redis_client = None
        if settings.redis_url:
            try:
                redis_client = await connect_cluster_aware(settings.redis_url)
            except (redis.RedisError, OSError) as exc:
                raise settings_module.SettingsError(redis_error_line(settings.redis_url, exc)) from None
        breaker = app.state.breaker = build_breaker(settings, redis_client, not_counted=(LocalResourceError,))
        observer = app.state.observer = CircuitObserver(BREAKER_NAME)
        breaker.breaker.add_listener(observer)
        if breaker.shared:
            await breaker.shared.start()
        try:
            async with client_factory(settings) as client:
                app.state.http_client = client
                app.state.partner = PartnerClient(client, settings.partner_timeout)
                yield
        finally:
            # Bounded (redis_state.STOP_TIMEOUT) whatever the Redis client does with
            # the cancellation of its tasks: SIGTERM always ends the process.
            if breaker.shared:
                await breaker.shared.stop()
        log.info("shutdown: the partner client and the Redis connections are closed")

    app = FastAPI(
        title="Offer service",
        description="Hot offers from the partner through a circuit breaker, cold ones when it is open.",
        lifespan=lifespan,
        max_body_size=http_limits.MAX_BODY_BYTES,
        # A redirect to the slash-less path would be built from the request's Host.
        redirect_slashes=False,
        # Swagger UI and ReDoc load scripts from a CDN onto this origin; /openapi.json stays.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.add_middleware(settings_module.OneLineStartupErrors)
    method_not_allowed.install(app)
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
        state = request.app.state
        breaker: AsyncCircuitBreaker = state.breaker
        observer: CircuitObserver = state.observer
        outcome: Outcome
        try:
            hot = await breaker.call(state.partner.fetch_hot_offer)
        except CircuitOpen as exc:
            reason, outcome = exc.reason, "rejected"
        except PartnerFailure as exc:
            reason, outcome = exc.reason, "failure"
        except PartnerRejected as exc:
            reason, outcome = str(exc), "excluded"
        except LocalResourceError as exc:
            # This process is out of descriptors or connections: the partner was
            # not asked, so for the counts, as for the breaker, it is not its failure.
            reason, outcome = exc.reason, "rejected"
        else:
            observer.served("success")
            return _offer_response(hot, {"X-Offer-Source": "partner", "X-Circuit-State": breaker.state_name})
        observer.served(outcome, reason)
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
        return request.app.state.breaker.snapshot()  # type: ignore[no-any-return]

    @app.get("/health", summary="Liveness, and whether the shared state is reachable")
    async def health(request: Request) -> dict[str, str]:
        shared: SharedCircuitState | None = request.app.state.breaker.shared
        if shared is None:
            return {"status": "ok", "storage": "memory"}
        return {"status": "ok" if shared.connected else "degraded", "storage": "redis"}

    # Registered after /offer: Starlette tries routes in order, and the hot path
    # should not pay for matching a dozen dashboard routes first.
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    app.include_router(build_router(AdminGuard(token)))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


app = create_app()


def redis_error_line(url: str, exc: BaseException) -> str:
    """The one line that stops start-up when Redis does not answer, or something else does."""
    shown = settings_module.without_password(url)
    if isinstance(exc, (redis.exceptions.InvalidResponse, redis.ResponseError)):
        return f"error: REDIS_URL={shown!r} does not answer as a Redis server: {exc}"
    return f"error: REDIS_URL={shown!r} is unreachable: {exc}"


def check_redis(url: str) -> None:
    """Stop start-up with one line, rather than a traceback, when Redis does not answer."""
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2).ping()
    except (redis.RedisError, OSError) as exc:
        raise settings_module.SettingsError(redis_error_line(url, exc)) from None


if __name__ == "__main__":
    config: OfferSettings = app.state.settings
    if config.redis_url:
        check_redis(config.redis_url)
    if config.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each worker counts in its own files here, and /metrics adds them up (metrics.py).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="offer-metrics-")
    here = str(Path(__file__).resolve().parent)
    uvicorn.run(
        "offer_service:app",
        host=config.host,
        port=config.port,
        # uvicorn cannot reload and run several workers at once.
        reload=config.workers == 1,
        workers=config.workers,
        app_dir=here,
        reload_dirs=[here],
        # The walkthrough edits the partner's file; restarting this service
        # too would reset its circuit and hide what the breaker does.
        reload_excludes=["partner_offer_service.py"],
        log_config=settings_module.log_config(config.log_level, config.httpx_log_level),
        **http_limits.uvicorn_options(),
    )

"""The offer service: a hot offer from the partner when it can, a cold one when it can't.

Every partner call goes through the circuit breaker. When the call fails, or
the circuit is open and the call is not even attempted, the client still gets
200 and an offer: the cold fallback. Response headers say which one it got and
why, so the fallback is never silent.

Run it with `python offer_service.py` (uvicorn, reload, 127.0.0.1:8001).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pybreaker
import redis
import uvicorn
from fastapi import FastAPI, Response
from fastapi.staticfiles import StaticFiles
from redis.asyncio import Redis, RedisCluster

from circuit_breaker import (
    RATE_POLICY_FAIL_MAX,
    AsyncCircuitBreaker,
    CutShort,
    LogListener,
    NotPermitted,
    RatePolicy,
)
from service import (
    circuit_routes,
    dashboard,
    http_limits,
    method_not_allowed,
    redis_connection,
    validation_errors,
)
from service import settings as settings_module
from service.admin import AdminGuard
from service.body_limit import DeclaredBodyLimit
from service.circuit_events import CircuitObserver, Outcome
from service.partner_client import (
    HttpClientFactory,
    LocalResourceError,
    OncePerBurst,
    PartnerClient,
    PartnerDeclined,
    PartnerFailure,
    http_client,
)
from service.plain_route import PlainRoute
from service.redis_state import SharedCircuitState
from service.settings import OfferSettings

log = logging.getLogger("offer_service")

# The breaker's name: in logs and metrics, and the prefix of its keys in Redis.
BREAKER_NAME = "partner-offer"

OFFER_HEADERS = {
    "X-Offer-Source": {"description": "`partner` or `fallback`", "schema": {"type": "string"}},
    "X-Call-Outcome": {
        "description": "success, failure, ignored, not-permitted, cut-short or released",
        "schema": {"type": "string"},
    },
    "X-Fallback-Reason": {"description": "why the fallback was served", "schema": {"type": "string"}},
    "X-Circuit-State": {"description": "closed, open or half-open", "schema": {"type": "string"}},
}

# The reason of a fallback after an error no rule above names.
UNEXPECTED_ERROR = "partner-unexpected-error"


class OfferEndpoint:
    """`GET /offer`: the partner's hot offer through the breaker; on any other outcome, a cold one.

    An object holding what the route needs, set by the lifespan (`start`), rather
    than a function reading `request.app.state`: each read there is an ordinary
    attribute lookup that fails, and then Starlette's `State.__getattr__`, about
    6,000 instructions, three times a request (callgrind). The objects are the
    ones `app.state` holds too."""

    breaker: AsyncCircuitBreaker
    partner: PartnerClient
    observer: CircuitObserver
    unexpected_errors: OncePerBurst

    def start(
        self,
        breaker: AsyncCircuitBreaker,
        partner: PartnerClient,
        observer: CircuitObserver,
        unexpected_errors: OncePerBurst,
    ) -> None:
        self.breaker, self.partner = breaker, partner
        self.observer, self.unexpected_errors = observer, unexpected_errors

    async def offer(self) -> Response:
        """The answer to one `GET /offer`."""
        breaker = self.breaker
        try:
            hot = await breaker.call(self.partner.fetch_hot_offer, fallback=self.why_cold)
        except Exception as exc:
            # What the breaker hands to no fallback: an ignored error (a 4xx), one not
            # counted (this process's own trouble), or the late outcome of a call the
            # circuit stopped waiting for.
            hot = self.why_cold(exc)
        if type(hot) is str:
            self.observer.served("success")
            head = offer_head("partner", "success", None, breaker.state_name)
            return OfferResponse(json.dumps(hot).encode(), head)
        assert isinstance(hot, Cold)
        self.observer.served(hot.outcome, hot.reason)
        return OfferResponse(
            cold_offer_body(), offer_head("fallback", hot.outcome, hot.reason, breaker.state_name)
        )

    def why_cold(self, exc: Exception) -> Cold:
        """Why the cold offer is served after `exc`. The breaker's fallback: it hands over
        the exception rather than raising it, and raising it through the call on every
        request of an open circuit cost about 39,000 instructions a request under load
        (uvicorn, 50 requests in flight, callgrind: the tracebacks and their frames)."""
        if isinstance(exc, NotPermitted):
            return Cold(exc.reason, "not-permitted")
        if isinstance(exc, CutShort):
            return Cold(exc.reason, "cut-short")
        if isinstance(exc, PartnerFailure):
            return Cold(exc.reason, "failure")
        if isinstance(exc, PartnerDeclined):
            return Cold(str(exc), "ignored")
        if isinstance(exc, LocalResourceError):
            # This process is out of descriptors or connections: the partner was
            # not asked, so the permit went back and it is nobody's failure.
            return Cold(exc.reason, "released")
        # Whatever else the partner path raises is a bug of ours or an answer no rule
        # foresaw (a `Retry-After: ²` once made half the answers 500s): the breaker
        # has counted it as a failure, and the client still gets an offer.
        self.unexpected_errors.occurred(repr(exc), exc)
        return Cold(UNEXPECTED_ERROR, "failure")


@dataclass(frozen=True, slots=True)
class Cold:
    """A cold offer's `X-Fallback-Reason` and `X-Call-Outcome`."""

    reason: str
    outcome: Outcome


def cold_offer() -> str:
    return _cold_offer_at(int(time.time()))


def cold_offer_body() -> bytes:
    """The cold offer as the JSON string `/offer` answers."""
    return _cold_offer_body_at(int(time.time()))


@functools.lru_cache(maxsize=1)
def _cold_offer_at(second: int) -> str:
    """Built once a second: formatting `datetime.now()` for every cold offer was 5% of the
    CPU of an open circuit's request (py-spy), the path a whole outage takes."""
    return f"Cold offer fallback {time.strftime('%M:%S', time.localtime(second))}"


@functools.lru_cache(maxsize=1)
def _cold_offer_body_at(second: int) -> bytes:
    return json.dumps(_cold_offer_at(second)).encode()


# Enough for every state, outcome and class of reason; a partner sending a new
# status code on every answer only evicts the ones it sent before.
HEADS_CACHED = 256


@functools.lru_cache(maxsize=HEADS_CACHED)
def offer_head(
    source: str, outcome: str, reason: str | None, circuit: str
) -> tuple[tuple[bytes, bytes], ...]:
    """The headers of an `/offer` answer, encoded: once per combination rather than for
    every answer, as Starlette's `Response` would."""
    headers = {"X-Offer-Source": source, "X-Call-Outcome": outcome}
    if reason is not None:
        headers["X-Fallback-Reason"] = reason
    headers["X-Circuit-State"] = circuit
    return tuple((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items())


JSON_CONTENT_TYPE = (b"content-type", b"application/json")


class OfferResponse(Response):
    """An offer, as a JSON string, with its headers already encoded (`offer_head`).

    Built by hand rather than through a response model: this is the hot path,
    and the body is one JSON string."""

    def __init__(self, body: bytes, head: tuple[tuple[bytes, bytes], ...]) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = [*head, (b"content-length", str(len(body)).encode()), JSON_CONTENT_TYPE]


def build_breaker(
    settings: OfferSettings,
    redis_client: Redis | RedisCluster | None = None,
    not_counted: tuple[type[BaseException], ...] = (),
    clock: Callable[[], float] = time.monotonic,
) -> AsyncCircuitBreaker:
    """The breaker of the walkthrough: fail_max=3, reset_timeout=15 unless configured,
    or the rate policy with CIRCUIT_POLICY=rate.

    State lives in memory, per process, unless a Redis client is given: then
    in Redis, shared by every process that uses it (`service/redis_state.py`);
    call `await breaker.shared.start()` before serving.
    """
    policy = None
    fail_max = settings.circuit_fail_max
    if settings.circuit_policy == "rate":
        policy = RatePolicy(
            window=settings.circuit_window,
            min_calls=settings.circuit_min_calls,
            failure_rate=settings.circuit_failure_rate,
            slow_call_seconds=settings.circuit_slow_call_seconds,
            slow_call_rate=settings.circuit_slow_call_rate,
        )
        fail_max = RATE_POLICY_FAIL_MAX
    shared = None
    storage: pybreaker.CircuitBreakerStorage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
    # The trial outlives the longest trial call; its lease expires if its holder dies, and
    # a trial that never reports frees its place as late.
    lease = settings.partner_timeout + 1
    if redis_client is not None:
        storage = shared = SharedCircuitState(
            redis_client,
            BREAKER_NAME,
            fail_max,
            settings.circuit_reset_timeout,
            lease,
            clock,
            policy,
            max_hold=settings.circuit_retry_after_max,
        )
    state_machine = pybreaker.CircuitBreaker(
        fail_max=fail_max,
        reset_timeout=settings.circuit_reset_timeout,
        success_threshold=settings.circuit_half_open_calls,
        exclude=[PartnerDeclined],
        listeners=[LogListener()],
        state_storage=storage,
        name=BREAKER_NAME,
    )
    return AsyncCircuitBreaker(
        state_machine,
        shared,
        not_counted,
        clock,
        policy,
        max_retry_after=settings.circuit_retry_after_max,
        max_trial_seconds=lease,
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Owns what the routes share: the breaker, its Redis connections, the HTTP client."""
    settings: OfferSettings = app.state.settings
    settings_module.configure_logging(settings.log_level, settings.httpx_log_level)
    for line in settings_module.combination_warnings(settings):
        log.warning("%s", line)
    http_limits.warn_of_limits_not_in_force()
    redis_client = (
        await reach_redis(settings.redis_url, settings.redis_startup_seconds) if settings.redis_url else None
    )
    breaker = app.state.breaker = build_breaker(settings, redis_client, not_counted=(LocalResourceError,))
    shared = breaker.shared if isinstance(breaker.shared, SharedCircuitState) else None
    app.state.observer = CircuitObserver(BREAKER_NAME)
    app.state.unexpected_errors = OncePerBurst(
        log, "an /offer call raised an unexpected error", note="counted as a failure, the fallback served"
    )
    breaker.add_listener(app.state.observer)
    if shared:
        await start_shared_state(shared, settings)
    try:
        async with app.state.client_factory(settings) as client:
            app.state.http_client = client
            app.state.partner = PartnerClient(client, settings.partner_timeout)
            app.state.offer.start(breaker, app.state.partner, app.state.observer, app.state.unexpected_errors)
            yield
    finally:
        # Bounded (redis_state.STOP_TIMEOUT) whatever the Redis client does with
        # the cancellation of its tasks: SIGTERM always ends the process.
        if shared:
            await shared.stop()
    log.info("shutdown: the partner client and the Redis connections are closed")


def create_app(
    settings: OfferSettings | None = None, client_factory: HttpClientFactory = http_client
) -> FastAPI:
    """The offer service; `client_factory` swaps the HTTP client, as `tools/bench/` does to compare them."""
    settings = settings or settings_module.load(OfferSettings)
    app = FastAPI(
        title="Offer service",
        description="Hot offers from the partner through a circuit breaker, cold ones when it is open.",
        lifespan=lifespan,
        # A redirect to the slash-less path would be built from the request's Host.
        redirect_slashes=False,
        # Swagger UI and ReDoc load scripts from a CDN onto this origin; /openapi.json stays.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.client_factory = client_factory
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    app.state.admin_guard = AdminGuard(token)
    app.state.offer = OfferEndpoint()
    app.add_middleware(settings_module.OneLineStartupErrors)
    # FastAPI's `max_body_size`, skipped by requests without a body such as `GET /offer`.
    app.add_middleware(DeclaredBodyLimit, max_body_size=http_limits.MAX_BODY_BYTES)
    method_not_allowed.install(app)
    validation_errors.install(app)
    # /offer first: Starlette tries routes in order, and the hot path should not pay
    # for matching a dozen others first. On the app itself rather than through an
    # included router, whose matching FastAPI does again for every request. A `PlainRoute`:
    # the endpoint reads nothing from the request, so FastAPI's machinery for reading one is skipped.
    app.router.add_api_route(
        "/offer",
        app.state.offer.offer,
        methods=["GET"],
        response_model=str,
        summary="A hot offer from the partner, or a cold fallback",
        responses={200: {"headers": OFFER_HEADERS}},
        route_class_override=PlainRoute,
    )
    app.include_router(circuit_routes.router)
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=dashboard.STATIC_DIR), name="static")
    return app


app = create_app()


# Errors that may pass: Redis not listening yet, or too slow this once.
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OSError)


async def reach_redis(url: str, patience: float) -> Redis | RedisCluster:
    """A client of the Redis at `url`, tried until it answers for up to `patience` seconds
    (REDIS_STARTUP_SECONDS), or `SettingsError` with one line: unreachable, or something
    that is not Redis answering."""
    deadline = time.monotonic() + patience
    pause = 0.05
    while True:
        try:
            return await redis_connection.connect(url)
        except redis.AuthenticationError as exc:
            raise settings_module.SettingsError(redis_error_line(url, exc, unreachable=False)) from None
        except UNREACHABLE as exc:
            if redis_connection.tls_failure(exc) or time.monotonic() + pause > deadline:
                raise settings_module.SettingsError(
                    redis_error_line(url, exc, unreachable=True, patience=patience)
                ) from None
        except Exception as exc:
            # An echo server or an HTTP server on that port: redis-py fails in its parser,
            # sometimes with an AttributeError of its own. Not Redis, whatever it raised.
            raise settings_module.SettingsError(redis_error_line(url, exc, unreachable=False)) from None
        await asyncio.sleep(pause)
        pause = min(pause * 2, 1.0)


async def start_shared_state(shared: SharedCircuitState, settings: OfferSettings) -> None:
    """The shared state's first load, tried again as `reach_redis` tries to connect. Its one
    round trip has the breaker's short timeout too: beside a Redis 0.2 s away on a loaded
    machine, a single try ended start-up with a traceback ("Timeout reading from ...")."""
    assert settings.redis_url is not None
    deadline = time.monotonic() + settings.redis_startup_seconds
    while True:
        try:
            return await shared.start()
        except UNREACHABLE as exc:
            if time.monotonic() >= deadline:
                line = redis_error_line(settings.redis_url, exc, True, settings.redis_startup_seconds)
                raise settings_module.SettingsError(line) from None
        await asyncio.sleep(0.1)


def redis_error_line(url: str, exc: BaseException, unreachable: bool, patience: float = 0.0) -> str:
    """The one line that stops start-up when Redis does not answer, or something else does;
    an unreachable one names the setting that would wait longer."""
    shown = settings_module.without_password(url)
    if tls := redis_connection.tls_failure(exc):
        return f"error: REDIS_URL={shown!r}: {tls}"
    if unreachable:
        return f"error: REDIS_URL={shown!r} is unreachable after {patience:g} s of tries (REDIS_STARTUP_SECONDS): {exc}"
    return f"error: REDIS_URL={shown!r} does not answer as a Redis server: {str(exc)[:200] or type(exc).__name__}"


def check_redis(url: str, patience: float) -> None:
    """Stop before uvicorn starts (and its reloader, or its workers) with one line, rather than
    a traceback from each process, when Redis does not answer; the lifespan checks again."""

    async def reach_and_close() -> None:
        client = await reach_redis(url, patience)
        await client.aclose()

    asyncio.run(reach_and_close())


def serve(config: OfferSettings) -> None:
    """`python offer_service.py`: uvicorn with reload (one worker) or `WORKERS` processes."""
    here = str(Path(__file__).resolve().parent)
    with contextlib.ExitStack() as cleanup:
        if config.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Each worker counts in its own files here, and /metrics adds them up (metrics.py);
            # removed when uvicorn returns, after a SIGTERM or Ctrl-C too.
            metrics_dir = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="offer-metrics-"))
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
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


if __name__ == "__main__":
    settings_in_use: OfferSettings = app.state.settings
    if settings_in_use.redis_url:
        check_redis(settings_in_use.redis_url, settings_in_use.redis_startup_seconds)
    serve(settings_in_use)

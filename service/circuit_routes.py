"""The circuit over HTTP: its status, its event stream, an operator's hand on it, health.

- `GET /offer/circuit`: the status (`CircuitStatus`, in the OpenAPI document).
- `GET /offer/circuit/events`: Server-Sent Events, transitions and snapshots
  (`MAX_EVENT_STREAMS` at once, a few per client address, five minutes each;
  a client that stops reading is dropped).
- `POST /offer/circuit/{open,close,reset}`: trip or reset the circuit (admin).
- `GET /health`: liveness, and whether the shared state is reachable.

The routes read the breaker and the observer from `request.app.state` (set by
the offer service's lifespan) rather than through `Depends`: resolving
dependencies was about a tenth of the CPU of an open-circuit `/offer`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Callable
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from circuit_breaker import AsyncCircuitBreaker
from service.admin import ADMIN_RESPONSES, AdminRoute
from service.circuit_events import (
    MAX_EVENT_STREAMS,
    MAX_EVENT_STREAMS_PER_CLIENT,
    CircuitObserver,
    StreamRefused,
)

log = logging.getLogger("circuit_routes")

# A client whose socket takes nothing for this long has stopped reading: its
# snapshots would pile up in memory, so it is dropped and its slot freed.
SEND_TIMEOUT = 10.0


class WindowStatus(BaseModel):
    """The rate policy's window: the fleet's with Redis state (at most one flush behind)."""

    seconds: float = Field(description="CIRCUIT_WINDOW")
    calls: int = Field(description="calls in the window")
    failures: int = Field(description="of which failed")
    slow_calls: int = Field(description="of which took CIRCUIT_SLOW_CALL_SECONDS or more")
    failure_rate: float | None = Field(description="failures / calls; null with no calls")
    slow_call_rate: float | None = Field(description="slow calls / calls; null with no calls")
    min_calls: int = Field(description="CIRCUIT_MIN_CALLS: below it the rates do not count")
    failure_rate_threshold: float = Field(description="CIRCUIT_FAILURE_RATE")
    slow_call_rate_threshold: float = Field(description="CIRCUIT_SLOW_CALL_RATE")
    slow_call_seconds: float = Field(description="CIRCUIT_SLOW_CALL_SECONDS")


class CircuitStatus(BaseModel):
    """What `GET /offer/circuit` answers; the README's table lists the same fields."""

    name: str | None = Field(description="the breaker's name, also its key prefix in Redis")
    current_state: Literal["closed", "open", "half-open"] = Field(description="the state now")
    fail_counter: int = Field(description="failures in a row since the last success")
    fail_max: int = Field(description="failures in a row that open the circuit (consecutive policy)")
    reset_timeout: float = Field(description="seconds the circuit stays open before a trial call")
    opened_at: datetime | None = Field(description="when it opened, this host's wall clock; null unless open")
    seconds_until_trial: float | None = Field(description="until a trial call is permitted; null unless open")
    trial_in_flight: bool = Field(description="this process is making the half-open trial call")
    storage: Literal["memory", "redis"] = Field(description="where the state lives")
    degraded: bool = Field(description="shared state configured but Redis unreachable: deciding alone")
    policy: Literal["consecutive", "rate"] = Field(description="what trips the circuit (CIRCUIT_POLICY)")
    window: WindowStatus | None = Field(description="the rate policy's window; null for consecutive")


def breaker_of(request: Request) -> AsyncCircuitBreaker:
    return request.app.state.breaker  # type: ignore[no-any-return]


def observer_of(request: Request) -> CircuitObserver:
    return request.app.state.observer  # type: ignore[no-any-return]


router = APIRouter()
admin_router = APIRouter(route_class=AdminRoute, responses=ADMIN_RESPONSES)


@router.get("/offer/circuit", summary="The circuit breaker's state")
async def circuit(request: Request) -> CircuitStatus:
    return CircuitStatus(**breaker_of(request).snapshot())


@admin_router.post(
    "/offer/circuit/open", summary="Trip the circuit: open now, a trial after the reset timeout"
)
async def trip(request: Request) -> CircuitStatus:
    breaker_of(request).trip()
    return await circuit(request)


@admin_router.post("/offer/circuit/close", summary="Reset the circuit: closed now, failure count at zero")
async def close(request: Request) -> CircuitStatus:
    breaker_of(request).reset()
    return await circuit(request)


@admin_router.post("/offer/circuit/reset", summary="Reset the circuit and clear the dashboard's history")
async def reset(request: Request) -> CircuitStatus:
    breaker_of(request).reset()
    observer_of(request).clear()
    return await circuit(request)


class EventStream(EventSourceResponse):
    """An event stream that frees its slot however it ends, and ends quietly for a stalled reader.

    sse-starlette rather than `fastapi.sse`: FastAPI's own stream has no send
    timeout, so a reader that stops reading would keep its slot for good."""

    def __init__(self, content: AsyncIterable[dict[str, str]], release: Callable[[], None]) -> None:
        super().__init__(content, ping=15, send_timeout=SEND_TIMEOUT)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            log.info("event stream: dropped a client that read nothing for %ss", SEND_TIMEOUT)
        finally:
            self._release()


@router.get(
    "/offer/circuit/events",
    summary="Server-Sent Events: transitions, and snapshots 4 times a second",
    responses={
        429: {"description": f"{MAX_EVENT_STREAMS_PER_CLIENT} event streams from this address already"},
        503: {"description": f"{MAX_EVENT_STREAMS} event streams are open already"},
    },
)
async def events(request: Request) -> EventSourceResponse:
    breaker, observer = breaker_of(request), observer_of(request)
    try:
        subscription = observer.subscribe(request.client.host if request.client else "")
    except StreamRefused as refused:
        raise HTTPException(refused.status, refused.detail, headers={"Retry-After": "10"}) from None

    def snapshot() -> dict[str, Any]:
        return {**breaker.snapshot(), "transitions": list(observer.transitions)}

    return EventStream(observer.events(subscription, snapshot), lambda: observer.unsubscribe(subscription))


@router.get("/health", summary="Liveness, and whether the shared state is reachable")
async def health(request: Request) -> dict[str, str]:
    shared = breaker_of(request).shared
    if shared is None:
        return {"status": "ok", "storage": "memory"}
    return {"status": "ok" if shared.connected else "degraded", "storage": "redis"}


router.include_router(admin_router)

"""The offer service's live dashboard and the controls behind its buttons.

- `GET /`: the page (static files in `static/`, no build step, nothing from a CDN).
- `GET /offer/circuit/events`: Server-Sent Events, transitions and snapshots
  (`MAX_EVENT_STREAMS` at once; a client that stops reading is dropped).
- `POST /offer/circuit/{open,close,reset}`: force the circuit (admin).
- `GET|PUT|DELETE /partner/chaos`: the partner's chaos controls, relayed so
  that the page talks to one origin only (admin to change them).
- `GET /metrics`: Prometheus.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import FileResponse
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from circuit_breaker import AsyncCircuitBreaker
from service import metrics
from service.admin import ADMIN_RESPONSES, BODY_RESPONSES, AdminGuard
from service.chaos import Chaos
from service.chaos_relay import relay
from service.circuit_events import MAX_EVENT_STREAMS, CircuitObserver

log = logging.getLogger("dashboard")

STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_HEADERS = {
    # Everything the page needs is on this origin: scripts, styles, the stream.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# A client whose socket takes nothing for this long has stopped reading: its
# snapshots would pile up in memory, so it is dropped and its slot freed.
SEND_TIMEOUT = 10.0


class EventStream(EventSourceResponse):
    """An event stream that frees its slot however it ends, and ends quietly for a stalled reader."""

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


def build_router(admin: AdminGuard) -> APIRouter:
    """The routes; `admin` guards the state-changing ones, before their body is read."""
    router = APIRouter()
    guarded = APIRouter(route_class=admin.route_class, responses=ADMIN_RESPONSES)

    def breaker_of(request: Request) -> AsyncCircuitBreaker:
        return request.app.state.breaker  # type: ignore[no-any-return]

    def observer_of(request: Request) -> CircuitObserver:
        return request.app.state.observer  # type: ignore[no-any-return]

    @router.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    @router.get(
        "/offer/circuit/events",
        summary="Server-Sent Events: transitions, and snapshots 4 times a second",
        responses={503: {"description": f"{MAX_EVENT_STREAMS} event streams are open already"}},
    )
    async def events(request: Request) -> EventSourceResponse:
        breaker, observer = breaker_of(request), observer_of(request)
        queue = observer.subscribe()
        if queue is None:
            raise HTTPException(
                503, f"{MAX_EVENT_STREAMS} event streams are open already", headers={"Retry-After": "10"}
            )

        def snapshot() -> dict[str, Any]:
            return {**breaker.snapshot(), "transitions": list(observer.transitions)}

        return EventStream(observer.events(queue, snapshot), lambda: observer.unsubscribe(queue))

    @guarded.post(
        "/offer/circuit/open",
        summary="Force the circuit open (admin)",
    )
    async def force_open(request: Request) -> dict[str, Any]:
        breaker_of(request).force_open()
        return breaker_of(request).snapshot()

    @guarded.post(
        "/offer/circuit/close",
        summary="Force the circuit closed (admin)",
    )
    async def force_close(request: Request) -> dict[str, Any]:
        breaker_of(request).force_close()
        return breaker_of(request).snapshot()

    @guarded.post(
        "/offer/circuit/reset",
        summary="Close the circuit and clear the dashboard's history (admin)",
    )
    async def reset(request: Request) -> dict[str, Any]:
        breaker_of(request).force_close()
        observer_of(request).clear()
        return breaker_of(request).snapshot()

    @router.get("/partner/chaos", summary="The partner's chaos settings")
    async def get_chaos(request: Request) -> Response:
        return await relay(request, "GET")

    @guarded.put(
        "/partner/chaos",
        summary="Set the partner's chaos (admin)",
        responses=BODY_RESPONSES,
    )
    async def put_chaos(request: Request, chaos: Chaos) -> Response:
        return await relay(request, "PUT", chaos.model_dump_json())

    @guarded.delete(
        "/partner/chaos",
        summary="The partner back to its defaults (admin)",
    )
    async def delete_chaos(request: Request) -> Response:
        return await relay(request, "DELETE")

    @router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    router.include_router(guarded)
    return router

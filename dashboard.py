"""The offer service's live dashboard and the controls behind its buttons.

- `GET /`: the page (static files in `static/`, no build step, nothing from a CDN).
- `GET /offer/circuit/events`: Server-Sent Events, transitions and snapshots.
- `POST /offer/circuit/{open,close,reset}`: force the circuit (admin).
- `GET|PUT|DELETE /partner/chaos`: the partner's chaos controls, relayed so
  that the page talks to one origin only (admin to change them).
- `GET /metrics`: Prometheus.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse
from sse_starlette import EventSourceResponse

import metrics
from admin import ADMIN_RESPONSES, BODY_RESPONSES
from chaos import Chaos
from chaos_relay import relay
from circuit_breaker import AsyncCircuitBreaker
from circuit_events import CircuitObserver

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


def build_router(admin: Any) -> APIRouter:
    """The routes; `admin` is the dependency that guards the state-changing ones."""
    router = APIRouter()
    guarded = [Depends(admin)]

    def breaker_of(request: Request) -> AsyncCircuitBreaker:
        return request.app.state.breaker  # type: ignore[no-any-return]

    def observer_of(request: Request) -> CircuitObserver:
        return request.app.state.observer  # type: ignore[no-any-return]

    @router.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    @router.get(
        "/offer/circuit/events", summary="Server-Sent Events: transitions, and snapshots 4 times a second"
    )
    async def events(request: Request) -> EventSourceResponse:
        breaker, observer = breaker_of(request), observer_of(request)

        def snapshot() -> dict[str, Any]:
            return {**breaker.snapshot(), "transitions": list(observer.transitions)}

        return EventSourceResponse(observer.events(snapshot), ping=15)

    @router.post(
        "/offer/circuit/open",
        summary="Force the circuit open (admin)",
        dependencies=guarded,
        responses=ADMIN_RESPONSES,
    )
    async def force_open(request: Request) -> dict[str, Any]:
        breaker_of(request).breaker.open()
        return breaker_of(request).snapshot()

    @router.post(
        "/offer/circuit/close",
        summary="Force the circuit closed (admin)",
        dependencies=guarded,
        responses=ADMIN_RESPONSES,
    )
    async def force_close(request: Request) -> dict[str, Any]:
        breaker_of(request).breaker.close()
        return breaker_of(request).snapshot()

    @router.post(
        "/offer/circuit/reset",
        summary="Close the circuit and clear the dashboard's history (admin)",
        dependencies=guarded,
        responses=ADMIN_RESPONSES,
    )
    async def reset(request: Request) -> dict[str, Any]:
        breaker_of(request).breaker.close()
        observer_of(request).clear()
        return breaker_of(request).snapshot()

    @router.get("/partner/chaos", summary="The partner's chaos settings")
    async def get_chaos(request: Request) -> Response:
        return await relay(request, "GET")

    @router.put(
        "/partner/chaos",
        summary="Set the partner's chaos (admin)",
        dependencies=guarded,
        responses={**ADMIN_RESPONSES, **BODY_RESPONSES},
    )
    async def put_chaos(request: Request, chaos: Chaos) -> Response:
        return await relay(request, "PUT", chaos.model_dump_json())

    @router.delete(
        "/partner/chaos",
        summary="The partner back to its defaults (admin)",
        dependencies=guarded,
        responses=ADMIN_RESPONSES,
    )
    async def delete_chaos(request: Request) -> Response:
        return await relay(request, "DELETE")

    @router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return router

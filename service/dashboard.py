"""The offer service's live dashboard and the controls behind its buttons.

- `GET /`: the page (static files in `static/`, no build step, nothing from a CDN);
  it reads the circuit's event stream (`circuit_routes.py`).
- `GET|PUT|DELETE /partner/chaos`: the partner's chaos controls, relayed so
  that the page talks to one origin only (admin to change them).
- `GET /metrics`: Prometheus; the rate policy's window is read at each scrape.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from service import metrics
from service.admin import ADMIN_RESPONSES, BODY_RESPONSES, AdminRoute
from service.chaos import Chaos
from service.chaos_relay import BAD_ANSWER, relay
from service.circuit_routes import breaker_of, observer_of

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

router = APIRouter()
admin_router = APIRouter(route_class=AdminRoute, responses=ADMIN_RESPONSES)


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)


# The partner may be the sick one: no usable answer within PARTNER_TIMEOUT is a 502.
RELAY_RESPONSES: dict[int | str, dict[str, str]] = {502: {"description": BAD_ANSWER}}


@router.get("/partner/chaos", summary="The partner's chaos settings", responses=RELAY_RESPONSES)
async def get_chaos(request: Request) -> Response:
    return await relay(request, "GET")


@admin_router.put(
    "/partner/chaos",
    summary="Set the partner's chaos (admin)",
    responses={**BODY_RESPONSES, **RELAY_RESPONSES},
)
async def put_chaos(request: Request, chaos: Chaos) -> Response:
    return await relay(request, "PUT", chaos.model_dump_json())


@admin_router.delete(
    "/partner/chaos", summary="The partner back to its defaults (admin)", responses=RELAY_RESPONSES
)
async def delete_chaos(request: Request) -> Response:
    return await relay(request, "DELETE")


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def prometheus(request: Request) -> Response:
    # The window slides with time, not with calls: read it now, not when a call ended,
    # or a quiet window would keep reporting the rates of its last busy second.
    breaker, observer = breaker_of(request), observer_of(request)
    metrics.observe_window(observer.name, breaker.window_counts())
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


router.include_router(admin_router)

"""The partner: sells hot offers, and is the dependency that gets sick.

To break it, change STATUS_CODE below to 500 and save: uvicorn reloads, and
the offer service's circuit breaker starts counting failures. Set it back to
200 to heal it. Or, without editing anything, set its behaviour at run time
with `PUT /chaos` (the dashboard's buttons do); `DELETE /chaos` returns to
what this file says.

Run it with `python partner_offer_service.py` (uvicorn, reload, 127.0.0.1:8000).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import uvicorn
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from service import http_limits, method_not_allowed, validation_errors
from service import settings as settings_module
from service.admin import ADMIN_RESPONSES, BODY_RESPONSES, AdminGuard, AdminRoute
from service.chaos import HANG_SECONDS, Chaos
from service.settings import PartnerSettings

STATUS_CODE = 200

settings = settings_module.load(PartnerSettings)
# What DELETE /chaos returns to: the file's STATUS_CODE and PARTNER_LATENCY.
DEFAULT_CHAOS = Chaos(latency=settings.partner_latency)


class ChaosView(Chaos):
    effective_status_code: int = Field(description="the status code answers get now")


class Stats(BaseModel):
    requests_received: int
    status_code: int


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings_module.configure_logging(settings.log_level)
    http_limits.warn_of_limits_not_in_force()
    app.state.requests_received = 0
    app.state.chaos = DEFAULT_CHAOS
    yield


app = FastAPI(
    title="Partner offer service",
    description="Sells hot offers.",
    lifespan=lifespan,
    max_body_size=http_limits.MAX_BODY_BYTES,
    redirect_slashes=False,  # no redirect built from the request's Host
    docs_url=None,  # Swagger UI and ReDoc come from a CDN; /openapi.json stays
    redoc_url=None,
)
method_not_allowed.install(app)
validation_errors.install(app)
app.state.admin_guard = AdminGuard(settings.admin_token.get_secret_value() if settings.admin_token else None)
# The admin routes: the guard runs before their body is read.
admin_routes = APIRouter(route_class=AdminRoute, responses=ADMIN_RESPONSES)


def status_code_now(chaos: Chaos) -> int:
    return chaos.status_code if chaos.status_code is not None else STATUS_CODE


def chaos_view(chaos: Chaos) -> ChaosView:
    return ChaosView(**chaos.model_dump(), effective_status_code=status_code_now(chaos))


@app.get("/offer/hot", response_class=PlainTextResponse, summary="A hot offer, as the chaos settings say")
async def hot_offer(request: Request) -> Response:
    request.app.state.requests_received += 1
    chaos: Chaos = request.app.state.chaos
    if chaos.latency:
        await asyncio.sleep(chaos.latency)
    if chaos.mode == "hang":
        await asyncio.sleep(HANG_SECONDS)
    status = 500 if chaos.failure_rate and random.random() < chaos.failure_rate else status_code_now(chaos)
    body = f"Hot offer {datetime.now():%M:%S}"
    if chaos.mode == "drop":
        # Promise more body than is sent: uvicorn closes the connection mid-answer.
        return PlainTextResponse(body, status_code=status, headers={"content-length": str(len(body) + 100)})
    return PlainTextResponse(body, status_code=status)


@app.get("/chaos", summary="How the partner behaves now")
async def get_chaos(request: Request) -> ChaosView:
    return chaos_view(request.app.state.chaos)


@admin_routes.put("/chaos", summary="Set how the partner behaves (admin)", responses=BODY_RESPONSES)
async def put_chaos(chaos: Chaos, request: Request) -> ChaosView:
    request.app.state.chaos = chaos
    return chaos_view(chaos)


@admin_routes.delete("/chaos", summary="Back to the file's STATUS_CODE and the environment's latency (admin)")
async def delete_chaos(request: Request) -> ChaosView:
    request.app.state.chaos = DEFAULT_CHAOS
    return chaos_view(DEFAULT_CHAOS)


@app.get("/stats", summary="How many offer requests reached the partner since it started")
async def stats(request: Request) -> Stats:
    return Stats(
        requests_received=request.app.state.requests_received,
        status_code=status_code_now(request.app.state.chaos),
    )


@app.get("/health", summary="Liveness")
async def health() -> dict[str, str]:
    return {"status": "ok"}


app.include_router(admin_routes)


if __name__ == "__main__":
    here = str(Path(__file__).resolve().parent)
    uvicorn.run(
        "partner_offer_service:app",
        host=settings.host,
        port=settings.port,
        reload=True,
        app_dir=here,
        reload_dirs=[here],
        # A hung request (chaos mode "hang") must not hold Ctrl-C or a reload hostage.
        timeout_graceful_shutdown=2,
        log_config=settings_module.log_config(settings.log_level),
        **http_limits.uvicorn_options(),
    )

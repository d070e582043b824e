"""The partner: sells hot offers, and is the dependency that gets sick.

To break it, change STATUS_CODE below to 500 and save: uvicorn reloads, and
the offer service's circuit breaker starts counting failures. Set it back to
200 to heal it.

Run it with `python partner_offer_service.py` (uvicorn, reload, 127.0.0.1:8000).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

import settings as settings_module
from settings import PartnerSettings

STATUS_CODE = 200

settings = settings_module.load(PartnerSettings)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings_module.configure_logging(settings.log_level)
    app.state.requests_received = 0
    yield


app = FastAPI(title="Partner offer service", description="Sells hot offers.", lifespan=lifespan)


@app.get("/offer/hot", response_class=PlainTextResponse, summary="A hot offer, with STATUS_CODE")
async def hot_offer(request: Request) -> PlainTextResponse:
    request.app.state.requests_received += 1
    if settings.partner_latency:
        await asyncio.sleep(settings.partner_latency)
    return PlainTextResponse(f"Hot offer {datetime.now():%M:%S}", status_code=STATUS_CODE)


@app.get("/stats", summary="How many offer requests reached the partner since it started")
async def stats(request: Request) -> dict[str, int]:
    return {"requests_received": request.app.state.requests_received, "status_code": STATUS_CODE}


@app.get("/health", summary="Liveness")
async def health() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    here = str(Path(__file__).resolve().parent)
    uvicorn.run(
        "partner_offer_service:app",
        host=settings.host,
        port=settings.port,
        reload=True,
        app_dir=here,
        reload_dirs=[here],
        log_config=settings_module.log_config(settings.log_level),
    )

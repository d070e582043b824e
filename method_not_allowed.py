"""A right `Allow` header on 405 answers.

Starlette answers a method a path does not support with the methods of the
first route on that path only; with one route per method (GET, PUT and
DELETE /chaos) that header would list GET alone. This handler lists every
method the path supports, as HTTP asks.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route


async def _handle(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code != 405:
        return await http_exception_handler(request, exc)
    allowed: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] != Match.NONE:
            allowed |= route.methods
    return JSONResponse({"detail": "Method Not Allowed"}, 405, headers={"Allow": ", ".join(sorted(allowed))})


def install(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _handle)

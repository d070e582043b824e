"""A right `Allow` header on 405 answers.

Starlette answers a method a path does not support with the methods of the
first route on that path only; with one route per method (GET, PUT and
DELETE /chaos) that header would list GET alone. This handler lists every
method the path supports, as HTTP asks.

It asks every route whether it would take the request with each method,
rather than reading `route.methods`: routes of an included router sit inside
a router object of FastAPI's own (a version that looked for `Route` objects
in `app.routes` found none of the dashboard's and sent an empty `Allow`).
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import Scope

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(routes: Iterable[BaseRoute], scope: Scope) -> list[str]:
    """The methods some route takes at the request's path, in `METHODS` order."""
    routes = list(routes)
    return [
        method for method in METHODS if any(_takes(route, {**scope, "method": method}) for route in routes)
    ]


def _takes(route: BaseRoute, scope: Scope) -> bool:
    match, _ = route.matches(scope)
    if match != Match.FULL:
        return False
    if isinstance(route, Mount) and isinstance(route.app, StaticFiles):
        return scope["method"] in ("GET", "HEAD")  # a Mount matches any method; StaticFiles does not
    return True


async def _handle(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code != 405:
        return await http_exception_handler(request, exc)
    # From the top: inside a Mount, the scope's root_path has grown by the mount's path.
    scope = {
        **request.scope,
        "root_path": request.scope.get("app_root_path", request.scope.get("root_path", "")),
    }
    allowed = allowed_methods(request.app.routes, scope)
    return JSONResponse({"detail": "Method Not Allowed"}, 405, headers={"Allow": ", ".join(allowed)})


def install(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _handle)

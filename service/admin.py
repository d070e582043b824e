"""Who may change things: forcing the circuit, setting the partner's chaos.

With `ADMIN_TOKEN` set, an admin request needs `Authorization: Bearer <token>`
(compared in constant time, never logged). Without it, admin requests are
accepted only when every fact about the request says "this machine":

- the server listens on loopback addresses only (its listening sockets, as
  the operating system reports them: `HOST` says what someone meant, and
  `uvicorn --host 0.0.0.0` does not change it);
- the connection arrived on a loopback address, from a loopback client;
- the `Host` is a loopback name (against DNS rebinding);
- an `Origin`, when present, is this very origin (a page of another site, a
  sandboxed frame or a file sends another one, or `null`), and
  `Sec-Fetch-Site` does not say cross-site.

A demo on a laptop needs no token; nothing on another host, nor a web page
in the laptop's browser, can change state unauthenticated.

The check runs before the body is read (`AdminRoute`): an unauthenticated
request is refused without its body costing anything.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from collections.abc import Callable, Coroutine
from typing import Any

import psutil
from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
# For the OpenAPI document of every guarded route.
ADMIN_RESPONSES: dict[int | str, dict[str, str]] = {
    401: {"description": "ADMIN_TOKEN is set and the request does not carry it"},
    403: {
        "description": "no ADMIN_TOKEN: refused when listening beyond loopback, or from another host or site"
    },
}
BODY_RESPONSES: dict[int | str, dict[str, str]] = {
    400: {"description": "the body is not valid JSON"},
    413: {"description": "the body is larger than the service accepts"},
}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _listening_addresses(port: int) -> set[str]:
    """The addresses this process accepts connections on at `port`: facts, not settings."""
    return {
        c.laddr.ip
        for c in psutil.Process().net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


class AdminGuard:
    """Refuses an admin request that lacks the token or, with no token set, is not this machine's own."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None
        self._loopback_only: dict[int, bool] = {}  # by local port: a bind does not change

    async def __call__(self, request: Request) -> None:
        if self._token is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), self._token):
                raise HTTPException(
                    401,
                    "admin action: send Authorization: Bearer <ADMIN_TOKEN>",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            return
        if not await self._listens_on_loopback_only(request):
            raise HTTPException(
                403, "admin actions are off: set ADMIN_TOKEN to allow them while listening beyond loopback"
            )
        client = request.client.host if request.client else ""
        host = request.headers.get("host") or ""
        origin = request.headers.get("origin")
        cross_site = request.headers.get("sec-fetch-site") in ("cross-site", "same-site")
        foreign_origin = origin is not None and origin != f"{request.url.scheme}://{host}"
        if not is_loopback(client) or not is_loopback(host.rsplit(":", 1)[0]) or cross_site or foreign_origin:
            raise HTTPException(403, "admin actions without ADMIN_TOKEN are for this machine's own requests")

    async def _listens_on_loopback_only(self, request: Request) -> bool:
        server = request.scope.get("server")
        if not server or server[1] is None or not is_loopback(str(server[0])):
            return False  # arrived on a public address, or a Unix socket: no way to tell who is local
        port = int(server[1])
        if port not in self._loopback_only:
            addresses = await asyncio.to_thread(_listening_addresses, port)
            # None found (a socket handed over by a supervisor, say): not known to be loopback.
            self._loopback_only[port] = bool(addresses) and all(map(is_loopback, addresses))
        return self._loopback_only[port]


class AdminRoute(APIRoute):
    """An `APIRoute` that runs the app's `AdminGuard` (`app.state.admin_guard`) before
    FastAPI reads and parses the body: `APIRouter(route_class=AdminRoute)` for admin routes."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            guard: AdminGuard = request.app.state.admin_guard
            await guard(request)
            return await handler(request)

        return guarded

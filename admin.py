"""Who may change things: forcing the circuit, setting the partner's chaos.

With `ADMIN_TOKEN` set, an admin request needs `Authorization: Bearer <token>`
(compared in constant time, never logged). Without it, admin requests are
accepted only while the service listens on a loopback address, from a
loopback client, addressed to a loopback host name, and not sent by a page
of another site: a demo on a laptop needs no token, and nothing on another
host (nor a web page in the laptop's browser, by DNS rebinding or a
cross-site request) can change state unauthenticated.
"""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import HTTPException, Request

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
# For the OpenAPI document of every guarded route.
ADMIN_RESPONSES: dict[int | str, dict[str, str]] = {
    401: {"description": "ADMIN_TOKEN is set and the request does not carry it"},
    403: {"description": "no ADMIN_TOKEN: refused on a non-loopback bind, or from another host or site"},
}
BODY_RESPONSES: dict[int | str, dict[str, str]] = {400: {"description": "the body is not valid JSON"}}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class AdminGuard:
    """A FastAPI dependency: `Depends(AdminGuard(token, host))` on every state-changing route."""

    def __init__(self, token: str | None, listen_host: str) -> None:
        self._token = token.encode() if token else None
        self._listen_host = listen_host

    async def __call__(self, request: Request) -> None:  # async: FastAPI would run a def in a thread
        if self._token is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), self._token):
                raise HTTPException(
                    401,
                    "admin action: send Authorization: Bearer <ADMIN_TOKEN>",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            return
        if not is_loopback(self._listen_host):
            raise HTTPException(
                403,
                f"admin actions are off: set ADMIN_TOKEN to allow them while listening on {self._listen_host}",
            )
        client = request.client.host if request.client else ""
        host = (request.headers.get("host") or "").rsplit(":", 1)[0]
        cross_site = request.headers.get("sec-fetch-site") in ("cross-site", "same-site")
        if not is_loopback(client) or not is_loopback(host) or cross_site:
            raise HTTPException(403, "admin actions without ADMIN_TOKEN are for this machine's own requests")

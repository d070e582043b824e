"""The request-body cap, paid for only by requests that carry a body.

FastAPI's `max_body_size` wraps every request in Starlette's
`RequestBodyLimitMiddleware`, which wraps `receive` and `send` and parses
the headers for `Content-Length`: about 9% of the offer service's CPU on a
`GET /offer` with the circuit open (py-spy, self time), for a request that
has no body to limit. In HTTP/1.1 a request has a body only when it says so,
with `Content-Length` or `Transfer-Encoding` (RFC 9112, section 6.3; uvicorn
reads none otherwise), so a request with neither goes straight to the app,
and any other gets the same middleware and the same 413 as before.
"""

from __future__ import annotations

from collections.abc import Awaitable

from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

# The two headers that announce a request body, as uvicorn hands them over: lower case.
BODY_HEADERS = (b"content-length", b"transfer-encoding")


class DeclaredBodyLimit:
    """ASGI middleware: `max_body_size` for the requests that declare a body; the rest
    skip it."""

    def __init__(self, app: ASGIApp, max_body_size: int) -> None:
        self.app = app
        self.limited = RequestBodyLimitMiddleware(app, max_body_size=max_body_size)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain method handing back the awaitable of the app it chose: no coroutine of
        # its own wrapped around every request.
        if scope["type"] == "http" and declares_body(scope):
            return self.limited(scope, receive, send)
        return self.app(scope, receive, send)


def declares_body(scope: Scope) -> bool:
    """Whether the request's head announces a body (even an empty one: the cap is cheap then)."""
    for name, _ in scope["headers"]:  # noqa: SIM110 - a plain loop: any() builds a generator per request
        if name in BODY_HEADERS:
            return True
    return False

"""A route for an endpoint that reads nothing from the request and answers a `Response`.

FastAPI runs the same machinery for every request of every route: read the
parameters and the body, solve the dependencies, record telemetry, then
serialize and validate what the endpoint returned against its response
model. `GET /offer` uses none of it (no parameter, no dependency, a
`Response` already built), yet that machinery was a third of the
instructions of an open circuit's request (`tools/bench/asgi_count.py`:
320,000 with it, 216,000 without), the path a whole outage takes.

`PlainRoute` is FastAPI's own extension point for this, a custom route
class: the route is declared, matched and documented in OpenAPI as any
other, and only its handler is replaced by one that awaits the endpoint.
Starlette's request handling around the handler stays (exception handlers,
the body limit). A route given parameters or dependencies would silently
never receive them, so the class refuses one at start-up.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class PlainRoute(APIRoute):
    """An `APIRoute` whose handler only awaits its endpoint, for endpoints without parameters."""

    def __init__(self, path: str, endpoint: Callable[[], Awaitable[Response]], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        taken = [*inspect.signature(endpoint).parameters, *(str(d.call) for d in self.dependant.dependencies)]
        if taken:
            raise TypeError(f"{path}: PlainRoute serves endpoints without parameters; this one takes {taken}")

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            return await endpoint()  # type: ignore[no-any-return]

        return handler

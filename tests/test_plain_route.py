"""`PlainRoute`: served without FastAPI's per-request machinery, documented and routed as any
other route, and refused at start-up for an endpoint that would need that machinery."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.routing import APIRoute

from service.plain_route import PlainRoute

HEADERS = {"X-Why": {"description": "what the answer is", "schema": {"type": "string"}}}


async def answer() -> Response:
    return Response(b'"an answer"', media_type="application/json", headers={"x-why": "test"})


async def refuse() -> Response:
    raise HTTPException(status_code=418, detail="not today")


def app_with(
    endpoint: Callable[..., Any], route_class: type[APIRoute] = PlainRoute, **options: Any
) -> FastAPI:
    app = FastAPI()
    app.router.add_api_route(
        "/thing",
        endpoint,
        methods=["GET"],
        response_model=str,
        summary="A thing",
        responses={200: {"headers": HEADERS}},
        route_class_override=route_class,
        **options,
    )
    return app


@asynccontextmanager
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        yield http


async def test_a_plain_route_answers_with_the_endpoints_response_and_routes_as_fastapis_own() -> None:
    async with client(app_with(answer)) as http:
        got = await http.get("/thing")
        posted = await http.post("/thing")
    assert (got.status_code, got.json(), got.headers["x-why"]) == (200, "an answer", "test")
    assert (posted.status_code, posted.headers["allow"]) == (405, "GET")


async def test_a_plain_route_skips_fastapis_dependency_solving(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_solving(*args: object, **kwargs: object) -> None:
        raise AssertionError("FastAPI's request machinery ran for a plain route")

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", no_solving)
    async with client(app_with(answer)) as http:
        got = await http.get("/thing")
    assert got.json() == "an answer"
    # The same endpoint on FastAPI's own route goes through it: the stand-in is in its path.
    with pytest.raises(AssertionError, match="request machinery ran"):
        async with client(app_with(answer, APIRoute)) as http:
            await http.get("/thing")


async def test_an_http_exception_from_the_endpoint_reaches_the_apps_handlers() -> None:
    async with client(app_with(refuse)) as http:
        got = await http.get("/thing")
    assert (got.status_code, got.json()) == (418, {"detail": "not today"})


def test_a_plain_route_is_documented_as_fastapis_own_route_would_be() -> None:
    plain, own = app_with(answer).openapi(), app_with(answer, APIRoute).openapi()
    assert plain["paths"]["/thing"] == own["paths"]["/thing"]
    assert plain["paths"]["/thing"]["get"]["responses"]["200"]["headers"] == HEADERS


async def takes_a_query(count: int) -> Response:
    return Response(str(count))


async def takes_the_request(request: Request) -> Response:
    return Response(request.url.path)


def a_dependency() -> None:
    """A route-level dependency: a plain route would never run it."""


@pytest.mark.parametrize(
    ("endpoint", "options", "named"),
    [
        (takes_a_query, {}, "count"),
        (takes_the_request, {}, "request"),
        (answer, {"dependencies": [Depends(a_dependency)]}, "a_dependency"),
    ],
    ids=["a query parameter", "the request", "a route dependency"],
)
def test_an_endpoint_that_needs_the_request_machinery_is_refused_at_start_up(
    endpoint: Callable[..., Any], options: dict[str, Any], named: str
) -> None:
    with pytest.raises(
        TypeError, match=rf"/thing: PlainRoute serves endpoints without parameters; .*{named}"
    ):
        app_with(endpoint, **options)

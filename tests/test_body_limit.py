"""The request-body cap applies to requests that declare a body, and only to them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from service.body_limit import DeclaredBodyLimit

CAP = 100


async def echo(request: Request) -> PlainTextResponse:
    """How many body bytes it read, and whether the cap was on this request."""
    body = await request.body()
    capped = MAX_BODY_SIZE_SCOPE_KEY in request.scope
    return PlainTextResponse(f"{len(body)} {'capped' if capped else 'uncapped'}")


def client() -> httpx.AsyncClient:
    app = Starlette(routes=[Route("/echo", echo, methods=["GET", "PUT"])])
    app.add_middleware(DeclaredBodyLimit, max_body_size=CAP)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_a_request_without_a_body_skips_the_cap() -> None:
    async with client() as http:
        response = await http.get("/echo")
    assert response.text == "0 uncapped"


@pytest.mark.parametrize("size", [0, CAP])
async def test_a_request_that_declares_a_body_is_capped_and_served_under_the_cap(size: int) -> None:
    async with client() as http:
        response = await http.put("/echo", content=b"x" * size)
    assert response.text == f"{size} capped"


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    """A body sent without a length, in parts."""
    for part in parts:
        yield part


async def test_a_body_over_the_cap_is_413_whether_its_length_is_given_or_not() -> None:
    async with client() as http:
        with_length = await http.put("/echo", content=b"x" * (CAP + 1))
        chunked = await http.put("/echo", content=chunks(b"x" * CAP, b"x"))
        on_a_get = await http.request("GET", "/echo", content=b"x" * (CAP + 1))
    assert (with_length.status_code, chunked.status_code, on_a_get.status_code) == (413, 413, 413)

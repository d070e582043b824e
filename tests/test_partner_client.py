"""What counts as a partner failure, driven through an injected httpx transport and real sockets."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from circuit_breaker import PartnerRejected
from partner_client import MAX_OFFER_BYTES, PartnerClient, PartnerFailure, http_client
from settings import OfferSettings
from tests.processes import free_port


def partner_answering(
    status: int = 200, body: bytes = b"Hot offer 24:48", delay: float = 0.0, content_type: str = "text/plain"
) -> PartnerClient:
    async def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/offer/hot"
        await asyncio.sleep(delay)
        return httpx.Response(status, content=body, headers={"content-type": content_type})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://partner")
    return PartnerClient(client, timeout=0.2)


async def reason_for(partner: PartnerClient) -> str:
    with pytest.raises(PartnerFailure) as failure:
        await partner.fetch_hot_offer()
    return failure.value.reason


async def test_a_200_with_text_is_the_hot_offer() -> None:
    assert await partner_answering().fetch_hot_offer() == "Hot offer 24:48"


@pytest.mark.parametrize("status", [500, 502, 503, 429])
async def test_a_5xx_is_a_failure(status: int) -> None:
    assert await reason_for(partner_answering(status)) == f"partner-status-{status}"


@pytest.mark.parametrize("status", [400, 404, 410])
async def test_a_4xx_is_a_business_rejection_not_a_failure(status: int) -> None:
    with pytest.raises(PartnerRejected, match=f"partner-status-{status}"):
        await partner_answering(status).fetch_hot_offer()


async def test_a_redirect_is_a_failure_not_followed() -> None:
    assert await reason_for(partner_answering(302)) == "partner-status-302"


@pytest.mark.parametrize("body", [b"", b"   ", b"\xff\xfe not utf-8", b"x" * (MAX_OFFER_BYTES + 1)])
async def test_an_unreadable_body_is_a_failure(body: bytes) -> None:
    assert await reason_for(partner_answering(body=body)) == "partner-bad-body"


@pytest.mark.parametrize("content_type", ["application/json", "image/png", "application/octet-stream"])
async def test_a_body_that_is_not_text_is_a_failure(content_type: str) -> None:
    assert await reason_for(partner_answering(content_type=content_type)) == "partner-bad-body"


async def test_a_slow_partner_is_a_timeout_bounded_by_partner_timeout() -> None:
    partner = partner_answering(delay=5)
    started = asyncio.get_running_loop().time()
    assert await reason_for(partner) == "partner-timeout"
    assert asyncio.get_running_loop().time() - started < 1


async def test_a_refused_connection_is_a_connection_error() -> None:
    settings = OfferSettings(partner_offer_url=f"http://127.0.0.1:{free_port()}", partner_timeout=2)
    async with http_client(settings) as client:
        assert await reason_for(PartnerClient(client, settings.partner_timeout)) == "partner-connection-error"


async def test_a_partner_that_accepts_but_never_answers_is_a_timeout() -> None:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = OfferSettings(partner_offer_url=f"http://127.0.0.1:{port}", partner_timeout=0.3)
    async with server, http_client(settings) as client:
        assert await reason_for(PartnerClient(client, settings.partner_timeout)) == "partner-timeout"


async def test_a_partner_that_drips_its_body_is_a_timeout_for_the_whole_call() -> None:
    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):  # each byte well inside a per-read timeout, the whole far beyond
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.1)

    server = await asyncio.start_server(drip, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = OfferSettings(partner_offer_url=f"http://127.0.0.1:{port}", partner_timeout=0.5)
    async with server, http_client(settings) as client:
        started = asyncio.get_running_loop().time()
        assert await reason_for(PartnerClient(client, settings.partner_timeout)) == "partner-timeout"
        assert asyncio.get_running_loop().time() - started < 1.5


async def test_a_connection_reset_mid_body_is_a_connection_error() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nHot")
        await writer.drain()
        writer.transport.abort()

    server = await asyncio.start_server(reset, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = OfferSettings(partner_offer_url=f"http://127.0.0.1:{port}", partner_timeout=2)
    async with server, http_client(settings) as client:
        assert await reason_for(PartnerClient(client, settings.partner_timeout)) == "partner-connection-error"

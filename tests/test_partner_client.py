"""What counts as a partner failure, driven through an injected httpx transport and real sockets."""

from __future__ import annotations

import asyncio
import math
import tracemalloc
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.partner_client import (
    MAX_OFFER_BYTES,
    PartnerClient,
    PartnerDeclined,
    PartnerFailure,
    http_client,
    retry_after_seconds,
)
from service.settings import OfferSettings
from tests.partner_stand_ins import gzipped, one_gibibyte_of_zeros_gzipped
from tools.processes import free_port


class Chunked(httpx.AsyncByteStream):
    """A body in 16 KiB chunks, as the aiohttp transport hands it over."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self._body), 16 * 1024):
            yield self._body[start : start + 16 * 1024]


def partner_answering(
    status: int = 200,
    body: bytes = b"Hot offer 24:48",
    delay: float = 0.0,
    content_type: str = "text/plain",
    encoding: str | None = None,
) -> PartnerClient:
    async def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/offer/hot"
        await asyncio.sleep(delay)
        headers = {"content-type": content_type, **({"content-encoding": encoding} if encoding else {})}
        # A stream, as a real transport gives: `content=` would hand over a body already read.
        return httpx.Response(status, stream=Chunked(body), headers=headers)

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
    with pytest.raises(PartnerDeclined, match=f"partner-status-{status}"):
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


async def test_a_partner_setting_cookies_fills_no_jar() -> None:
    """A partner may set a new cookie on every answer: none is kept (memory does not grow with
    them) and none is sent back. By host name, since aiohttp keeps no cookie of an IP address."""
    heads: list[bytes] = []

    async def cookie_per_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():
            try:
                heads.append(await reader.readuntil(b"\r\n\r\n"))
            except asyncio.IncompleteReadError:
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n"
                + f"Set-Cookie: c{len(heads)}=v; Path=/\r\n\r\nHot offer".encode()
            )
            await writer.drain()

    server = await asyncio.start_server(cookie_per_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = OfferSettings(partner_offer_url=f"http://localhost:{port}", partner_timeout=2)
    async with server, http_client(settings) as client:
        partner = PartnerClient(client, settings.partner_timeout)
        for _ in range(5):
            assert await partner.fetch_hot_offer() == "Hot offer"
        assert len(heads) == 5
        assert [head for head in heads if b"\ncookie:" in head.lower()] == []
        assert len(client.cookies.jar) == 0


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", gzipped([b"Hot offer 24:48"])),
        ("deflate", zlib.compress(b"Hot offer 24:48")),
        ("identity", b"Hot offer 24:48"),
    ],
)
async def test_a_body_compressed_once_is_decoded(encoding: str, body: bytes) -> None:
    assert await partner_answering(body=body, encoding=encoding).fetch_hot_offer() == "Hot offer 24:48"


@pytest.mark.parametrize("encoding", ["gzip, gzip", "gzip, deflate", "br", "zstd", "compress"])
async def test_a_nested_or_unknown_coding_is_refused_before_decoding(encoding: str) -> None:
    body = gzipped([gzipped([b"Hot offer 24:48"])])
    assert await reason_for(partner_answering(body=body, encoding=encoding)) == "partner-bad-body"


@pytest.mark.parametrize("size", [MAX_OFFER_BYTES, MAX_OFFER_BYTES + 1])
async def test_the_limit_applies_to_the_decoded_body(size: int) -> None:
    body = gzipped([b"x" * size])
    partner = partner_answering(body=body, encoding="gzip")
    if size > MAX_OFFER_BYTES:
        assert await reason_for(partner) == "partner-bad-body"
    else:
        assert len(await partner.fetch_hot_offer()) == size


async def test_a_compression_bomb_is_never_inflated_past_the_limit() -> None:
    """1 GiB of zeros in 1 MB of gzip: decoding stops one step past 64 KiB."""
    partner = partner_answering(body=one_gibibyte_of_zeros_gzipped(), encoding="gzip")
    tracemalloc.start()
    try:
        assert await reason_for(partner) == "partner-bad-body"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_OFFER_BYTES


HEADER_BYTES = st.binary(max_size=80).filter(lambda raw: not set(raw) & set(b"\r\n\0"))


@given(raw=HEADER_BYTES)
def test_retry_after_reads_ascii_digits_or_a_date_and_nothing_else(raw: bytes) -> None:
    for value in (raw.decode("latin-1"), raw.decode("utf-8", "replace")):
        seconds = retry_after_seconds(value)
        assert seconds is None or (math.isfinite(seconds) and seconds >= 0)
        if value.strip(" \t").isascii() and value.strip(" \t").isdigit() and len(value) <= 64:
            assert seconds == int(value.strip(" \t"))


@pytest.mark.parametrize(
    "value", ["²", "³", "¹", "١٢", "\uff15", "1e-3", "-5", "5.5", "Infinity", "0x10", "1_0"]
)
def test_retry_after_is_not_a_number_of_any_other_script_or_syntax(value: str) -> None:
    assert retry_after_seconds(value) is None


@pytest.mark.parametrize(
    "value",
    ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"],
)
def test_retry_after_takes_the_three_http_date_forms(value: str) -> None:
    assert retry_after_seconds(value) == 0.0  # in the past: come back now


@settings(deadline=None, max_examples=200)
@given(raw=HEADER_BYTES, status=st.sampled_from([429, 503]))
async def test_any_retry_after_bytes_make_a_partner_failure_and_nothing_else(raw: bytes, status: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, stream=Chunked(b"busy"), headers=[(b"retry-after", raw)])

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://partner") as client:
        failure = await reason_and_retry_after(PartnerClient(client, timeout=1))
    reason, retry_after = failure
    assert reason == f"partner-status-{status}"
    assert retry_after is None or (math.isfinite(retry_after) and retry_after >= 0)


async def reason_and_retry_after(partner: PartnerClient) -> tuple[str, float | None]:
    with pytest.raises(PartnerFailure) as failure:
        await partner.fetch_hot_offer()
    return failure.value.reason, failure.value.retry_after

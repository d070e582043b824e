"""The offer service's HTTP client for the partner, and what counts as a failure.

A failure is anything that says the partner is sick: a 5xx, a 429, a
timeout, a refused or dropped connection, a body we cannot read (empty, not
UTF-8, not text, too large). Another 4xx is a business "no" from a healthy
partner: `PartnerRejected`, which the breaker excludes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

import metrics
from circuit_breaker import PartnerRejected
from settings import OfferSettings

log = logging.getLogger("partner_client")

HOT_OFFER_PATH = "/offer/hot"
# An offer is a short line of text; anything far larger is a broken partner,
# and reading it all would let the partner decide how much memory we use.
MAX_OFFER_BYTES = 64 * 1024
# Enough keep-alive connections for the load we measured (50 concurrent
# requests) so that no request waits for, or pays to open, a connection.
MAX_CONNECTIONS = 200


HttpClientFactory = Callable[[OfferSettings], AbstractAsyncContextManager[httpx.AsyncClient]]


class PartnerFailure(Exception):
    """The partner looks sick; `reason` names how (`partner-timeout`, ...)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@asynccontextmanager
async def http_client(settings: OfferSettings) -> AsyncIterator[httpx.AsyncClient]:
    """One `httpx.AsyncClient` for the app's life, on aiohttp's connection pool.

    httpx's own pool is the bottleneck under concurrency: behind 50 concurrent
    requests a shared default `AsyncClient` did a few hundred requests per
    second where the `httpx-aiohttp` transport did thousands (see `bench/`).
    The transport keeps httpx's API, its logging and its exceptions.
    """
    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS)
    transport = AiohttpTransport(limits=limits, trust_env=False)
    timeout = httpx.Timeout(settings.partner_timeout)
    async with httpx.AsyncClient(
        transport=transport, base_url=settings.partner_offer_url, timeout=timeout, trust_env=False
    ) as client:
        yield client


class PartnerClient:
    """Fetches a hot offer, turning every way the partner can be sick into `PartnerFailure`."""

    def __init__(self, client: httpx.AsyncClient, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        # Building an httpx.Request parses and merges URL and headers: about a
        # third of the client's CPU per call, measured. This request never
        # changes and httpx does not modify a request it sends, so it is built once.
        self._request = client.build_request("GET", HOT_OFFER_PATH)

    async def fetch_hot_offer(self) -> str:
        # httpx's timeouts apply to each connect, read or write; a partner that
        # drips its body one byte at a time never trips them. This one bounds
        # the whole call.
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._client.send(self._request, stream=True)
                try:
                    body = await _read_capped(response)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise PartnerFailure("partner-timeout", f"no answer within {self._timeout}s") from None
        except httpx.TransportError as exc:
            raise PartnerFailure(_transport_reason(exc), repr(exc.__cause__ or exc)) from exc
        except PartnerFailure:
            raise
        except Exception as exc:
            # Whatever else the partner's bytes make the HTTP stack raise (aiohttp's
            # "bad status line" for a 1xx, say, which the transport does not map)
            # is a broken answer: a failure and a fallback, never a 500.
            log.warning("partner answer could not be read: %r", exc)
            raise PartnerFailure("partner-protocol-error", repr(exc)) from exc
        finally:
            metrics.PARTNER_LATENCY.observe(time.perf_counter() - started)

        status = response.status_code
        # 429 is a partner asking for relief, which is what an open circuit gives it.
        if 400 <= status < 500 and status != 429:
            raise PartnerRejected(f"partner-status-{status}")
        if status != 200:
            raise PartnerFailure(f"partner-status-{status}")
        content_type = response.headers.get("content-type", "text/plain")
        if not content_type.startswith("text/"):
            raise PartnerFailure("partner-bad-body", f"content type {content_type}, not text")
        try:
            offer = body.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise PartnerFailure("partner-bad-body", "not UTF-8") from None
        if not offer:
            raise PartnerFailure("partner-bad-body", "empty")
        return offer


async def _read_capped(response: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_OFFER_BYTES:
            raise PartnerFailure("partner-bad-body", f"larger than {MAX_OFFER_BYTES} bytes")
    return bytes(body)


def _transport_reason(exc: httpx.TransportError) -> str:
    """Tell a slow partner from a refused or dropped connection.

    The aiohttp transport maps every aiohttp connection error to
    `httpx.ConnectTimeout`, so the original error, kept as `__cause__`, decides.
    """
    cause = exc.__cause__
    if isinstance(cause, TimeoutError):
        return "partner-timeout"
    if isinstance(exc, httpx.TimeoutException) and not isinstance(
        cause, (OSError, aiohttp.ClientConnectionError)
    ):
        return "partner-timeout"
    return "partner-connection-error"

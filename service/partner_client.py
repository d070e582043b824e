"""The offer service's HTTP client for the partner, and what counts as a failure.

What a partner call can raise, at a glance:

    PartnerFailure        the partner looks sick: a failure for the breaker
    PartnerDeclined       a 4xx, a business "no" from a healthy partner:
                          ignored by the breaker (pybreaker's `exclude`)
    LocalResourceError    this process could not make the call (no file
                          descriptor, no free connection): says nothing
                          about the partner, so its permit is released

A failure is anything that says the partner is sick: a 5xx, a 429, a
timeout, a refused or dropped connection, a body we cannot read (empty, not
UTF-8, not text, too large, compressed other than once with gzip or deflate).

Every byte and second of a partner answer is bounded here, for `/offer` and
for the dashboard's chaos relay alike (`PartnerClient.exchange`): the whole
call within `PARTNER_TIMEOUT`, and the body read to a limit counted on the
wire and again as it is decompressed, one bounded step at a time.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import logging
import re
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from service import metrics
from service.settings import OfferSettings

log = logging.getLogger("partner_client")
# httpx's own logger, where `HTTPX_LOG_LEVEL` applies: each partner call's line goes there.
HTTPX_LOG = logging.getLogger("httpx")

HOT_OFFER_PATH = "/offer/hot"
# An offer is a short line of text; anything far larger is a broken partner,
# and reading it all would let the partner decide how much memory we use.
MAX_OFFER_BYTES = 64 * 1024
# Enough keep-alive connections for the load we measured (50 concurrent
# requests) so that no request waits for, or pays to open, a connection.
MAX_CONNECTIONS = 200
# How long an idle keep-alive connection to the partner is kept: httpx's default.
KEEPALIVE_SECONDS = 5.0
# The content codings we ask for and decode; zlib's window bits for each.
# httpx would also ask for br and zstd when their packages are installed.
DECODERS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}
ACCEPT_ENCODING = "gzip, deflate"
# errno values that mean this process, or this machine, is out of something:
# descriptors (EMFILE, ENFILE), buffers or memory, local ports (EADDRNOTAVAIL).
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL})
# Local trouble comes in bursts of thousands of requests: one line when it
# starts, then one line with the count at most this often.
LOCAL_TROUBLE_LOG_INTERVAL = 10.0


HttpClientFactory = Callable[[OfferSettings], AbstractAsyncContextManager[httpx.AsyncClient]]


class PartnerFailure(Exception):
    """The partner looks sick; `reason` names how (`partner-timeout`, ...). `retry_after`:
    the seconds a 429 or 503 asked for in `Retry-After`; the breaker stays open that long."""

    def __init__(self, reason: str, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.retry_after = retry_after


# RFC 9110's delay-seconds: ASCII digits only. `str.isdigit()` also takes "²" or
# "١٢" (which `float()` then refuses or reads), so the grammar is spelled out.
DELAY_SECONDS = re.compile(r"[0-9]+")
# The obsolete asctime form of an HTTP-date, "Sun Nov  6 08:49:37 1994", the only one without "GMT".
ASCTIME_DATE = re.compile(r"[A-Z][a-z]{2} [A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} [0-9]{4}")


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds from now, by RFC 9110's grammar: `delay-seconds` (ASCII
    digits) or an `HTTP-date`; None for anything else, which a hostile or broken partner
    may send. Never raises: a header is the partner's input, not ours."""
    if not value or len(value) > 64:
        return None
    value = value.strip(" \t")
    if DELAY_SECONDS.fullmatch(value):
        return float(value)
    if not value.isascii():
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            if not ASCTIME_DATE.fullmatch(value):
                return None  # a date with no zone is an HTTP date only in asctime's form
            when = when.replace(tzinfo=UTC)  # which is GMT, as every HTTP date
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class PartnerDeclined(Exception):
    """The partner answered 4xx: a business "no", not a sick partner.

    Listed in pybreaker's `exclude`, so the breaker ignores it. pybreaker
    counts an excluded error as a success: the partner is up and answering.
    """


class LocalResourceError(Exception):
    """This process could not call the partner: out of file descriptors, buffers or
    free connections. Not the partner's fault, so not a failure of the partner.

    Measured before this existed: an offer service at its open-files limit
    could not connect to a healthy partner, counted three
    `partner-connection-error`s and opened the circuit, with nothing logged.
    """

    reason = "local-resource-exhausted"

    def __init__(self, detail: str) -> None:
        super().__init__(f"{self.reason}: {detail}")


@asynccontextmanager
async def http_client(settings: OfferSettings) -> AsyncIterator[httpx.AsyncClient]:
    """One `httpx.AsyncClient` for the app's life, on aiohttp's connection pool.

    httpx's own pool is the bottleneck under concurrency: behind 50 concurrent
    requests a shared default `AsyncClient` did a few hundred requests per
    second where the `httpx-aiohttp` transport did thousands (see `tools/bench/`).
    The transport keeps httpx's requests, answers and exceptions. It asks
    aiohttp for the body as sent (`auto_decompress=False`); decoding it is
    `read_body`'s job, never httpx's, which would inflate a chunk whole.

    The aiohttp session is this module's, for its cookie jar: aiohttp's own
    keeps every cookie a partner sets (a new one on every answer grows it
    without end) and sends them all back. Its TLS trust is aiohttp's default,
    the system's certificate authorities. httpx's per-phase timeouts are
    not set: aiohttp turns them into a timer set and cancelled on every read,
    when `PartnerClient.exchange` bounds the whole call within
    `PARTNER_TIMEOUT` anyway (measured on a healthy `/offer`, callgrind).
    """

    def aiohttp_session() -> aiohttp.ClientSession:  # made in the event loop, at the first call
        connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_SECONDS)
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    transport = AiohttpTransport(client=aiohttp_session, trust_env=False)
    async with httpx.AsyncClient(
        transport=transport,
        base_url=settings.partner_offer_url,
        timeout=None,
        trust_env=False,
        headers={"Accept-Encoding": ACCEPT_ENCODING},
    ) as client:
        yield client


class PartnerClient:
    """Calls the partner, turning every way it can be sick into `PartnerFailure`."""

    def __init__(
        self, client: httpx.AsyncClient, timeout: float, max_connections: int = MAX_CONNECTIONS
    ) -> None:
        self.client = client
        self._timeout = timeout
        # Building an httpx.Request parses and merges URL and headers: about a
        # third of the client's CPU per call, measured. This request never
        # changes and httpx does not modify a request it sends, so it is built once.
        self._request = client.build_request("GET", HOT_OFFER_PATH)
        # Requests go straight to the client's transport, past `AsyncClient.send`: its
        # layers (auth, redirects, cookies, event hooks, a stream wrapper) do nothing for
        # these requests, and cost a fifth of a healthy `/offer`'s instructions (callgrind).
        # What they did that is wanted, httpx's `HTTP Request:` log line, is `_log_request`.
        self._transport: httpx.AsyncBaseTransport = client._transport
        # A bulkhead: past this many calls in flight (a partner that got slow
        # holds them all), the next call fails at once instead of queueing for a
        # connection; `LocalResourceError`, since the pool is this process's.
        self._max_connections = max_connections
        self._in_flight = 0
        self._local_trouble = OncePerBurst(log, "cannot call the partner, this process is out of resources")

    async def fetch_hot_offer(self) -> str:
        response, body = await self.exchange(self._request, MAX_OFFER_BYTES, timed=True)
        status = response.status_code
        # 429 is a partner asking for relief, which is what an open circuit gives it.
        if 400 <= status < 500 and status != 429:
            raise PartnerDeclined(f"partner-status-{status}")
        if status in (429, 503):
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
            raise PartnerFailure(f"partner-status-{status}", retry_after=retry_after)
        if status != 200:
            raise PartnerFailure(f"partner-status-{status}")
        content_type = header(response, b"content-type") or "text/plain"
        if not content_type.startswith("text/"):
            raise PartnerFailure("partner-bad-body", f"content type {content_type[:40]!r}, not text")
        try:
            offer = body.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise PartnerFailure("partner-bad-body", "not UTF-8") from None
        if not offer:
            raise PartnerFailure("partner-bad-body", "empty")
        return offer

    async def exchange(
        self, request: httpx.Request, limit: int, timed: bool = False
    ) -> tuple[httpx.Response, bytes]:
        """Send `request`, read the answer's body decoded to `limit` bytes at most, and close it.

        All of it within the timeout: httpx's timeouts apply to each connect,
        read or write, and a partner that drips its body one byte at a time
        never trips them. Raises `PartnerFailure` or `LocalResourceError`.
        `timed`: an offer call, whose time goes into the partner latency histogram.
        """
        if self._in_flight >= self._max_connections:
            raise self._local(f"all {self._max_connections} connections to the partner in use")
        self._in_flight += 1
        started = time.perf_counter()
        reached = True
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._transport.handle_async_request(request)
                if HTTPX_LOG.isEnabledFor(logging.INFO):
                    _log_request(request, response)
                try:
                    body = await read_body(response, limit)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise PartnerFailure("partner-timeout", f"no answer within {self._timeout}s") from None
        except PartnerFailure:
            raise
        except Exception as exc:
            if (cause := _local_cause(exc)) is not None:
                reached = False
                raise self._local(str(cause)) from exc
            if isinstance(exc, httpx.TransportError):
                raise PartnerFailure(_transport_reason(exc), repr(exc.__cause__ or exc)) from exc
            # Whatever else the partner's bytes make the HTTP stack raise (aiohttp's
            # "bad status line" for a 1xx, say, which the transport does not map)
            # is a broken answer: a failure and a fallback, never a 500.
            log.warning("partner answer could not be read: %r", exc)
            raise PartnerFailure("partner-protocol-error", repr(exc)) from exc
        finally:
            self._in_flight -= 1
            if reached and timed:
                metrics.PARTNER_LATENCY.observe(time.perf_counter() - started)
        return response, body

    def _local(self, detail: str) -> LocalResourceError:
        self._local_trouble.occurred(detail)
        return LocalResourceError(detail)


def _log_request(request: httpx.Request, response: httpx.Response) -> None:
    """The line `AsyncClient.send` logs for each request, word for word."""
    HTTPX_LOG.info(
        'HTTP Request: %s %s "%s %d %s"',
        request.method,
        request.url,
        response.http_version,
        response.status_code,
        response.reason_phrase,
    )


async def read_body(response: httpx.Response, limit: int) -> bytes:
    """The body of a streamed `response`, decoded, or `PartnerFailure("partner-bad-body")`.

    httpx's own decoding (`aiter_bytes`) inflates each chunk whole and a
    nested coding ("gzip, gzip") in one call: a 2 KB answer with 1 GiB of
    zeros inside took the offer service's memory up by 2 GiB and blocked its
    event loop for 5 s. Here the raw bytes are counted against `limit`, and
    each decompression step may produce at most the room left under
    `limit`, so memory and time per step stay bounded whatever the ratio.
    One content coding at most, gzip or deflate: anything else is refused
    before a byte is decoded.
    """
    decompressor = _decompressor(header(response, b"content-encoding") or "")
    body = bytearray()
    received = 0
    async for chunk in response.aiter_raw():
        received += len(chunk)
        if received > limit:
            raise PartnerFailure("partner-bad-body", f"larger than {limit} bytes")
        if decompressor is None:
            body += chunk
        else:
            _inflate(decompressor, chunk, body, limit)
        if len(body) > limit:
            raise PartnerFailure("partner-bad-body", f"larger than {limit} bytes decoded")
    if decompressor is not None and not decompressor.eof:
        raise PartnerFailure("partner-bad-body", "compressed body cut short")
    return bytes(body)


def header(response: httpx.Response, name: bytes) -> str | None:
    """The header `name` (in lower case) of `response`, its lines joined with ", " as
    `response.headers.get` joins them; None when absent.

    Read from the raw headers: the first `headers.get` of an answer has httpx
    decode every header twice to choose their encoding: the two reads cost
    about 28,000 instructions that way on an answer's headers alone, and
    reading them here saves about 10,000 a healthy `/offer` (callgrind).
    Decoded as ISO-8859-1, which every byte is; the values compared here are ASCII.
    """
    values = [value for key, value in response.headers.raw if key.lower() == name]
    return b", ".join(values).decode("latin-1") if values else None


def _decompressor(content_encoding: str) -> zlib._Decompress | None:
    codings = [
        c for c in (c.strip().lower() for c in content_encoding.split(",")) if c not in ("", "identity")
    ]
    if not codings:
        return None
    if len(codings) > 1:
        raise PartnerFailure("partner-bad-body", f"nested content codings {content_encoding[:40]!r}")
    wbits = DECODERS.get(codings[0])
    if wbits is None:
        raise PartnerFailure("partner-bad-body", f"content coding {codings[0][:40]!r} not accepted")
    return zlib.decompressobj(wbits)


def _inflate(decompressor: zlib._Decompress, data: bytes, body: bytearray, limit: int) -> None:
    """Decompress `data` into `body`, never more than one byte past `limit` in one step."""
    try:
        while data:
            if decompressor.eof:
                raise PartnerFailure("partner-bad-body", "data after the end of the compressed body")
            # At least 1 (the body is at most `limit` here): a max_length of 0 means no limit.
            body += decompressor.decompress(data, limit + 1 - len(body))
            if len(body) > limit:
                return
            data = decompressor.unconsumed_tail or decompressor.unused_data
    except zlib.error as exc:
        raise PartnerFailure("partner-bad-body", f"cannot decompress: {exc}") from None


def _local_cause(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` that says this process is out of a resource, if any.

    aiohttp wraps the OSError of a failed `socket()` or `connect()` in its own
    error, which the transport wraps again in an httpx one: the chain says.
    """
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in LOCAL_ERRNOS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


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


class OncePerBurst:
    """Logs the first of a burst of like events at once, then how many more, at most every `interval` s.

    Python's logging has no rate limit; one line per request would be
    thousands of lines a second in exactly the moment someone reads the log.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        interval: float = LOCAL_TROUBLE_LOG_INTERVAL,
        note: str = "not counted against the partner",
    ) -> None:
        self._log = logger
        self._what = what
        self._note = note
        self._interval = interval
        self._more = 0
        self._summary: asyncio.TimerHandle | None = None

    def occurred(self, detail: str, error: BaseException | None = None) -> None:
        """Count one event; `error`, if given, has its traceback in the burst's first line."""
        if self._summary is not None:
            self._more += 1
            return
        self._log.warning("%s: %s (%s)", self._what, detail, self._note, exc_info=error)
        self._summary = asyncio.get_running_loop().call_later(self._interval, self._summarise)

    def _summarise(self) -> None:
        if not self._more:
            self._summary = None  # the burst is over: the next one starts with its own first line
            return
        self._log.warning("%s: %d more times in the last %gs", self._what, self._more, self._interval)
        self._more = 0
        self._summary = asyncio.get_running_loop().call_later(self._interval, self._summarise)

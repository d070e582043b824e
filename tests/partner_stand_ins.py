"""Stand-ins for the partner: coroutines for the breaker's unit tests, and a raw TCP
server that answers however a test chooses, for the tests against real processes."""

from __future__ import annotations

import asyncio
import functools
import struct
import threading
import zlib
from collections.abc import Awaitable, Callable, Iterable

from service.partner_client import PartnerDeclined
from tools.processes import free_port


class PartnerDown(Exception):
    pass


async def ok() -> str:
    return "hot"


async def fail() -> str:
    raise PartnerDown("500")


async def reject() -> str:
    raise PartnerDeclined("404")


class Busy(Exception):
    """A 503 with a Retry-After of `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("503")
        self.retry_after = retry_after


async def busy(seconds: float) -> str:
    raise Busy(seconds)


def hanging(inside: asyncio.Event) -> Callable[[], Awaitable[str]]:
    """A partner call that says it is inside, then hangs (until it is cut short)."""

    async def call() -> str:
        inside.set()
        await asyncio.sleep(30)
        return "hot"

    return call


Behaviour = Callable[[asyncio.StreamWriter], Awaitable[None]]


def head(status: str, content_type: str = "text/plain", length: int | None = None, extra: str = "") -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else ""
    return f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{size}{extra}Connection: close\r\n\r\n".encode()


def answering(
    body: bytes, status: str = "200 OK", content_type: str = "text/plain", encoding: str | None = None
) -> Behaviour:
    """A behaviour that sends `body` whole, with a Content-Length and, if given, a Content-Encoding."""
    extra = f"Content-Encoding: {encoding}\r\n" if encoding else ""

    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(head(status, content_type, len(body), extra) + body)

    return answer


def gzipped(chunks: Iterable[bytes]) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    return b"".join(compressor.compress(chunk) for chunk in chunks) + compressor.flush()


GIBIBYTE = 1 << 30


@functools.cache
def one_gibibyte_of_zeros_gzipped() -> bytes:
    """1 GiB of zeros, gzipped once: about 1 MB.

    Built from one MiB's deflate output repeated, not by compressing the whole GiB:
    that took 2.6 s of CPU in every test process that sent it, and on a loaded
    machine a module's setup ran out its 60 s. After a sync flush the compressor's
    output for another MiB of zeros is the same bytes each time (the window holds
    only zeros), so 1,022 copies of it stand for the MiBs between the first and the last; the gzip trailer's CRC
    and length are those of the whole GiB, so a decoder checks it as any other."""
    mebibyte = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)  # raw deflate, no header
    first = compressor.compress(mebibyte) + compressor.flush(zlib.Z_SYNC_FLUSH)
    steady = compressor.compress(mebibyte) + compressor.flush(zlib.Z_SYNC_FLUSH)
    last = compressor.compress(mebibyte) + compressor.flush()
    count = GIBIBYTE >> 20
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(mebibyte, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # gzip, deflate, no name, no time
    trailer = struct.pack("<II", crc, GIBIBYTE & 0xFFFFFFFF)
    return header + first + steady * (count - 2) + last + trailer


@functools.cache
def gzip_bomb() -> bytes:
    """1 GiB of zeros gzipped twice: about 2 KB, sent with `Content-Encoding: gzip, gzip`."""
    return gzipped([one_gibibyte_of_zeros_gzipped()])


class HostilePartner:
    """An HTTP server, in a thread of the test process, whose answer a test chooses.

    It reads a request's head and runs `behaviour` with the connection's writer;
    the behaviour may send anything at all, HTTP or not, slowly or never.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.behaviour: Behaviour = answering(b"Hot offer 00:00")
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await self.behaviour(writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> HostilePartner:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

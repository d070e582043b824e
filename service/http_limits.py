"""What one client may make a service hold: request bytes, and time on an idle connection.

Neither uvicorn nor Starlette bounds all of it by default, and each gap was
measured on these services:

- **Body.** Starlette reads a body of any size: a 256 MiB unauthenticated
  `PUT /partner/chaos` took the offer service to 1.1 GB. Both apps pass
  `MAX_BODY_BYTES` to FastAPI's own `max_body_size` (413 from the
  `Content-Length` alone, or as soon as the bytes read pass it), and admin
  checks run before the body is read at all (`admin.py`).
- **Headers.** uvicorn's httptools protocol (the default when httptools is
  installed, as `uvicorn[standard]` does) accepts headers of any size: one
  64 MiB header line was buffered whole. Its h11 protocol stops at 16 KiB,
  but is about a third slower on `/offer`.
- **Time.** uvicorn's keep-alive timeout (5 s) starts only after a first
  answer: a connection that sends nothing, or half a header, or a body that
  never ends, was held forever (300 of them for as long as the test ran).

`BoundedHttpToolsProtocol` is uvicorn's httptools protocol with the two
missing bounds added: a request's head must stay under `MAX_HEADER_BYTES`
(else 431) and a request must arrive whole within `REQUEST_READ_TIMEOUT`
seconds of its first byte, or of the connection's opening (else 408, or the
connection closed). `python *_service.py` (and so `make demo`) use it;
started as `uvicorn offer_service:app`, pass `UVICORN_FLAGS`.

The app cannot choose its server's protocol, so it checks: its lifespan reads
the configuration of the uvicorn running it and, when these limits are not
in force (plain `uvicorn offer_service:app`: 0 of 40 idle connections closed in
8 s, a 64 MiB header answered 200), says so in one WARNING line at start-up,
with the flags that apply them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

from uvicorn.config import Config
from uvicorn.lifespan.on import LifespanOn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

log = logging.getLogger("http_limits")

# The largest body any route takes is a chaos setting, about 100 bytes.
MAX_BODY_BYTES = 4 * 1024
# h11's default and uvicorn's own with `--http h11`; nginx allows 4 x 8 KiB.
MAX_HEADER_BYTES = 16 * 1024
# A request line, headers and a 4 KiB body take milliseconds, even from far away.
REQUEST_READ_TIMEOUT = 5.0
# uvicorn's default, said here so that it is a decision and not an accident.
KEEP_ALIVE_TIMEOUT = 5
PROTOCOL = "service.http_limits:BoundedHttpToolsProtocol"
UVICORN_FLAGS = f"--http {PROTOCOL} --timeout-keep-alive {KEEP_ALIVE_TIMEOUT}"


def uvicorn_options() -> dict[str, Any]:
    """The `uvicorn.run` arguments that apply these limits."""
    return {"http": PROTOCOL, "timeout_keep_alive": KEEP_ALIVE_TIMEOUT}


class HeadTooLarge(Exception):
    """Raised from a parser callback to stop httptools reading a head past `MAX_HEADER_BYTES`."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a size limit on headers and a deadline on reading a request."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head = False
        self._wire_bytes = 0  # bytes read since the open head began, counted from whole reads
        self._parsed_bytes = 0  # its URL and headers, as the parser hands them over
        self._too_large = False
        self._read_deadline: asyncio.TimerHandle | None = None
        self._arm()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Two counts, because httptools shows a head two ways. A header still coming
        # is buffered inside the parser, unseen: every read while a head is open is
        # counted whole, the read it began in too. A head that comes whole in one
        # read (100 KiB of it, or 20,000 small headers) is parsed before this method
        # could count it: its URL and headers are counted as the parser hands them
        # over (`on_url`, `on_header`), and the parse stopped past the limit.
        super().data_received(data)
        if self._in_head:
            self._wire_bytes += len(data)  # at most this read's bytes of an earlier request too
            if self._wire_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
                self._refuse(431, "Request header fields too large.")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._wire_bytes, self._parsed_bytes = True, 0, 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        self._parsed_bytes += size
        if self._parsed_bytes > MAX_HEADER_BYTES:
            # Raised inside httptools, it stops the parse; uvicorn then answers 400
            # through `send_400_response`, which says 431 instead.
            self._too_large = True
            raise HeadTooLarge

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._refuse(431, "Request header fields too large.")
        else:
            super().send_400_response(msg)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self) -> None:
        self._disarm()
        self._read_deadline = self.loop.call_later(REQUEST_READ_TIMEOUT, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        if self._in_head:
            self._refuse(408, "Request not received in time.")
        else:
            # Idle since it opened, or the app is already reading a body that stopped
            # coming: the app's receive() gets a disconnect.
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """Answer and close, as uvicorn does with a request it cannot parse."""
        body = message.encode("ascii")
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        self.transport.close()


def server_config() -> Config | None:
    """The configuration of the uvicorn running this app's lifespan, or None under another server.

    ASGI tells an app nothing of its server, and what wraps the lifespan's
    `receive` differs between FastAPI versions; but the lifespan runs inside
    uvicorn's `LifespanOn.main`, whose frame is up the stack of this call.
    """
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, LifespanOn):
            return owner.config
        frame = frame.f_back  # type: ignore[assignment]
    return None


def start_up_warnings(config: Config | None) -> list[str]:
    """What start-up says: the limits not in force, and how to get them."""
    how = f"start with `python <service>.py`, or give uvicorn `{UVICORN_FLAGS}`"
    if config is None:
        return [f"HTTP limits: cannot tell whether they are in force (not started by uvicorn); {how}"]
    lines = []
    protocol = config.http_protocol_class
    if not (isinstance(protocol, type) and issubclass(protocol, BoundedHttpToolsProtocol)):
        missing = [f"no {REQUEST_READ_TIMEOUT:g} s deadline to read a request (idle connections are held)"]
        if not (isinstance(protocol, type) and issubclass(protocol, H11Protocol)):
            missing.append(f"no {MAX_HEADER_BYTES // 1024} KiB limit on a request's head")
        lines.append(f"HTTP limits not in force: {'; '.join(missing)}; {how}")
    if config.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        lines.append(
            f"{config.workers} workers and no PROMETHEUS_MULTIPROC_DIR: /metrics shows the counts of "
            "whichever worker answers; set it to an empty folder, or start with WORKERS=N python offer_service.py"
        )
    return lines


def warn_of_limits_not_in_force() -> None:
    """Log one WARNING for each limit of this module the server does not apply. Called from
    an app's lifespan: in the lifespan, not in a middleware, so requests pay nothing for it."""
    for line in start_up_warnings(server_config()):
        log.warning("%s", line)

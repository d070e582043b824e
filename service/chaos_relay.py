"""The dashboard's relay to the partner's chaos controls: a small, strict client.

The page talks to one origin only, so the offer service passes
`GET|PUT|DELETE /partner/chaos` on to the partner's `/chaos`. What comes
back is the partner's, and the partner may be the sick one. Measured before
this module: a 2 KB answer with 1 GiB of zeros inside made the service
allocate over 3 GiB and send 1 GiB on; a dripping answer held a request for
78 s; an HTML answer ran its script on the dashboard's origin; a 204 with a
body was a 500 with a traceback. So:

- the whole call within `PARTNER_TIMEOUT`, the body read to `MAX_CHAOS_BYTES`
  decoded (`PartnerClient.exchange`, the same bounded call as `/offer`);
- only JSON goes back, parsed and serialised again, always as
  `application/json` with `X-Content-Type-Options: nosniff`: the partner's
  bytes and content type never reach the page;
- anything else is a 502 whose message names no host or URL (the details go
  to the log).
"""

from __future__ import annotations

import json
import logging

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from service.partner_client import LocalResourceError, PartnerClient, PartnerFailure

log = logging.getLogger("chaos_relay")

CHAOS_PATH = "/chaos"
# A chaos setting is about 100 bytes of JSON; an error detail a few hundred.
MAX_CHAOS_BYTES = 16 * 1024
# What the partner's chaos API answers: its settings, or why it refused (bad
# body, no token). A 401 goes back as is, so the page asks for the token.
RELAYED_STATUSES = frozenset({200, 400, 401, 403, 413, 422})
RELAY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
BAD_ANSWER = "the partner's chaos controls gave no usable answer"


async def relay(request: Request, method: str, body: str | None = None) -> Response:
    """Pass a chaos request to the partner, with the caller's Authorization, outside the breaker."""
    partner: PartnerClient = request.app.state.partner
    headers = {"content-type": "application/json", "accept": "application/json"}
    if "authorization" in request.headers:
        headers["authorization"] = request.headers["authorization"]
    outgoing = partner.client.build_request(method, CHAOS_PATH, content=body, headers=headers)
    try:
        answer, raw = await partner.exchange(outgoing, MAX_CHAOS_BYTES)
        payload = _json_of(answer.status_code, answer.headers.get("content-type", ""), raw)
    except (PartnerFailure, LocalResourceError) as exc:
        log.warning("chaos relay: %s %s: %s", method, CHAOS_PATH, exc)
        return JSONResponse({"detail": BAD_ANSWER}, 502, headers=RELAY_HEADERS)
    return Response(payload, answer.status_code, headers=RELAY_HEADERS, media_type="application/json")


def _json_of(status: int, content_type: str, raw: bytes) -> bytes:
    """The partner's JSON object, parsed and written again, or `PartnerFailure` for anything else.

    Written here rather than by `JSONResponse`: `1e999` parses to an infinity and
    `"\\ud800"` to a lone surrogate, neither of which can be written back; found
    while rendering the answer, they were a 500 with a traceback."""
    if status not in RELAYED_STATUSES:
        raise PartnerFailure(f"partner-status-{status}")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise PartnerFailure("partner-bad-body", f"content type {content_type[:40]!r}, not JSON")
    try:
        # NaN and Infinity are not JSON, and the answer could not be serialised again.
        payload = json.loads(raw, parse_constant=_not_json)
    except (ValueError, RecursionError) as exc:
        raise PartnerFailure("partner-bad-body", f"not JSON: {str(exc)[:80]}") from None
    if not isinstance(payload, dict):
        raise PartnerFailure("partner-bad-body", f"a JSON {type(payload).__name__}, not an object")
    try:
        return json.dumps(payload, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError) as exc:
        raise PartnerFailure(
            "partner-bad-body", f"JSON that cannot be written again: {str(exc)[:80]}"
        ) from None


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")

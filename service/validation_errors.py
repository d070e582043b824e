"""422 answers that can always be written, whatever the request's JSON held.

Python's `json` reads `NaN`, `Infinity` and `1e999` (a float it cannot write
back as JSON) and lone surrogates such as `"\\ud800"` (a string it cannot
encode as UTF-8). FastAPI's 422 echoes the rejected input, so a
`PUT /chaos` with `{"latency": NaN}` was a 500 and a traceback instead of a
422. This handler sends FastAPI's own body when it can be written, and
otherwise the same errors without the input that cannot.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response


async def _handle(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = jsonable_encoder(exc.errors())
    try:
        _strict_json(errors)
    except ValueError:
        # The input, or a limit in `ctx` (a float bound), is what cannot be written.
        safe = [{k: v for k, v in error.items() if k not in ("input", "ctx")} for error in errors]
        return Response(_strict_json({"detail": safe}), 422, media_type="application/json")
    return await request_validation_exception_handler(request, exc)


def _strict_json(value: Any) -> bytes:
    """`value` as JSON bytes, or ValueError: no NaN or infinity, no unencodable string."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(str(exc)) from None


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _handle)

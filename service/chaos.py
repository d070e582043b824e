"""How the partner misbehaves: the body of `PUT /chaos`, shared by the partner and the
offer service that relays it for the dashboard."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

# A hung request still ends, after this long, so that it cannot hold the
# partner's shutdown hostage forever.
HANG_SECONDS = 300.0


class Chaos(BaseModel):
    status_code: int | None = Field(None, ge=100, le=599, description="null: STATUS_CODE from the file")
    # Strict numbers: `"failure_rate": false` is a mistake, not a zero.
    latency: float = Field(
        0.0, ge=0, le=HANG_SECONDS, strict=True, description="seconds added to every answer"
    )
    failure_rate: float = Field(
        0.0, ge=0, le=1, strict=True, description="probability that an answer is a 500"
    )
    mode: Literal["normal", "hang", "drop"] = Field(
        "normal", description="hang: never answer; drop: close the connection in the middle of the answer"
    )

"""The partner's chaos controls, and that editing STATUS_CODE keeps working beside them."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tools.processes import EditablePartner, Service, uvicorn_service


@pytest.fixture
def partner(tmp_path: Path) -> Iterator[Service]:
    with uvicorn_service("partner_offer_service:app", log_dir=tmp_path) as service:
        yield service


def put(partner: Service, **chaos: object) -> httpx.Response:
    return httpx.put(f"{partner.url}/chaos", json=chaos, timeout=5)


def test_status_code_latency_and_defaults(partner: Service) -> None:
    assert partner.get("/chaos").json() == {
        "status_code": None,
        "latency": 0.0,
        "failure_rate": 0.0,
        "mode": "normal",
        "effective_status_code": 200,
    }
    assert put(partner, status_code=503).json()["effective_status_code"] == 503
    assert partner.get("/offer/hot").status_code == 503
    put(partner, latency=0.3)
    started = time.monotonic()
    assert partner.get("/offer/hot").status_code == 200
    assert time.monotonic() - started >= 0.3
    assert httpx.delete(f"{partner.url}/chaos").json()["effective_status_code"] == 200


def test_failure_rate_fails_that_share_of_answers(partner: Service) -> None:
    put(partner, failure_rate=0.5)
    codes = [partner.get("/offer/hot").status_code for _ in range(200)]
    assert 60 < codes.count(500) < 140
    put(partner, failure_rate=1)
    assert {partner.get("/offer/hot").status_code for _ in range(10)} == {500}


def test_hang_and_drop(partner: Service) -> None:
    put(partner, mode="hang")
    with pytest.raises(httpx.ReadTimeout):
        partner.get("/offer/hot", timeout=0.5)
    put(partner, mode="drop")
    with pytest.raises(httpx.RemoteProtocolError):
        partner.get("/offer/hot")
    # The hung request would hold a graceful stop for uvicorn's whole 5 s grace period.
    partner.stop(signal.SIGKILL)


def test_bad_chaos_is_refused_and_changes_nothing(partner: Service) -> None:
    for bad in ({"status_code": 99}, {"latency": -1}, {"failure_rate": 2}, {"mode": "explode"}):
        assert put(partner, **bad).status_code == 422
    assert partner.get("/chaos").json()["effective_status_code"] == 200


def test_requests_are_counted(partner: Service) -> None:
    for _ in range(4):
        partner.get("/offer/hot")
    assert partner.get("/stats").json() == {"requests_received": 4, "status_code": 200}


def test_editing_status_code_still_works_and_chaos_resets_with_the_reload(
    editable_partner: EditablePartner,
) -> None:
    put(editable_partner, latency=0.01)
    editable_partner.set_status(500)
    assert editable_partner.get("/offer/hot").status_code == 500
    assert editable_partner.get("/chaos").json()["latency"] == 0.0

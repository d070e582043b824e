"""Who may force the circuit or change the partner's chaos."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tools.processes import Service, uvicorn_service

TOKEN = "admin-test-token-0123456789abcdef"
ADMIN_REQUESTS = [
    ("POST", "/offer/circuit/open"),
    ("POST", "/offer/circuit/close"),
    ("POST", "/offer/circuit/reset"),
    ("PUT", "/partner/chaos"),
    ("DELETE", "/partner/chaos"),
]


@pytest.fixture
def partner(tmp_path: Path) -> Iterator[Service]:
    with uvicorn_service(
        "partner_offer_service:app", env={"ADMIN_TOKEN": TOKEN}, log_dir=tmp_path
    ) as service:
        yield service


def start_offers(partner: Service, tmp_path: Path, **env: str) -> Service:
    return uvicorn_service(
        "offer_service:app", env={"PARTNER_OFFER_URL": partner.url, **env}, log_dir=tmp_path
    ).start()


def send(service: Service, method: str, path: str, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"status_code": 500} if method == "PUT" else None
    return service.client.request(method, path, json=body, headers=headers, timeout=5)


@pytest.mark.parametrize(("method", "path"), ADMIN_REQUESTS)
def test_with_a_token_set_admin_requests_need_it(
    partner: Service, tmp_path: Path, method: str, path: str
) -> None:
    offers = start_offers(partner, tmp_path, ADMIN_TOKEN=TOKEN)
    try:
        refused = send(offers, method, path)
        assert refused.status_code == 401
        assert "ADMIN_TOKEN" in refused.json()["detail"]
        assert send(offers, method, path, token="wrong-token-0123456789").status_code == 401
        assert send(offers, method, path, token=TOKEN).status_code == 200
        assert TOKEN not in offers.log()
    finally:
        offers.stop()


def test_the_partner_refuses_chaos_without_its_token(partner: Service) -> None:
    assert send(partner, "PUT", "/chaos").status_code == 401
    assert send(partner, "PUT", "/chaos", token=TOKEN).json()["effective_status_code"] == 500
    assert send(partner, "DELETE", "/chaos", token=TOKEN).json()["effective_status_code"] == 200


def test_without_a_token_admin_requests_are_refused_on_a_non_loopback_bind(
    partner: Service, tmp_path: Path
) -> None:
    # `uvicorn --host 0.0.0.0` with HOST unset: what the server listens on decides, not HOST.
    offers = uvicorn_service("offer_service:app", env={"PARTNER_OFFER_URL": partner.url}, log_dir=tmp_path)
    offers.args[offers.args.index("127.0.0.1")] = "0.0.0.0"
    del offers.env["HOST"]
    with offers:
        for method, path in ADMIN_REQUESTS:
            refused = send(offers, method, path)
            assert refused.status_code == 403
            assert "set ADMIN_TOKEN" in refused.json()["detail"]
        assert offers.get("/offer/circuit").json()["current_state"] == "closed"


def test_without_a_token_admin_requests_from_this_machine_work_and_forged_hosts_do_not(
    tmp_path: Path,
) -> None:
    with uvicorn_service("partner_offer_service:app", log_dir=tmp_path) as open_partner:
        offers = start_offers(open_partner, tmp_path)
        try:
            assert send(offers, "POST", "/offer/circuit/open").json()["current_state"] == "open"
            rebound = offers.client.post("/offer/circuit/close", headers={"Host": "attacker.example"})
            assert rebound.status_code == 403
            cross_site = offers.client.post("/offer/circuit/close", headers={"Sec-Fetch-Site": "cross-site"})
            assert cross_site.status_code == 403
            for origin in ("http://evil.example", "null", "http://127.0.0.1:1", "file://"):
                foreign = offers.client.post("/offer/circuit/close", headers={"Origin": origin})
                assert foreign.status_code == 403, origin
            assert offers.get("/offer/circuit").json()["current_state"] == "open"
            same_origin = offers.client.post("/offer/circuit/close", headers={"Origin": offers.url})
            assert same_origin.json()["current_state"] == "closed"
        finally:
            offers.stop()


def test_no_state_changes_on_get(partner: Service, tmp_path: Path) -> None:
    offers = start_offers(partner, tmp_path, ADMIN_TOKEN=TOKEN)
    try:
        for path in ("/offer/circuit/open", "/offer/circuit/reset"):
            assert offers.get(path).status_code == 405
        assert offers.get("/offer/circuit").json()["current_state"] == "closed"
    finally:
        offers.stop()


def test_the_page_and_the_event_stream_leak_no_secret(partner: Service, tmp_path: Path) -> None:
    offers = start_offers(partner, tmp_path, ADMIN_TOKEN=TOKEN)
    try:
        page = offers.get("/")
        assert TOKEN not in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["x-frame-options"] == "DENY"
        with offers.client.stream("GET", "/offer/circuit/events", timeout=5) as stream:
            first = next(line for line in stream.iter_lines() if line.startswith("data: "))
        assert TOKEN not in first
        assert "token" not in first.lower()
        assert TOKEN not in offers.get("/openapi.json").text
    finally:
        offers.stop()


def test_no_redirect_is_built_from_the_host(partner: Service, tmp_path: Path) -> None:
    offers = start_offers(partner, tmp_path, ADMIN_TOKEN=TOKEN)
    try:
        for method, path in [("GET", "/offer/"), ("POST", "/offer/circuit/open/"), ("GET", "/health/")]:
            answer = offers.client.request(method, path, headers={"Host": "evil.example"}, timeout=5)
            assert answer.status_code == 404, path
            assert "location" not in answer.headers
            assert "evil.example" not in answer.text
    finally:
        offers.stop()


EXPECTED_ALLOW = {
    "/offer/circuit/open": "POST",
    "/offer/circuit/reset": "POST",
    "/partner/chaos": "GET, PUT, DELETE",
    "/offer/circuit/events": "GET",
    "/metrics": "GET",
    "/offer": "GET",
    "/static/app.js": "GET, HEAD",
}


def test_every_405_lists_the_methods_the_path_takes(partner: Service, tmp_path: Path) -> None:
    offers = start_offers(partner, tmp_path, ADMIN_TOKEN=TOKEN)
    try:
        for path, allow in EXPECTED_ALLOW.items():
            method = "PATCH"
            answer = offers.client.request(method, path, timeout=5)
            assert answer.status_code == 405, path
            assert answer.headers["allow"] == allow, path
        chaos = partner.client.post("/chaos", timeout=5)
        assert (chaos.status_code, chaos.headers["allow"]) == (405, "GET, PUT, DELETE")
    finally:
        offers.stop()


def test_no_page_loads_a_script_from_another_origin(partner: Service, tmp_path: Path) -> None:
    offers = start_offers(partner, tmp_path, ADMIN_TOKEN=TOKEN)
    try:
        for service in (offers, partner):
            for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
                assert service.get(path).status_code == 404, path
            assert service.get("/openapi.json").json()["openapi"].startswith("3.")
        page = offers.get("/").text
        assert "<script" in page
        assert "cdn" not in page.lower()
        assert "http://" not in page and "https://" not in page
    finally:
        offers.stop()

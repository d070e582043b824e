"""The event stream and the Prometheus metrics, over HTTP against real processes."""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tools.processes import EditablePartner, Service, script_service, uvicorn_service, wait_for


@pytest.fixture
def partner(tmp_path: Path) -> Iterator[Service]:
    with uvicorn_service("partner_offer_service:app", log_dir=tmp_path) as service:
        yield service


@pytest.fixture
def offers(partner: Service, tmp_path: Path) -> Iterator[Service]:
    env = {"PARTNER_OFFER_URL": partner.url, "CIRCUIT_RESET_TIMEOUT": "1"}
    with uvicorn_service("offer_service:app", env=env, log_dir=tmp_path) as service:
        yield service


def chaos(service: Service, method: str, body: dict[str, object] | None = None) -> httpx.Response:
    return httpx.request(method, f"{service.url}/partner/chaos", json=body, timeout=5)


def test_the_event_stream_carries_every_transition_in_order(offers: Service) -> None:
    transitions: list[tuple[str | None, str]] = []
    snapshots = 0
    ready = threading.Event()

    def listen() -> None:
        nonlocal snapshots
        with httpx.stream("GET", f"{offers.url}/offer/circuit/events", timeout=20) as stream:
            event = ""
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    data = json.loads(line.removeprefix("data: "))
                    if event == "snapshot":
                        snapshots += 1
                        ready.set()
                    elif event == "transition":
                        transitions.append((data["from"], data["to"]))
                        if len(transitions) == 3:
                            return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert ready.wait(5)
    chaos(offers, "PUT", {"status_code": 500})
    for _ in range(3):
        offers.get("/offer")
    chaos(offers, "DELETE")
    wait_for(
        lambda: offers.get("/offer").headers["x-offer-source"] == "partner", timeout=5, what="closed again"
    )
    listener.join(10)
    assert transitions == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]
    assert snapshots >= 2


def metric(text: str, name: str, **labels: str) -> float:
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = (
        rf"^{re.escape(name)}{{{re.escape(label_text)}}} ([0-9.e+]+|NaN)$"
        if labels
        else rf"^{name} ([0-9.e+]+|NaN)$"
    )
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"{name} {labels} not in metrics"
    return float(match.group(1))


def test_metrics_count_the_requests_sent(offers: Service) -> None:
    for _ in range(5):
        offers.get("/offer")
    chaos(offers, "PUT", {"status_code": 500})
    reasons = [offers.get("/offer").headers["x-fallback-reason"] for _ in range(7)]
    assert reasons == ["partner-status-500"] * 3 + ["circuit-open"] * 4  # the exact code in the header
    text = offers.get("/metrics").text
    breaker = {"breaker": "partner-offer"}
    assert metric(text, "circuit_breaker_calls_total", **breaker, outcome="success") == 5
    assert metric(text, "circuit_breaker_calls_total", **breaker, outcome="failure") == 3
    assert metric(text, "circuit_breaker_calls_total", **breaker, outcome="not-permitted") == 4
    assert metric(text, "offer_fallbacks_total", reason="partner-status-5xx") == 3  # its class in the label
    assert metric(text, "offer_fallbacks_total", reason="circuit-open") == 4
    assert metric(text, "circuit_breaker_state", **breaker) == 1
    assert (
        metric(text, "circuit_breaker_transitions_total", **breaker, from_state="closed", to_state="open")
        == 1
    )
    assert metric(text, "partner_request_duration_seconds_count") == 8
    assert "circuit_breaker_failure_rate{" not in text  # the consecutive policy has no window


def test_metrics_give_the_rate_policy_s_window(partner: Service, tmp_path: Path) -> None:
    # A minimum no test reaches: the circuit stays closed and every call stays in the window.
    env = {
        "PARTNER_OFFER_URL": partner.url,
        "CIRCUIT_POLICY": "rate",
        "CIRCUIT_WINDOW": "60",
        "CIRCUIT_MIN_CALLS": "1000",
        "CIRCUIT_SLOW_CALL_SECONDS": "0.2",
    }
    breaker = {"breaker": "partner-offer"}
    with uvicorn_service("offer_service:app", env=env, log_dir=tmp_path) as offers:
        text = offers.get("/metrics").text
        assert math.isnan(metric(text, "circuit_breaker_failure_rate", **breaker))  # no calls: no rate
        assert math.isnan(metric(text, "circuit_breaker_slow_call_rate", **breaker))
        assert metric(text, "circuit_breaker_window_calls", **breaker) == 0

        chaos(offers, "PUT", {"status_code": 500})
        for _ in range(4):
            offers.get("/offer")
        text = offers.get("/metrics").text
        assert metric(text, "circuit_breaker_failure_rate", **breaker) == 1.0
        assert metric(text, "circuit_breaker_slow_call_rate", **breaker) == 0.0
        assert metric(text, "circuit_breaker_window_calls", **breaker) == 4

        chaos(offers, "PUT", {"latency": 0.3})  # answers 200, slowly
        for _ in range(2):
            offers.get("/offer")
        chaos(offers, "DELETE")
        for _ in range(2):
            offers.get("/offer")
        text = offers.get("/metrics").text
        assert metric(text, "circuit_breaker_failure_rate", **breaker) == 0.5
        assert metric(text, "circuit_breaker_slow_call_rate", **breaker) == 0.25
        assert metric(text, "circuit_breaker_window_calls", **breaker) == 8


def test_metrics_add_up_over_several_workers_and_their_folder_goes_at_the_stop(
    editable_partner: EditablePartner, tmp_path: Path
) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {"PARTNER_OFFER_URL": editable_partner.url, "WORKERS": "2", "TMPDIR": str(temporary)}
    with script_service(editable_partner.cwd, "offer_service.py", env) as offers:
        assert [p.name[:14] for p in temporary.iterdir()] == ["offer-metrics-"]
        for _ in range(40):
            httpx.get(f"{offers.url}/offer", headers={"Connection": "close"})  # new connections: both workers
        totals = [
            metric(
                offers.get("/metrics").text,
                "circuit_breaker_calls_total",
                breaker="partner-offer",
                outcome="success",
            )
            for _ in range(6)
        ]
    assert totals == [40.0] * 6
    assert offers.process is not None and offers.process.returncode == 0
    assert list(temporary.iterdir()) == []  # before: one offer-metrics-* folder left at every stop


def test_fallback_reasons_make_one_series_per_status_class(partner: Service, tmp_path: Path) -> None:
    env = {"PARTNER_OFFER_URL": partner.url, "CIRCUIT_FAIL_MAX": "1000000"}
    with uvicorn_service("offer_service:app", env=env, log_dir=tmp_path) as offers:
        codes = [*range(500, 600, 7), *range(400, 429, 3), 302, 204]
        for code in codes:
            chaos(offers, "PUT", {"status_code": code})
            assert offers.get("/offer").headers["x-fallback-reason"] == f"partner-status-{code}"
        labels = re.findall(r'^offer_fallbacks_total\{reason="([^"]+)"\}', offers.get("/metrics").text, re.M)
    assert sorted(labels) == [
        "partner-status-2xx",
        "partner-status-3xx",
        "partner-status-4xx",
        "partner-status-5xx",
    ]

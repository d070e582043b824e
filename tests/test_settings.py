"""Every setting's bad values stop start-up with one line naming the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

import settings
from settings import OfferSettings, PartnerSettings
from tests.processes import PROJECT_DIR, free_port

BAD_OFFER_SETTINGS = [
    ("PARTNER_OFFER_URL", "not a url", "an http(s) URL"),
    ("PARTNER_OFFER_URL", "ftp://127.0.0.1:8000", "an http(s) URL"),
    ("PARTNER_TIMEOUT", "abc", "a number > 0"),
    ("PARTNER_TIMEOUT", "0", "a number > 0"),
    ("PARTNER_TIMEOUT", "-1", "a number > 0"),
    ("CIRCUIT_FAIL_MAX", "0", "a whole number >= 1"),
    ("CIRCUIT_FAIL_MAX", "2.5", "a whole number >= 1"),
    ("CIRCUIT_FAIL_MAX", "three", "a whole number >= 1"),
    ("CIRCUIT_RESET_TIMEOUT", "0", "a number > 0"),
    ("CIRCUIT_RESET_TIMEOUT", "soon", "a number > 0"),
    ("REDIS_URL", "localhost:6379", "a redis:// URL"),
    ("REDIS_URL", "http://127.0.0.1:6379", "a redis:// URL"),
    ("LOG_LEVEL", "loud", "one of debug, info"),
    ("HTTPX_LOG_LEVEL", "verbose", "one of debug, info"),
    ("HOST", "", "an address"),
    ("PORT", "0", "a TCP port"),
    ("PORT", "70000", "a TCP port"),
    ("PORT", "http", "a TCP port"),
]

BAD_PARTNER_SETTINGS = [
    ("PARTNER_LATENCY", "-0.5", "a number >= 0"),
    ("PARTNER_LATENCY", "slow", "a number >= 0"),
    ("PORT", "-1", "a TCP port"),
    ("LOG_LEVEL", "chatty", "one of debug"),
]


@pytest.mark.parametrize(("variable", "value", "expected"), BAD_OFFER_SETTINGS)
def test_bad_offer_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as stop:
        settings.load(OfferSettings)
    message = str(stop.value)
    assert message.startswith(f"error: {variable}={value!r} is invalid, expected ")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(("variable", "value", "expected"), BAD_PARTNER_SETTINGS)
def test_bad_partner_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as stop:
        settings.load(PartnerSettings)
    assert str(stop.value).startswith(f"error: {variable}={value!r} is invalid, expected ")
    assert expected in str(stop.value)


def test_defaults_are_the_walkthroughs(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "PARTNER_OFFER_URL",
        "PARTNER_TIMEOUT",
        "CIRCUIT_FAIL_MAX",
        "CIRCUIT_RESET_TIMEOUT",
        "REDIS_URL",
        "HOST",
        "PORT",
        "LOG_LEVEL",
        "HTTPX_LOG_LEVEL",
    ):
        monkeypatch.delenv(name, raising=False)
    offer = settings.load(OfferSettings)
    assert (offer.host, offer.port, offer.partner_offer_url) == ("127.0.0.1", 8001, "http://127.0.0.1:8000")
    assert (offer.circuit_fail_max, offer.circuit_reset_timeout, offer.partner_timeout) == (3, 15, 2)
    assert offer.redis_url is None
    assert settings.load(PartnerSettings).port == 8000


def test_values_are_parsed_leniently_where_it_is_harmless(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRCUIT_RESET_TIMEOUT", "0.5")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("REDIS_URL", "")
    offer = settings.load(OfferSettings)
    assert (offer.circuit_reset_timeout, offer.log_level, offer.redis_url) == (0.5, "debug", None)


@pytest.mark.parametrize("script", ["offer_service.py", "partner_offer_service.py"])
def test_a_service_started_with_a_bad_setting_prints_one_line_and_no_traceback(script: str) -> None:
    result = subprocess.run(
        [sys.executable, script],
        cwd=PROJECT_DIR,
        env={"PATH": "/usr/bin:/bin", "PORT": "eighty"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: PORT='eighty' is invalid, expected a TCP port, 1-65535"
    ]


def test_an_unreachable_redis_at_start_up_is_one_line() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = subprocess.run(
        [sys.executable, "offer_service.py"],
        cwd=PROJECT_DIR,
        env={"PATH": "/usr/bin:/bin", "REDIS_URL": url},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: REDIS_URL='{url}' is unreachable: ")

"""The dashboard in a real headless Chromium: break the partner, watch the circuit open, heal it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tools.processes import Service, uvicorn_service

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Without the network-quieting flags Chromium tries to reach Google's hosts at start.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "dashboard-test-token-0123456789"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        hint = "no chromium on PATH: install it (apt-get install chromium) to run the dashboard tests"
        if os.environ.get("CI"):
            pytest.fail(f"{hint}; in CI no browser test may be skipped")
        pytest.skip(hint)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def services(tmp_path: Path, extra: dict[str, str] | None = None) -> tuple[Service, Service]:
    partner = uvicorn_service("partner_offer_service:app", env=extra, log_dir=tmp_path).start()
    env = {"PARTNER_OFFER_URL": partner.url, "CIRCUIT_RESET_TIMEOUT": "2", **(extra or {})}
    return partner, uvicorn_service("offer_service:app", env=env, log_dir=tmp_path).start()


def test_break_the_partner_watch_the_circuit_open_then_heal_it(browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    partner, offers = services(tmp_path)
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"{offers.url}/")
        expect(page.get_by_test_id("state")).to_have_text("closed")
        expect(page.locator("#stream")).to_have_text("live")
        expect(page.get_by_test_id("policy")).to_have_text("policy: consecutive, 3 failures in a row")
        expect(page.locator("#rates")).to_be_hidden()

        page.click("#break")
        expect(page.locator("#message")).to_have_text("partner: 500")  # the page says when it took
        page.fill("#count", "10")
        page.click("#fire")
        expect(page.get_by_test_id("state")).to_have_text("open", timeout=5000)
        expect(page.locator("#state-open")).to_have_class("state lit")
        expect(page.get_by_test_id("countdown")).to_contain_text("next trial in")
        expect(page.get_by_test_id("fired")).to_contain_text("10 sent: 0 hot, 10 cold")
        expect(page.locator("#transitions li")).to_have_count(1)
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        if os.environ.get("DASHBOARD_SCREENSHOT"):
            page.screenshot(path=os.environ["DASHBOARD_SCREENSHOT"], full_page=True)

        page.click("#heal")
        expect(page.locator("#message")).to_have_text("partner: 200")
        expect(page.get_by_test_id("countdown")).to_have_text("next request is the trial", timeout=5000)
        page.fill("#count", "1")
        page.click("#fire")
        expect(page.get_by_test_id("state")).to_have_text("closed", timeout=5000)
        expect(page.locator("#state-closed")).to_have_class("state lit")

        page.set_viewport_size({"width": 390, "height": 844})  # a phone
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        page.close()
    finally:
        offers.stop()
        partner.stop()


def test_the_page_asks_for_the_admin_token_when_one_is_set(browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    partner, offers = services(tmp_path, {"ADMIN_TOKEN": TOKEN})
    try:
        page = browser.new_page()
        page.goto(f"{offers.url}/")
        page.click("#force-open")
        expect(page.locator("#token-form")).to_be_visible()
        page.fill("#token", TOKEN)
        page.click("#token-form button")
        expect(page.get_by_test_id("state")).to_have_text("open", timeout=5000)
        page.close()
    finally:
        offers.stop()
        partner.stop()


def test_the_rate_policy_shows_its_rates_against_their_thresholds(browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    # The rates count from 20 calls: the first 12 show a rate at its threshold that trips nothing.
    rate = {"CIRCUIT_POLICY": "rate", "CIRCUIT_WINDOW": "5", "CIRCUIT_MIN_CALLS": "20"}
    # Slow from 5 s, under a 6 s timeout: no call of a loaded machine counts as slow here.
    rate |= {"CIRCUIT_SLOW_CALL_SECONDS": "5", "PARTNER_TIMEOUT": "6"}
    partner, offers = services(tmp_path, rate)
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        page.goto(f"{offers.url}/")
        expect(page.get_by_test_id("policy")).to_have_text("policy: rate, over the last 5 s")
        expect(page.locator("#consecutive")).to_be_hidden()
        # No calls, no rate: an en dash.
        expect(page.get_by_test_id("failure-rate")).to_have_text("failure rate \u2013 / 50%")
        expect(page.get_by_test_id("window-calls")).to_have_text(
            "0 calls in the last 5 s, rates count from 20"
        )

        fire(page, 6, "6 sent: 0 hot, 6 cold", break_partner=True)
        fire(page, 6, "6 sent: 6 hot, 0 cold", break_partner=False)
        expect(page.get_by_test_id("failure-rate")).to_have_text("failure rate 50% / 50%")
        expect(page.get_by_test_id("slow-call-rate")).to_have_text(
            "slow-call rate 0% / 100% (calls of 5 s or more)"
        )
        expect(page.get_by_test_id("window-calls")).to_have_text(
            "12 calls in the last 5 s, rates count from 20"
        )
        expect(page.locator("#failure-meter")).to_have_class("meter idle")  # under 20 calls: grey
        width = page.eval_on_selector("#failure-meter .fill", "el => el.style.width")
        assert width == "50%"
        if os.environ.get("DASHBOARD_SCREENSHOT"):
            page.screenshot(
                path=os.environ["DASHBOARD_SCREENSHOT"].replace(".png", "-rate.png"), full_page=True
            )

        # 12 + 8 = 20 calls, 14 of them failed: the rates count now, and 70% trips the circuit.
        fire(page, 8, "8 sent: 0 hot, 8 cold", break_partner=True)
        expect(page.get_by_test_id("state")).to_have_text("open", timeout=5000)
        # A new state, a new window.
        expect(page.get_by_test_id("window-calls")).to_have_text(
            "0 calls in the last 5 s, rates count from 20"
        )
        # The meters' widths go through the CSSOM, which the CSP allows; a style attribute would not.
        assert [text for text in console if "Content Security Policy" in text] == []
        page.close()
    finally:
        offers.stop()
        partner.stop()


def fire(page: Any, count: int, said: str, break_partner: bool) -> None:
    """Break or heal the partner, then fire `count` requests from the page and wait for its tally."""
    from playwright.sync_api import expect

    page.click("#break" if break_partner else "#heal")
    expect(page.locator("#message")).to_have_text("partner: 500" if break_partner else "partner: 200")
    page.fill("#count", str(count))
    page.click("#fire")
    expect(page.get_by_test_id("fired")).to_contain_text(said)

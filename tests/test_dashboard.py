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

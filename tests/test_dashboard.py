"""The dashboard in a real headless Chromium: break the partner, watch the circuit open, heal it;
read by someone who has never seen a circuit breaker, at desktop and at phone width."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tools.processes import PROJECT_DIR, Service, uvicorn_service

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
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
# `make screenshot` sets this to docs/dashboard.png; the phone's and the rate policy's go beside it.
SCREENSHOT = os.environ.get("DASHBOARD_SCREENSHOT")


def screenshot(page: Any, suffix: str = "") -> None:
    if SCREENSHOT:
        page.screenshot(path=SCREENSHOT.replace(".png", f"{suffix}.png"), full_page=True)


def quoted_labels(path: str, start: str, end: str) -> list[str]:
    """The page's words a document quotes: every "..." in its dashboard section."""
    text = (PROJECT_DIR / path).read_text()
    quoted = re.findall(r'"([^"]+)"', text[text.index(start) : text.index(end)])
    return [" ".join(label.split()) for label in quoted]


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
        page = browser.new_page(viewport=DESKTOP)
        failed: list[str] = []
        page.on("response", lambda response: response.ok or failed.append(response.url))
        page.goto(f"{offers.url}/")
        expect(page.get_by_test_id("state")).to_have_text("closed")
        expect(page.locator("#state-line")).to_have_text(
            "closed: the partner is called, and its failures are counted."
        )
        expect(page.get_by_test_id("fail-line")).to_have_text(
            "0 of 3 failures in a row before the circuit opens"
        )
        expect(page.locator("#trip-label")).to_have_text("3 failures in a row")
        expect(page.locator("#wait-label")).to_have_text("after 2 s:")
        expect(page.locator("#stream")).to_have_text("live")
        expect(page.get_by_test_id("policy")).to_have_text("policy: consecutive, 3 failures in a row")
        expect(page.locator("#rates")).to_be_hidden()

        page.click("#break")
        expect(page.locator("#message")).to_have_text("partner: 500")  # the page says when it took
        expect(page.locator("#message")).to_have_class("ok")  # done: green, not alarm red
        page.fill("#count", "10")
        page.click("#fire")
        expect(page.get_by_test_id("state")).to_have_text("open", timeout=5000)
        expect(page.locator("#state-open")).to_have_class("state lit")
        expect(page.locator("#state-line")).to_have_text(
            "open: the partner is not called; everyone gets the cold offer."
        )
        expect(page.get_by_test_id("countdown")).to_contain_text("next trial in")
        # In the legend's words; the ten went out at once, so how many failed before it opened varies.
        expect(page.get_by_test_id("fired")).to_have_text(
            re.compile(r"^10 sent: 0 hot, \d+ cold, \d+ not permitted$")
        )
        expect(page.get_by_test_id("fired-why")).to_contain_text("the partner answered 500")
        # "N of 3 before the circuit opens" is for a closed circuit; open, the count is explained.
        expect(page.get_by_test_id("fail-line")).to_be_hidden()
        expect(page.get_by_test_id("fail-note")).to_contain_text(
            "The circuit opened at failure 3 in a row. Calls already on their way to the partner may fail"
        )
        expect(page.locator("#transitions li")).to_have_count(1)
        assert_no_empty_column(page)
        screenshot(page)
        page.set_viewport_size(PHONE)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        screenshot(page, "-phone")
        page.set_viewport_size(DESKTOP)

        page.click("#force-open")  # already open: answers 200, and the line says so
        expect(page.locator("#message")).to_have_text("circuit: open")
        page.click("#heal")
        expect(page.locator("#message")).to_have_text("partner: 200")
        expect(page.get_by_test_id("countdown")).to_have_text("next request is the trial", timeout=5000)
        page.fill("#count", "1")
        page.click("#fire")
        expect(page.get_by_test_id("state")).to_have_text("closed", timeout=5000)
        expect(page.locator("#state-closed")).to_have_class("state lit")
        expect(page.get_by_test_id("fail-line")).to_be_visible()
        page.click("#force-open")
        expect(page.locator("#message")).to_have_text("circuit: open")
        # A trial closes it: "circuit: open" would now be stale, and the line is cleared.
        expect(page.get_by_test_id("countdown")).to_contain_text("next trial in")
        expect(page.get_by_test_id("countdown")).to_have_text("next request is the trial", timeout=5000)
        page.click("#fire")
        expect(page.get_by_test_id("state")).to_have_text("closed", timeout=5000)
        expect(page.locator("#message")).to_have_text("")
        assert failed == [], f"requests that failed: {failed}"
        # A browser asks for /favicon.ico, a 404, unless the page names its icon (headless does not ask).
        icon = page.request.get(page.eval_on_selector("link[rel=icon]", "link => link.href"))
        assert icon.ok and icon.headers["content-type"].startswith("image/")
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
        page = browser.new_page(viewport=DESKTOP)
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
        screenshot(page, "-rate")

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


def assert_no_empty_column(page: Any) -> None:
    """At desktop width the cards fill the page's width: no column of the grid left blank."""
    boxes = page.eval_on_selector_all(
        "main > .card",
        "cards => cards.map(c => { const r = c.getBoundingClientRect(); return [r.left, r.right]; })",
    )
    main = page.eval_on_selector(
        "main", "m => { const r = m.getBoundingClientRect(); return [r.left, r.right]; }"
    )
    rightmost = max(right for _, right in boxes)
    assert main[1] - rightmost < 40, f"the cards end at {rightmost} px of a page {main[1]} px wide"
    assert main[1] - main[0] > 0.9 * page.viewport_size["width"] - 40


def test_the_labels_the_docs_quote_are_the_pages(browser: Any, tmp_path: Path) -> None:
    """A button renamed on the page, or a label renamed in the README, fails here."""
    quoted = {
        *quoted_labels("README.md", "## The dashboard", "## Copying the breaker"),
        *quoted_labels("README.pt-BR.md", "## O painel", "## Copiando o breaker"),
        *quoted_labels("docs/operations.md", "## The dashboard", "## Chaos controls"),
    }
    assert {"Trip open", "Reset closed", "not permitted"} <= quoted
    partner, offers = services(tmp_path, {"CIRCUIT_RESET_TIMEOUT": "15"})  # the docs' settings
    try:
        from playwright.sync_api import expect

        page = browser.new_page(viewport=DESKTOP)
        page.goto(f"{offers.url}/")
        # Some labels are the page's script's, written once it has the circuit's first state.
        expect(page.locator("#stream")).to_have_text("live", timeout=15_000)
        expect(page.locator("#fail-max")).to_have_text("3", timeout=15_000)  # "?" until then
        words = " ".join(page.locator("main").inner_text().split())
        missing = sorted(label for label in quoted if label not in words)
        assert not missing, f"quoted in the docs, not on the page: {missing}"
        page.close()
    finally:
        offers.stop()
        partner.stop()

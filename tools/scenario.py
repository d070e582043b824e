"""The walkthrough, driven for you: healthy, broken, open, half-open, healed, closed; then partial failures.

    python tools/scenario.py          # against running services (make demo), or its own if none run
    python tools/scenario.py --start  # always start its own services, on free ports
    python tools/scenario.py --story walkthrough   # or --story partial: one part only

The walkthrough prints one line per request (what came back, the circuit's
state and fail counter, the latency). The partial failures
(tools/partial_failures.py) always start their own partner and two offer
services, one per circuit policy, and put them under steady load while the
partner fails 20% of calls, then 70%, then turns slow; they print a few
lines of figures per step. A summary of what the story should show comes
last. It exits 1 if any of it did not happen, so it doubles as a smoke test.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools import partial_failures
from tools.processes import Service, uvicorn_service

DEMO_PARTNER, DEMO_OFFERS = "http://127.0.0.1:8000", "http://127.0.0.1:8001"
OWN_RESET_TIMEOUT = "3"

COLOR = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
PAINT = {"hot": "32", "cold": "33", "not permitted": "31", "step": "1;36", "ok": "32", "fail": "1;31"}


def paint(text: str, kind: str) -> str:
    return f"\033[{PAINT[kind]}m{text}\033[0m" if COLOR else text


@dataclass
class Report:
    """The story's steps and checks: printed as they come, summed up at the end."""

    started: float = field(default_factory=time.monotonic)
    checks: list[tuple[str, bool]] = field(default_factory=list)

    def step(self, title: str) -> None:
        print(paint(f"\n== {title}", "step"))

    def check(self, what: str, ok: bool) -> None:
        self.checks.append((what, ok))

    def summary(self) -> bool:
        self.step("Summary")
        for what, ok in self.checks:
            print(f"  {paint('ok  ', 'ok') if ok else paint('FAIL', 'fail')} {what}")
        passed = sum(ok for _, ok in self.checks)
        print(
            f"\nthe story: {passed} of {len(self.checks)} checks as expected, in {time.monotonic() - self.started:.1f} s"
        )
        return passed == len(self.checks)


@dataclass
class Story:
    offers: str
    partner: str
    client: httpx.Client
    report: Report = field(default_factory=Report)

    @property
    def started(self) -> float:
        return self.report.started

    def step(self, title: str) -> None:
        self.report.step(title)

    def admin(self, method: str, path: str, body: dict[str, object] | None = None) -> None:
        token = os.environ.get("ADMIN_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = self.client.request(method, f"{self.offers}{path}", json=body, headers=headers)
        if response.status_code != 200:
            sys.exit(f"error: {method} {path} answered {response.status_code}: {response.text}")

    def circuit(self) -> dict[str, object]:
        return self.client.get(f"{self.offers}/offer/circuit").json()  # type: ignore[no-any-return]

    def partner_calls(self) -> int:
        return int(self.client.get(f"{self.partner}/stats").json()["requests_received"])

    def offer(self) -> str:
        """One request, printed as a line of the timeline; returns hot, cold or not permitted."""
        began = time.monotonic()
        response = self.client.get(f"{self.offers}/offer")
        latency_ms = (time.monotonic() - began) * 1000
        reason = response.headers.get("x-fallback-reason", "")
        kind = (
            "hot"
            if not reason
            else "not permitted"
            if reason in ("circuit-open", "trial-in-flight")
            else "cold"
        )
        circuit = self.circuit()
        print(
            f"{time.monotonic() - self.started:6.2f}s  {paint(f'{kind:13}', kind)} {response.json():28} "
            f"{circuit['current_state']:9} fail_counter={circuit['fail_counter']}  "
            f"{latency_ms:6.1f} ms  {reason}"
        )
        return kind

    def check(self, what: str, ok: bool) -> None:
        self.report.check(what, ok)

    def wait_for_trial(self) -> None:
        seconds = float(str(self.circuit()["seconds_until_trial"] or 0))
        print(f"        waiting {seconds:.1f} s for the reset timeout…")
        time.sleep(seconds + 0.05)


def tell(story: Story) -> None:
    story.admin("DELETE", "/partner/chaos")
    story.admin("POST", "/offer/circuit/reset")
    fail_max = int(str(story.circuit()["fail_max"]))

    story.step("A healthy partner: hot offers")
    story.check("a healthy partner gives hot offers", all(story.offer() == "hot" for _ in range(3)))

    story.step("Break the partner (500): failures count up to fail_max, then the circuit opens")
    story.admin("PUT", "/partner/chaos", {"status_code": 500})
    kinds = [story.offer() for _ in range(fail_max)]
    story.check(f"{fail_max} failures open the circuit", kinds == ["cold"] * fail_max)
    story.check("the circuit is open", story.circuit()["current_state"] == "open")

    story.step("Open: the partner is not called, the fallback comes at once")
    before = story.partner_calls()
    kinds = [story.offer() for _ in range(5)]
    story.check("open: every request not permitted, answered at once", kinds == ["not permitted"] * 5)
    story.check("open: the partner received no request", story.partner_calls() == before)

    story.step("Half-open: after the reset timeout one trial call; the partner still fails")
    story.wait_for_trial()
    before = story.partner_calls()
    story.check("the trial reaches the partner and fails", story.offer() == "cold")
    story.check("exactly one trial call", story.partner_calls() == before + 1)
    story.check("a failed trial opens the circuit again", story.circuit()["current_state"] == "open")

    story.step("Heal the partner: the next trial closes the circuit")
    story.admin("DELETE", "/partner/chaos")
    story.wait_for_trial()
    story.check("the trial succeeds", story.offer() == "hot")
    story.check("the circuit is closed", story.circuit()["current_state"] == "closed")
    story.check("hot offers again", story.offer() == "hot")


def running(url: str, client: httpx.Client) -> bool:
    try:
        return client.get(f"{url}/health").status_code == 200
    except httpx.HTTPError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--start", action="store_true", help="start the walkthrough's own services even if the demo runs"
    )
    parser.add_argument(
        "--story",
        choices=("walkthrough", "partial", "all"),
        default="all",
        help="the walkthrough, the partial failures (always on their own services), or both (default)",
    )
    args = parser.parse_args(argv)
    report = Report()
    with ExitStack() as stack, ThreadPoolExecutor(1) as pool:
        # The partial failures' services start while the walkthrough runs: it mostly waits.
        partial = pool.submit(partial_failures.start, stack) if args.story != "walkthrough" else None
        if args.story != "partial":
            walkthrough(report, args.start)
        if partial is not None:
            partial_failures.tell(report, partial.result())
    return 0 if report.summary() else 1


def walkthrough(report: Report, start: bool) -> None:
    with ExitStack() as stack:
        client = stack.enter_context(httpx.Client(timeout=10))
        offers, partner = DEMO_OFFERS, DEMO_PARTNER
        started: list[Service] = []
        if start or not (running(offers, client) and running(partner, client)):
            print(f"starting a partner and an offer service (CIRCUIT_RESET_TIMEOUT={OWN_RESET_TIMEOUT})")
            partner_service = stack.enter_context(uvicorn_service("partner_offer_service:app"))
            env = {"PARTNER_OFFER_URL": partner_service.url, "CIRCUIT_RESET_TIMEOUT": OWN_RESET_TIMEOUT}
            offers_service = stack.enter_context(uvicorn_service("offer_service:app", env=env))
            started = [partner_service, offers_service]
            offers, partner = offers_service.url, partner_service.url
        else:
            print(f"using the running services: {offers} and {partner}")
        report.started = time.monotonic()  # the timeline starts with the first request
        try:
            tell(Story(offers, partner, client, report))
        except httpx.TransportError:
            for service in started:  # what became of them, so that the failure explains itself
                exit_code = service.process.poll() if service.process else None
                print(f"--- {service.url} (exit code {exit_code}), its log:\n{service.log()[-4000:]}")
            raise


if __name__ == "__main__":
    sys.exit(main())

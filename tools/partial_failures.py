"""Partial failures, the scenario's second part: a partner that fails some calls, or turns slow.

A partner that is down is the easy case: every policy opens. The hard ones
are a partner that fails some of its calls, and one that answers, slowly.
This part starts its own partner and two offer services side by side, both
calling that partner: one with the consecutive policy (`CIRCUIT_FAIL_MAX`
failures in a row), one with the rate policy (a share of failures, or of
slow calls, over the last `CIRCUIT_WINDOW` seconds). An open-loop load asks
both for offers at a fixed rate, whatever they answer, while the partner:

1. fails 20% of its calls at random: the consecutive circuit opens on the
   noise, several times a minute; the rate circuit never does;
2. fails 70%: the rate circuit opens within one window;
3. answers every call with a 200, after 3 s: the rate circuit opens on slow
   calls alone, with not one failure; to the consecutive circuit a slow
   answer is a success.

Each step prints a few lines with what it measured (opens per minute, time
to open) and adds its checks to the scenario's summary. Transitions are
counted from each service's `/metrics`; the time to open is when the first
answer said `X-Circuit-State: open`.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from httpx_aiohttp import AiohttpTransport
from prometheus_client.parser import text_string_to_metric_families

from service.partner_client import MAX_CONNECTIONS
from tools.processes import Service, uvicorn_service

if TYPE_CHECKING:
    from tools.scenario import Report

T = TypeVar("T")

BREAKER = "partner-offer"  # offer_service.BREAKER_NAME, the `breaker` label of its metrics
# Requests a second to each offer service. The slow partner holds every call
# for SLOW_LATENCY seconds: RATE * SLOW_LATENCY calls in flight, which must stay
# under the offer service's bulkhead (MAX_CONNECTIONS), or calls past it would
# be turned away at once ("released") instead of waiting for the partner.
RATE = 60.0
FAIL_MAX = 3  # the consecutive policy: failures in a row
WINDOW = 2.0  # the rate policy: seconds of calls it looks at...
MIN_CALLS = 20  # ...once it holds this many
FAILURE_RATE = 0.5  # opens at this share of failures
SLOW_CALL_SECONDS = 2.0  # a call this long or longer is slow...
SLOW_CALL_RATE = 0.5  # ...and this share of slow calls opens too
PARTNER_TIMEOUT = 4.0  # above the slow partner's latency: a slow call is no timeout, no failure
RESET_TIMEOUT = 1.0  # short, so that the consecutive circuit can open again and again
NOISE = 0.2  # step 1: the share of calls the partner fails at random...
# ...for this long. At RATE calls a second, the chance that no 3 of them in a
# row fail is under 1 in 2,000 (and 1 in 350 in 15 s).
NOISE_PERIOD = 20.0
HEAVY = 0.7  # step 2
SLOW_LATENCY = 3.0  # step 3: every answer a 200, after this long
# Enough connections for every request a slow partner holds, on both services, and the looks.
LOAD_CONNECTIONS = 1000
POLL = 0.1  # seconds between two looks at a circuit while waiting for something
assert RATE * SLOW_LATENCY < MAX_CONNECTIONS, "the slow step would fill the offer service's bulkhead"


def offer_env(partner_url: str, policy: str) -> dict[str, str]:
    """An offer service's settings: every one this story depends on, whatever the environment says."""
    env = {
        "PARTNER_OFFER_URL": partner_url,
        "PARTNER_TIMEOUT": str(PARTNER_TIMEOUT),
        "CIRCUIT_RESET_TIMEOUT": str(RESET_TIMEOUT),
        "CIRCUIT_HALF_OPEN_CALLS": "1",
        "CIRCUIT_POLICY": policy,
        "REDIS_URL": "",  # memory state: the two services must not share one circuit
        "LOG_LEVEL": "warning",
    }
    if policy == "consecutive":
        env["CIRCUIT_FAIL_MAX"] = str(FAIL_MAX)
    else:
        env.update(
            CIRCUIT_WINDOW=str(WINDOW),
            CIRCUIT_MIN_CALLS=str(MIN_CALLS),
            CIRCUIT_FAILURE_RATE=str(FAILURE_RATE),
            CIRCUIT_SLOW_CALL_SECONDS=str(SLOW_CALL_SECONDS),
            CIRCUIT_SLOW_CALL_RATE=str(SLOW_CALL_RATE),
        )
    return env


@dataclass(slots=True)
class Answer:
    """One `/offer` answer, as its headers tell it; times on `time.monotonic()`."""

    sent: float
    received: float
    outcome: str  # X-Call-Outcome: success, failure, not-permitted, cut-short... or "error"
    state: str  # X-Circuit-State after the call
    reason: str  # X-Fallback-Reason

    @property
    def seconds(self) -> float:
        return self.received - self.sent


@dataclass
class Side:
    """One offer service under load, and every answer it gave, in the order they arrived."""

    name: str
    url: str
    client: httpx.AsyncClient
    answers: list[Answer] = field(default_factory=list)

    def received_since(self, since: float, until: float = float("inf")) -> list[Answer]:
        start = bisect.bisect_left(self.answers, since, key=lambda answer: answer.received)
        stop = bisect.bisect_right(self.answers, until, key=lambda answer: answer.received)
        return self.answers[start:stop]

    def first_open(self, since: float) -> Answer | None:
        """The first answer since `since` that found the circuit open (or half-open)."""
        return next((a for a in self.received_since(since) if a.state not in ("closed", "")), None)

    async def circuit(self) -> dict[str, Any]:
        response = await self.client.get(f"{self.url}/offer/circuit")
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    async def opens(self) -> int:
        """How many times the circuit opened since the service started (from `/metrics`)."""
        response = await self.client.get(f"{self.url}/metrics")
        response.raise_for_status()
        return opens_in_metrics(response.text)

    async def reset(self) -> None:
        await admin(self.client, "POST", f"{self.url}/offer/circuit/reset")


def opens_in_metrics(text: str, breaker: str = BREAKER) -> int:
    """The sum of `circuit_breaker_transitions_total{breaker=..., to_state="open"}`, from any state."""
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "circuit_breaker_transitions_total"
            and sample.labels.get("breaker") == breaker
            and sample.labels.get("to_state") == "open"
        )
    )


async def admin(
    client: httpx.AsyncClient, method: str, url: str, body: dict[str, object] | None = None
) -> None:
    token = os.environ.get("ADMIN_TOKEN")  # the services inherit it: with it set, they ask for it
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.request(method, url, json=body, headers=headers)
    if response.status_code != 200:
        sys.exit(f"error: {method} {url} answered {response.status_code}: {response.text}")


class Load:
    """`rate` requests a second to each side, open loop: sent on schedule whatever the answers,
    as real clients keep coming when a service slows down. A stalled event loop skips the
    requests it missed rather than sending them in a burst."""

    MAX_LAG = 0.25

    def __init__(self, sides: list[Side], rate: float) -> None:
        self.sides = sides
        self.rate = rate
        self._drivers: list[asyncio.Task[None]] = []
        self._in_flight: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Load:
        self._drivers = [asyncio.create_task(self._drive(side)) for side in self.sides]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop sending, and drop the requests still waiting (a slow partner's)."""
        for task in [*self._drivers, *self._in_flight]:
            task.cancel()
        await asyncio.gather(*self._drivers, *self._in_flight, return_exceptions=True)

    async def _drive(self, side: Side) -> None:
        interval = 1 / self.rate
        due = time.monotonic()
        while True:
            task = asyncio.create_task(self._ask(side))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            due += interval
            now = time.monotonic()
            if now - due > self.MAX_LAG:
                due = now
            await asyncio.sleep(max(0.0, due - now))

    async def _ask(self, side: Side) -> None:
        sent = time.monotonic()
        try:
            response = await side.client.get(f"{side.url}/offer")
        except httpx.HTTPError as exc:
            side.answers.append(Answer(sent, time.monotonic(), "error", "", type(exc).__name__))
            return
        headers = response.headers
        side.answers.append(
            Answer(
                sent,
                time.monotonic(),
                headers.get("x-call-outcome", f"status-{response.status_code}"),
                headers.get("x-circuit-state", ""),
                headers.get("x-fallback-reason", ""),
            )
        )


async def until(condition: Callable[[], Awaitable[T | None]], seconds: float) -> T | None:
    """Poll `condition` every POLL seconds until it returns something, or None after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        result = await condition()
        if result or time.monotonic() >= deadline:
            return result
        await asyncio.sleep(POLL)


def shares(answers: list[Answer]) -> str:
    """`1200 answers: 71% hot, 19% failed, 10% not permitted, 2 cut-short`."""
    counts = Counter(answer.outcome for answer in answers)
    total = len(answers) or 1
    named = [("success", "hot"), ("failure", "failed"), ("not-permitted", "not permitted")]
    parts = [f"{counts.pop(outcome, 0) / total:.0%} {label}" for outcome, label in named]
    parts += [f"{count} {outcome}" for outcome, count in counts.most_common()]  # the rare others
    return f"{len(answers)} answers: {', '.join(parts)}"


@dataclass
class PartialStory:
    report: Report
    client: httpx.AsyncClient
    partner: str
    consecutive: Side
    rate: Side

    @property
    def sides(self) -> list[Side]:
        return [self.consecutive, self.rate]

    def say(self, text: str) -> None:
        print(f"{time.monotonic() - self.report.started:6.2f}s  {text}")

    async def chaos(self, **settings: object) -> None:
        """How the partner answers from now on; always an explicit 200 otherwise, whatever
        STATUS_CODE says in its file (the walkthrough has people edit it)."""
        await admin(self.client, "PUT", f"{self.partner}/chaos", {"status_code": 200, **settings})

    async def reset(self) -> None:
        await asyncio.gather(*(side.reset() for side in self.sides))

    async def rate_window(self) -> dict[str, Any]:
        window: dict[str, Any] = (await self.rate.circuit())["window"]
        return window

    async def warm_up(self) -> None:
        """A healthy partner, until the rate window holds twice its minimum of hot calls."""
        self.report.step(
            f"Partial failures: a partner and two offer services of their own, {RATE:g} requests/s to each"
        )
        print(
            f"        consecutive: opens at {FAIL_MAX} failures in a row. rate: opens at "
            f"{FAILURE_RATE:.0%} failures or {SLOW_CALL_RATE:.0%} slow calls (>= {SLOW_CALL_SECONDS:g} s) "
            f"over {WINDOW:g} s, from {MIN_CALLS} calls.\n        Both: PARTNER_TIMEOUT={PARTNER_TIMEOUT:g}, "
            f"CIRCUIT_RESET_TIMEOUT={RESET_TIMEOUT:g}"
        )
        started = time.monotonic()

        async def filled() -> dict[str, Any] | None:
            window = await self.rate_window()
            return window if window["calls"] >= 2 * MIN_CALLS and not window["failures"] else None

        window = await until(filled, WINDOW * 3)
        hot = {
            side.name: sum(a.outcome == "success" for a in side.received_since(started))
            for side in self.sides
        }
        self.say(
            f"a healthy partner: {hot['consecutive']} hot answers from consecutive, {hot['rate']} from "
            f"rate, whose window holds {window['calls'] if window else '?'} calls, none failed"
        )
        self.report.check(
            "partial failures: a healthy partner under load gives hot offers on both services",
            window is not None and all(hot.values()),
        )

    async def noise(self) -> None:
        """Step 1: NOISE of calls fail at random, for NOISE_PERIOD seconds."""
        self.report.step(
            f"The partner fails {NOISE:.0%} of calls at random: how often does each circuit open "
            f"in {NOISE_PERIOD:g} s?"
        )
        before = await asyncio.gather(*(side.opens() for side in self.sides))
        await self.chaos(failure_rate=NOISE)
        started = time.monotonic()
        failure_rates: list[float] = []
        while (now := time.monotonic()) < started + NOISE_PERIOD:
            window = await self.rate_window()
            if now >= started + WINDOW and window["failure_rate"] is not None:
                failure_rates.append(window["failure_rate"])  # a window's worth of noise in it
            await asyncio.sleep(min(0.25, max(0.0, started + NOISE_PERIOD - now)))
        after = await asyncio.gather(*(side.opens() for side in self.sides))
        period = time.monotonic() - started
        opened = {side.name: end - start for side, start, end in zip(self.sides, before, after, strict=True)}
        for side in self.sides:
            per_minute = opened[side.name] / period * 60
            self.say(
                f"{side.name:11} opened {opened[side.name]:2} times in {period:.1f} s = "
                f"{per_minute:4.1f} opens/min; {shares(side.received_since(started))}"
            )
        turned_away = [a for a in self.consecutive.received_since(started) if a.outcome == "not-permitted"]
        print(
            f"        consecutive turned away {len(turned_away)} requests, for a partner that answers "
            f"{1 - NOISE:.0%} of calls"
        )
        if failure_rates:
            print(
                f"        the rate window's failure rate stayed between {min(failure_rates):.0%} and "
                f"{max(failure_rates):.0%} (it opens at {FAILURE_RATE:.0%})"
            )
        self.report.check(
            f"{NOISE:.0%} failures at random: the consecutive circuit opens on the noise",
            opened["consecutive"] >= 1,
        )
        self.report.check(
            f"{NOISE:.0%} failures at random: the rate circuit stays closed", opened["rate"] == 0
        )

    async def heavy(self) -> None:
        """Step 2: HEAVY of calls fail; the rate circuit opens within a window."""
        self.report.step(f"The partner fails {HEAVY:.0%} of calls: the rate circuit opens within one window")
        await self.reset()
        changed = time.monotonic()
        await self.chaos(failure_rate=HEAVY)

        async def rate_opened() -> Answer | None:
            return self.rate.first_open(changed)

        rate_open = await until(rate_opened, WINDOW + 5)
        consecutive_open = self.consecutive.first_open(changed)
        for side, answer in (("rate", rate_open), ("consecutive", consecutive_open)):
            when = f"opened {answer.received - changed:.2f} s after the change" if answer else "did not open"
            self.say(f"{side:11} {when}")
        print(
            f"        one window is {WINDOW:g} s: the rate policy waits for failures to fill enough of it; "
            f"consecutive for {FAIL_MAX} in a row"
        )
        self.report.check(
            f"{HEAVY:.0%} failures: the rate circuit opens within one window ({WINDOW:g} s)",
            rate_open is not None and rate_open.received - changed <= WINDOW,
        )

    async def slow(self) -> None:
        """Step 3: every answer a 200 after SLOW_LATENCY s; the rate circuit opens on slow calls."""
        self.report.step(
            f"The partner turns slow: every answer a 200, after {SLOW_LATENCY:g} s "
            f"(timeout {PARTNER_TIMEOUT:g} s, slow from {SLOW_CALL_SECONDS:g} s)"
        )
        await self.chaos()
        await self.reset()
        healed = time.monotonic()

        async def clean() -> dict[str, Any] | None:
            window = await self.rate_window()
            return window if window["calls"] >= MIN_CALLS and not window["failures"] else None

        window = await until(clean, WINDOW + 5)
        self.say(
            f"healed and reset first: the rate window holds {window['calls'] if window else '?'} "
            f"calls, no failure, after {time.monotonic() - healed:.2f} s"
        )
        before = await self.consecutive.opens()
        changed = time.monotonic()
        await self.chaos(latency=SLOW_LATENCY)
        looks: list[dict[str, Any]] = []  # the rate window, closed, once it holds a slow call

        async def rate_opened() -> Answer | None:
            circuit = await self.rate.circuit()
            if circuit["current_state"] == "closed" and circuit["window"]["slow_calls"]:
                looks.append(circuit["window"])
            return self.rate.first_open(changed)

        rate_open = await until(rate_opened, SLOW_LATENCY + WINDOW + 5)
        opened_at = rate_open.received if rate_open else time.monotonic()

        async def consecutive_slow() -> list[Answer] | None:
            slow = [a for a in self.consecutive.received_since(changed) if a.seconds >= SLOW_CALL_SECONDS]
            return slow if len(slow) >= MIN_CALLS else None

        slow_answers = await until(consecutive_slow, SLOW_LATENCY + 5) or []
        consecutive_opened = await self.consecutive.opens() - before
        # Every call sent once the partner was healed and the circuit reset, answered before the open.
        failed = [
            a
            for a in self.rate.received_since(healed, opened_at)
            if a.sent >= healed and a.outcome == "failure"
        ]
        cut_short = [a for a in self.rate.received_since(opened_at) if a.outcome == "cut-short"]
        if rate_open is None:
            self.say(f"rate        did not open in {time.monotonic() - changed:.1f} s")
        else:
            reasons = f" ({', '.join(sorted({a.reason for a in failed}))})" if failed else ""
            self.say(
                f"rate        opened {opened_at - changed:.2f} s after the change: "
                f"{len(failed)} failed calls before the open{reasons}"
            )
            if looks:
                last = looks[-1]
                print(
                    f"        its window, last seen closed: {last['calls']} calls, {last['slow_calls']} slow, "
                    f"{last['failures']} failed"
                )
            print(
                f"        {len(cut_short)} calls still waiting on the partner were cut short, answered at once"
            )
        hot = sum(a.outcome == "success" for a in slow_answers)
        self.say(
            f"consecutive opened {consecutive_opened} times; {len(slow_answers)} slow answers, "
            f"{hot} of them hot: to it a slow answer is a success"
        )
        self.report.check("a slow partner: the rate circuit opens", rate_open is not None)
        self.report.check(
            "a slow partner: the rate circuit opens on slow calls alone, not one failure",
            rate_open is not None and not failed and all(look["failures"] == 0 for look in looks),
        )
        self.report.check(
            "a slow partner: the consecutive circuit stays closed",
            consecutive_opened == 0 and len(slow_answers) >= MIN_CALLS,
        )


async def _tell(report: Report, partner: str, offers: Mapping[str, str]) -> None:
    # On aiohttp's pool, as the offer service's own client (service/partner_client.py): httpx's
    # took seconds of CPU to look through its connections once a slow partner held hundreds.
    limits = httpx.Limits(max_connections=LOAD_CONNECTIONS, max_keepalive_connections=LOAD_CONNECTIONS)
    transport = AiohttpTransport(limits=limits, trust_env=False)
    async with httpx.AsyncClient(transport=transport, timeout=PARTNER_TIMEOUT + 6, trust_env=False) as client:
        sides = [Side(name, url, client) for name, url in offers.items()]
        story = PartialStory(report, client, partner, *sides)
        await story.chaos()
        await story.reset()
        async with Load(sides, RATE):
            await story.warm_up()
            await story.noise()
            await story.heavy()
            await story.slow()
            await story.chaos()


@dataclass(frozen=True)
class Services:
    partner: str
    offers: dict[str, str]  # policy: URL


def start(stack: ExitStack) -> Services:
    """A partner and two offer services on free ports, started side by side, stopped by `stack`.

    Stopped with SIGKILL: at the end they hold nothing but calls to a partner that
    was slow, which a graceful stop would wait out."""
    partner = uvicorn_service(
        "partner_offer_service:app", env={"PARTNER_LATENCY": "0", "LOG_LEVEL": "warning"}
    )
    offers = {
        policy: uvicorn_service("offer_service:app", env=offer_env(partner.url, policy))
        for policy in ("consecutive", "rate")
    }
    services = [partner, *offers.values()]
    for service in services:
        stack.callback(service.stop, signal.SIGKILL)
    with ThreadPoolExecutor(len(services)) as pool:
        list(pool.map(Service.start, services))
    return Services(partner.url, {policy: service.url for policy, service in offers.items()})


def tell(report: Report, services: Services) -> None:
    """The partial failures on `services` (from `start`); the checks go into `report`."""
    asyncio.run(_tell(report, services.partner, services.offers))

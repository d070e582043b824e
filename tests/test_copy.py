"""`circuit_breaker.py` copied alone: into a fresh virtualenv with only pybreaker, as a new user
would, and each trap a copy into production would meet, checked here too (in this process, so
a mutation of the module is caught by a fast test)."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import shutil
import subprocess
import types
import venv
from collections.abc import Generator
from pathlib import Path

import pybreaker
import pytest

import circuit_breaker
from circuit_breaker import (
    RATE_POLICY_FAIL_MAX,
    AsyncCircuitBreaker,
    CutShort,
    NotPermitted,
    RatePolicy,
    TrialExpired,
)
from tests.breakers import CIRCUIT, PATIENCE, eventually
from tests.conftest import Fleet
from tests.fake_clock import FakeClock
from tests.partner_stand_ins import PartnerDown, fail, ok

PROJECT_DIR = Path(__file__).resolve().parent.parent
BOUND = PATIENCE  # every wait on the shared state: tests/breakers.py says why


@pytest.mark.timeout(120)
def test_the_module_copied_alone_beside_pybreaker_runs_the_copy_example_and_avoids_each_trap(
    tmp_path: Path,
) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)  # no network: pybreaker is copied in
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    shutil.copytree(Path(pybreaker.__file__).parent, site / "pybreaker")
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(PROJECT_DIR / "circuit_breaker.py", project)
    shutil.copy(PROJECT_DIR / "tests" / "copy_example.py", project)
    run = subprocess.run(
        [python, "-X", "dev", "-W", "error::RuntimeWarning", "copy_example.py"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok the module needs nothing but pybreaker" in run.stdout
    assert "never awaited" not in run.stderr


# 1. No state is held forever on the caller's good behaviour.


def breaker_on(clock: FakeClock, fail_max: int = 1) -> AsyncCircuitBreaker:
    return AsyncCircuitBreaker(pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=15), clock=clock)


async def half_open_trial(breaker: AsyncCircuitBreaker, clock: FakeClock) -> object:
    breaker.trip()
    clock.advance(15)
    permit = await breaker.admit()
    assert permit.is_trial
    return permit


async def test_an_unreported_trial_keeps_its_place_until_max_trial_seconds() -> None:
    clock = FakeClock()
    breaker = breaker_on(clock)
    permit = await half_open_trial(breaker, clock)
    clock.advance(breaker.max_trial_seconds - 0.001)
    with pytest.raises(NotPermitted, match="trial-in-flight"):
        await breaker.admit()
    del permit


async def test_an_unreported_trial_counts_as_a_failure_after_max_trial_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    breaker = breaker_on(clock)
    heard: list[BaseException] = []

    class Failures(pybreaker.CircuitBreakerListener):
        def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
            heard.append(exc)

    breaker.add_listener(Failures())
    permit = await half_open_trial(breaker, clock)
    clock.advance(breaker.max_trial_seconds)
    with (
        caplog.at_level(logging.WARNING, logger="circuit_breaker"),
        pytest.raises(NotPermitted, match="circuit-open"),
    ):
        await breaker.admit()
    assert breaker.state == "open" and breaker.seconds_until_trial() == pytest.approx(15)
    assert [type(error) for error in heard] == [TrialExpired]
    assert "reported no outcome within 60s" in caplog.text
    permit.success()  # type: ignore[attr-defined]  # too late: from an earlier state
    assert breaker.state == "open"
    clock.advance(15)
    assert await breaker.call(ok) == "hot"
    assert breaker.state == "closed"


def test_max_trial_seconds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_trial_seconds"):
        AsyncCircuitBreaker(pybreaker.CircuitBreaker(), max_trial_seconds=0)


async def test_a_trials_permit_collected_unreported_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    breaker = breaker_on(clock)
    with caplog.at_level(logging.WARNING, logger="circuit_breaker"):
        for _ in range(3):
            await half_open_trial(breaker, clock)  # dropped on the floor
            clock.advance(breaker.max_trial_seconds)
        gc.collect()
        reported = await half_open_trial(breaker, clock)
        reported.success()  # type: ignore[attr-defined]
        del reported
    assert caplog.text.count("a trial's permit was dropped without success(), failure() or release()") == 1


# 2. A rate policy cannot trip on failures in a row.


def test_a_rate_policy_on_pybreakers_default_fail_max_is_refused_naming_what_to_write() -> None:
    with pytest.raises(ValueError, match=r"fail_max=RATE_POLICY_FAIL_MAX"):
        AsyncCircuitBreaker(pybreaker.CircuitBreaker(), policy=RatePolicy(min_calls=100))
    AsyncCircuitBreaker(pybreaker.CircuitBreaker(fail_max=RATE_POLICY_FAIL_MAX), policy=RatePolicy())


# 3. Two steps cut short: `async with breaker.calling():`.


async def test_a_block_under_calling_is_cut_short_when_the_circuit_opens() -> None:
    breaker = breaker_on(FakeClock())
    inside = asyncio.Event()

    async def block() -> None:
        async with breaker.calling() as permit:
            assert not permit.is_trial
            inside.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(block())
    await asyncio.wait_for(inside.wait(), BOUND)
    breaker.trip()
    with pytest.raises(CutShort):
        await asyncio.wait_for(task, BOUND)
    assert not breaker._waiting


async def test_a_block_under_calling_records_success_failure_and_exclusion() -> None:
    breaker = AsyncCircuitBreaker(pybreaker.CircuitBreaker(fail_max=2, exclude=[KeyError]))
    with pytest.raises(PartnerDown):
        async with breaker.calling():
            raise PartnerDown()
    assert breaker.fail_counter == 1
    with pytest.raises(KeyError):
        async with breaker.calling():
            raise KeyError("a no from a healthy dependency")
    assert breaker.fail_counter == 0  # excluded: a success
    with pytest.raises(PartnerDown):
        async with breaker.calling():
            raise PartnerDown()
    async with breaker.calling():
        pass
    assert breaker.fail_counter == 0 and breaker.state == "closed"


async def test_a_cancelled_trial_under_calling_frees_its_place() -> None:
    clock = FakeClock()
    breaker = breaker_on(clock)
    breaker.trip()
    clock.advance(15)
    inside = asyncio.Event()

    async def block() -> None:
        async with breaker.calling():
            inside.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(block())
    await asyncio.wait_for(inside.wait(), BOUND)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not breaker.trial_in_flight and breaker.state == "half-open"
    assert await breaker.call(ok) == "hot"


async def test_calling_refused_raises_not_permitted_without_running_the_block() -> None:
    breaker = breaker_on(FakeClock())
    breaker.trip()
    ran = False
    with pytest.raises(NotPermitted, match="circuit-open"):
        async with breaker.calling():
            ran = True
    assert not ran


# 4. pybreaker's calling convention; what cannot work refused with what to write.


async def test_call_passes_positional_and_keyword_arguments_as_pybreaker_does() -> None:
    breaker = breaker_on(FakeClock())

    async def greet(who: str, *, greeting: str) -> str:
        return f"{greeting} {who}"

    assert await breaker.call(greet, "you", greeting="hi") == "hi you"


async def test_a_coroutine_object_is_refused_before_anything_is_counted() -> None:
    breaker = breaker_on(FakeClock())
    with pytest.raises(TypeError, match=r"breaker\.call\(fetch, arg\)"):
        await breaker.call(ok())  # type: ignore[arg-type]
    assert breaker.state == "closed" and breaker.fail_counter == 0


async def test_the_decorator_refuses_a_plain_def_saying_what_to_write_and_takes_any_async_callable() -> None:
    breaker = breaker_on(FakeClock())
    with pytest.raises(TypeError, match="async def"):

        @breaker
        def plain() -> str:
            return "hot"

    class Fetch:
        async def __call__(self) -> str:
            return "hot"

    assert await breaker(Fetch())() == "hot"


async def test_a_function_returning_no_awaitable_is_refused_and_not_counted() -> None:
    breaker = breaker_on(FakeClock())
    with pytest.raises(TypeError, match="not a coroutine function"):
        await breaker.call(lambda: "hot")  # type: ignore[arg-type,return-value]
    assert breaker.state == "closed" and breaker.fail_counter == 0
    assert await breaker.call(ok) == "hot"  # the permit went back


# 5. A fallback, on call and on the decorator.


async def test_a_fallback_answers_a_failure_a_refusal_and_a_cut_short_call() -> None:
    breaker = breaker_on(FakeClock())
    seen: list[type[BaseException]] = []

    def cold(exc: Exception) -> str:
        seen.append(type(exc))
        return "cold"

    assert await breaker.call(fail, fallback=cold) == "cold"
    assert breaker.state == "open"  # the failure was counted
    assert await breaker.call(ok, fallback=cold) == "cold"
    breaker.reset()
    inside = asyncio.Event()

    async def slow() -> str:
        inside.set()
        await asyncio.sleep(30)
        return "hot"

    task = asyncio.create_task(breaker.call(slow, fallback=cold))
    await asyncio.wait_for(inside.wait(), BOUND)
    breaker.trip()
    assert await asyncio.wait_for(task, BOUND) == "cold"
    assert seen == [PartnerDown, NotPermitted, CutShort]


async def test_an_async_fallback_is_awaited_and_the_decorator_takes_one() -> None:
    breaker = breaker_on(FakeClock())

    async def cold(exc: Exception) -> str:
        return f"cold after {type(exc).__name__}"

    @breaker(fallback=cold)
    async def fetch(fail_it: bool) -> str:
        if fail_it:
            raise PartnerDown()
        return "hot"

    assert await fetch(False) == "hot"
    assert await fetch(True) == "cold after PartnerDown"
    assert await fetch(False) == "cold after NotPermitted"


class Later:
    """An awaitable that is not a coroutine: an object with `__await__`, answering `value`."""

    def __init__(self, value: str) -> None:
        self.value = value

    def __await__(self) -> Generator[None, None, str]:
        if False:
            yield
        return self.value


async def test_a_fallbacks_answer_is_awaited_exactly_when_it_is_awaitable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Awaited: a coroutine, an object with `__await__`, a generator-based coroutine.
    Returned as it is: anything else, a plain generator too, although it has the same type
    as a generator-based coroutine (answered in turn, so a remembered type would mix them)."""

    @types.coroutine
    def generator_coroutine() -> Generator[None, None, str]:
        if False:
            yield
        return "awaited generator"

    def plain_generator() -> Generator[str, None, None]:
        yield "item"

    async def coroutine() -> str:
        return "awaited coroutine"

    monkeypatch.setattr(circuit_breaker, "_AWAITABLE_TYPES", {})  # nothing remembered from other tests
    answers = iter(
        [
            generator_coroutine(),
            plain_generator(),
            Later("awaited later"),
            coroutine(),
            plain_generator(),
            "cold",
        ]
    )
    breaker = breaker_on(FakeClock())
    breaker.trip()
    results = [await breaker.call(ok, fallback=lambda _: next(answers)) for _ in range(6)]
    assert [r if isinstance(r, str) else inspect.isgenerator(r) for r in results] == [
        "awaited generator",
        True,
        "awaited later",
        "awaited coroutine",
        True,
        "cold",
    ]


async def test_the_types_remembered_for_fallback_answers_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A program that makes a class as it runs does not grow the breaker's memory with it."""
    # A dict of this test's own: filled up, the process's would remember nothing for the
    # tests after this one.
    monkeypatch.setattr(circuit_breaker, "_AWAITABLE_TYPES", {})
    breaker = breaker_on(FakeClock())
    breaker.trip()
    for number in range(circuit_breaker._AWAITABLE_TYPES_KEPT + 50):
        answer = type(f"Answer{number}", (), {})()
        assert await breaker.call(ok, fallback=lambda _, answer=answer: answer) is answer
    assert len(circuit_breaker._AWAITABLE_TYPES) == circuit_breaker._AWAITABLE_TYPES_KEPT


async def test_a_function_returning_another_kind_of_awaitable_is_awaited_and_counted() -> None:
    """A coroutine is the usual answer of a guarded function, not the only one: a Future, or
    an object with `__await__`, is awaited the same way and its outcome counted."""
    loop = asyncio.get_running_loop()

    def settled(result: str | Exception) -> asyncio.Future[str]:
        future: asyncio.Future[str] = loop.create_future()
        if isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)
        return future

    breaker = breaker_on(FakeClock())
    assert await breaker.call(settled, "from a future") == "from a future"
    assert await breaker.call(Later, "later") == "later"
    with pytest.raises(PartnerDown):
        await breaker.call(settled, PartnerDown())
    assert breaker.fail_counter == 1


async def test_a_fallback_does_not_hide_an_excluded_or_not_counted_error() -> None:
    class Mine(Exception):
        pass

    breaker = AsyncCircuitBreaker(pybreaker.CircuitBreaker(exclude=[KeyError]), not_counted=(Mine,))

    async def declined() -> str:
        raise KeyError("no")

    async def broken() -> str:
        raise Mine()

    with pytest.raises(KeyError):
        await breaker.call(declined, fallback=lambda exc: "cold")
    with pytest.raises(Mine):
        await breaker.call(broken, fallback=lambda exc: "cold")


# 6. A hand on pybreaker's own state machine, with the fleet's state in Redis.


async def test_a_hand_open_of_the_state_machine_opens_the_fleets_circuit(fleet: Fleet) -> None:
    first, second = await fleet(), await fleet()
    forced: list[str] = []
    assert first.shared is not None
    real_force = first.shared.force
    first.shared.force = lambda state: (forced.append(state), real_force(state))  # type: ignore[method-assign]
    for _ in range(3):  # the breaker's own opens are the fleet's to judge: never forced
        with pytest.raises((PartnerDown, NotPermitted)):
            await first.call(fail)
    await eventually(lambda: second.state == "open", within=BOUND, what="the trip heard")
    assert forced == []
    first.reset()
    await eventually(lambda: second.state == "closed", within=BOUND, what="the reset heard")
    first.state_machine.open()
    await eventually(lambda: second.state == "open", within=BOUND, what="the hand open heard by the fleet")
    assert first.state == "open"
    with pytest.raises(NotPermitted, match="circuit-open"):
        await first.call(ok)


async def test_with_redis_an_unreported_trial_frees_the_fleets_trial_after_max_trial_seconds(
    fleet: Fleet, redis_client: object
) -> None:
    clock = FakeClock()
    breaker = await fleet(clock=clock, circuit_reset_timeout=0.2)
    breaker.trip()
    await eventually(
        lambda: redis_client.hget(CIRCUIT, "state") == b"open",  # type: ignore[attr-defined]
        within=BOUND,
        what="the trip written",
    )
    clock.advance(1)

    async def trial() -> object:
        while True:  # Redis's clock decides when the reset timeout is over
            try:
                return await breaker.admit()
            except NotPermitted:  # this instance measures the open period on the fake clock
                clock.advance(0.1)
                await asyncio.sleep(0.01)

    permit = await asyncio.wait_for(trial(), BOUND)
    assert permit.is_trial  # type: ignore[attr-defined]
    with pytest.raises(NotPermitted, match="trial-in-flight"):
        await breaker.admit()
    clock.advance(breaker.max_trial_seconds + 1)
    second = await asyncio.wait_for(trial(), BOUND)
    second.success()  # type: ignore[attr-defined]
    assert breaker.state == "closed"
    await eventually(
        lambda: redis_client.hget(CIRCUIT, "state") == b"closed",  # type: ignore[attr-defined]
        within=BOUND,
        what="the fleet's circuit closed",
    )
    del permit

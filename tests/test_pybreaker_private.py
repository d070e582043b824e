"""The pybreaker private names `circuit_breaker.py` relies on, checked one by one.

They were read in pybreaker 1.4.1. A release that renames one or changes what
it does fails here, with the name, before any subtler test fails somewhere else.
"""

from __future__ import annotations

import importlib.metadata
import inspect

import pybreaker
import pytest

import circuit_breaker

CHECKED_AGAINST = "1.4.1"


def machine(**kwargs: object) -> pybreaker.CircuitBreaker:
    return pybreaker.CircuitBreaker(fail_max=2, reset_timeout=60, **kwargs)  # type: ignore[arg-type]


def test_the_installed_pybreaker_is_the_one_checked() -> None:
    installed = importlib.metadata.version("pybreaker")
    assert installed == CHECKED_AGAINST, (
        f"pybreaker {installed} is installed; circuit_breaker.py's private names were checked against "
        f"{CHECKED_AGAINST}: run this file, then update CHECKED_AGAINST and the module's comment"
    )


def test_the_state_object_is_read_without_a_refresh_from_the_storage() -> None:
    breaker = machine()
    state = circuit_breaker._state_object(breaker)
    assert isinstance(state, pybreaker.CircuitClosedState)
    breaker._state_storage.state = pybreaker.STATE_OPEN  # a change the storage heard elsewhere
    assert circuit_breaker._state_object(breaker) is state, "_state must not refresh"
    assert breaker.state is not state  # the public property does


def test_the_storage_is_the_one_given() -> None:
    storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
    assert circuit_breaker._storage(machine(state_storage=storage)) is storage


def test_the_memory_storage_keeps_its_state_in_its_state_field() -> None:
    """Read directly on every call, without the `state` property's call."""
    storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
    assert storage._state == pybreaker.STATE_CLOSED
    storage.state = pybreaker.STATE_OPEN
    assert storage._state == pybreaker.STATE_OPEN
    assert type(storage).state.fget(storage) == pybreaker.STATE_OPEN  # type: ignore[attr-defined]


def test_the_listeners_are_a_list_that_add_listener_changes() -> None:
    """Compared on every call with the list last classified: `add_listener` must change it."""
    breaker = machine()
    seen = list(breaker._listeners)
    listener = pybreaker.CircuitBreakerListener()
    breaker.add_listener(listener)
    assert isinstance(breaker._listeners, list)
    assert breaker._listeners != seen and breaker._listeners[-1] is listener


def test_a_failure_is_counted_and_trips_at_fail_max_without_raising() -> None:
    breaker = machine()
    circuit_breaker._count_failure(breaker.state, ValueError("down"))
    assert breaker.fail_counter == 1
    circuit_breaker._count_failure(breaker.state, ValueError("down"))
    assert breaker.current_state == pybreaker.STATE_OPEN


def test_an_excluded_error_counts_as_a_success() -> None:
    breaker = machine(exclude=[KeyError])
    circuit_breaker._count_failure(breaker.state, ValueError("down"))
    circuit_breaker._count_failure(breaker.state, KeyError("no"))
    assert breaker.fail_counter == 0


def test_a_success_resets_the_count_and_closes_a_half_open_circuit() -> None:
    breaker = machine()
    circuit_breaker._count_failure(breaker.state, ValueError("down"))
    circuit_breaker._count_success(breaker.state)
    assert breaker.fail_counter == 0
    breaker.half_open()
    circuit_breaker._count_success(breaker.state)
    assert breaker.current_state == pybreaker.STATE_CLOSED


@pytest.mark.parametrize(
    ("owner", "name", "parameters"),
    [
        (pybreaker.CircuitBreakerState, "_handle_error", ["self", "exc", "reraise"]),
        (pybreaker.CircuitBreakerState, "_handle_success", ["self"]),
    ],
)
def test_the_handlers_keep_their_signatures(owner: type, name: str, parameters: list[str]) -> None:
    assert list(inspect.signature(getattr(owner, name)).parameters) == parameters

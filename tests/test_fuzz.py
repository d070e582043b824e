"""schemathesis against both services' OpenAPI documents: no 5xx, no answer that breaks its schema.

Run through schemathesis's own command line, with every check it has.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.processes import Service, uvicorn_service

# One run of schemathesis: 14 s to 27 s of one process's CPU at a load average of 11, and it
# shares the machine with the other workers; its own limit ends it first, with its output.
pytestmark = pytest.mark.timeout(180)
FUZZ_SECONDS = 150
TOKEN = "fuzz-token-0123456789abcdef"
SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")


@pytest.fixture(scope="module")
def partner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    log_dir = tmp_path_factory.mktemp("fuzz")
    with uvicorn_service("partner_offer_service:app", env={"ADMIN_TOKEN": TOKEN}, log_dir=log_dir) as service:
        yield service


@pytest.fixture(scope="module")
def offers(partner: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    # Short enough that a partner the fuzzer made hang costs a few seconds before the circuit
    # opens; long enough that the chaos relay's own calls answer on a loaded machine (at 0.5 s
    # one timed out: a 502, which schemathesis counts as a server error).
    env = {"PARTNER_OFFER_URL": partner.url, "ADMIN_TOKEN": TOKEN, "PARTNER_TIMEOUT": "3"}
    with uvicorn_service("offer_service:app", env=env, log_dir=tmp_path_factory.mktemp("fuzz")) as service:
        yield service


def fuzz(service: Service, *extra: str) -> None:
    result = subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            f"{service.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "50",
            "--request-timeout",
            "10",
            "--exclude-path",
            "/offer/circuit/events",
            "--seed",  # the same examples in every run, so CI is repeatable
            "1",
            "--generation-database",  # and nothing written into the working tree
            "none",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS,
    )
    assert result.returncode == 0, result.stdout[-6000:]
    assert " passed" in result.stdout


def test_the_partner_answers_every_request_within_its_schema(partner: Service) -> None:
    # Without the token: the chaos controls answer their documented 401, and the
    # fuzzer cannot make the partner hang the requests that follow.
    fuzz(partner)


def test_the_offer_service_answers_every_request_within_its_schema(offers: Service) -> None:
    fuzz(offers)


def test_the_offer_services_admin_routes_hold_with_the_token(offers: Service) -> None:
    # With the token: forcing the circuit and any chaos the fuzzer invents
    # (a hanging partner included) still give schema-conformant answers.
    fuzz(offers, "--header", f"Authorization: Bearer {TOKEN}")

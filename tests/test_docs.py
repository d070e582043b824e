"""What the READMEs and docs/ show is what the services do: the walkthrough's commands are run
against real processes and their outputs compared, and the commands, settings, files, links and
`/offer/circuit` keys they name exist."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from offer_service import create_app
from service.circuit_routes import CircuitStatus
from service.settings import OfferSettings, PartnerSettings
from tools.processes import PROJECT_DIR, EditablePartner, Service, script_service, uvicorn_service, wait_for

ENGLISH = (PROJECT_DIR / "README.md").read_text()
PORTUGUESE = (PROJECT_DIR / "README.pt-BR.md").read_text()
DOCS = sorted((PROJECT_DIR / "docs").glob("*.md"))
PAGES = [
    PROJECT_DIR / "README.md",
    PROJECT_DIR / "README.pt-BR.md",
    PROJECT_DIR / "tools/bench/README.md",
    *DOCS,
]
BREAKER_PAGE = (PROJECT_DIR / "docs/breaker.md").read_text()
OPERATIONS_PAGE = (PROJECT_DIR / "docs/operations.md").read_text()

# A file the text names: under one of the project's folders, or a name with a file's extension.
# Not preceded by `/` or `:` (URLs and URL paths like `/openapi.json`), not followed by `*` (globs).
FILE_PATH = re.compile(
    r"(?<![\w/.:-])"
    r"((?:\.ci|service|tools|tests|docs)/[\w./-]*|[\w.-]+(?:/[\w.-]+)*\.(?:py|md|png|json|toml|txt|css|js|html|svg))"
    r"(?![\w/*-])"
)
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE_BLOCK = re.compile(r"```([a-z]*)\n(.*?)\n```", re.DOTALL)

# The walkthrough is read in five minutes: 25 KB is about 3,500 words.
README_MAX_BYTES = 25_000
RESET_TIMEOUT = 2.0  # the walkthrough's `sleep 15` waits this out instead


def section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end)]


WALKTHROUGH = section(ENGLISH, "## The walkthrough", "## The dashboard")
PASSO_A_PASSO = section(PORTUGUESE, "## Passo a passo", "## O painel")


def code_blocks(text: str) -> list[tuple[str, str]]:
    return CODE_BLOCK.findall(text)


def table_after(text: str, heading: str) -> list[list[str]]:
    """The rows, split into cells, of the first table after `heading`, without its header."""
    lines = text[text.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:  # past the header and its |---| line
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


# --- The walkthrough, run -------------------------------------------------------------------


@pytest.fixture
def demo(editable_partner: EditablePartner) -> Iterator[tuple[EditablePartner, Service]]:
    """The two services as the walkthrough starts them: `python offer_service.py`, debug logs."""
    env = {
        "PARTNER_OFFER_URL": editable_partner.url,
        "CIRCUIT_RESET_TIMEOUT": str(RESET_TIMEOUT),
        "LOG_LEVEL": "debug",
        "HTTPX_LOG_LEVEL": "debug",
    }
    with script_service(editable_partner.cwd, "offer_service.py", env) as offers:
        yield editable_partner, offers


def normal_output(text: str) -> list[str]:
    """What does not vary between runs: offers without their clock, no `date` header."""
    text = re.sub(r"(Hot offer|Cold offer fallback) \d\d:\d\d", r"\1 MM:SS", text.replace("\r", ""))
    return [line for line in text.splitlines() if not line.lower().startswith("date:")]


def circuit_shape(body: dict[str, Any]) -> dict[str, Any]:
    """An `/offer/circuit` answer with the values a run decides reduced to their kind: a time is
    a time or null, the reset timeout a number (the test's is short)."""
    shaped = dict(body)
    shaped["reset_timeout"] = type(body["reset_timeout"]).__name__
    for key in ("opened_at", "seconds_until_trial"):
        shaped[key] = None if body[key] is None else type(body[key]).__name__
    return shaped


def assert_same_output(command: str, shown: list[str], got: list[str]) -> None:
    assert len(shown) == len(got), f"{command}: the README shows\n{shown}\nthe service answers\n{got}"
    for shown_line, got_line in zip(shown, got, strict=True):
        if shown_line.startswith('{"name"'):
            shown_body, got_body = json.loads(shown_line), json.loads(got_line)
            assert list(shown_body) == list(got_body), f"{command}: keys differ, got {got_line}"
            assert circuit_shape(shown_body) == circuit_shape(got_body), f"{command}: got {got_line}"
        else:
            assert shown_line == got_line, f"{command}: the README shows {shown_line!r}, got {got_line!r}"


def commands(block: str) -> Iterator[tuple[str, list[str]]]:
    """Each `$ command` of a console block with the output shown under it."""
    command: str | None = None
    output: list[str] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            if command is not None:
                yield command, output
            command, output = line[2:], []
        else:
            output.append(line)
    if command is not None:
        yield command, output


def run(command: str, partner: Service, offers: Service | None = None) -> list[str]:
    """The command as a reader types it, against the test's services on their free ports."""
    if offers is not None:
        command = command.replace("localhost:8001", f"127.0.0.1:{offers.port}")
    command = command.replace("localhost:8000", f"127.0.0.1:{partner.port}")
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30, check=True)
    return normal_output(done.stdout)


def wait_for_the_trial(offers: Service) -> None:
    """`sleep 15`: until the open circuit lets the next request through as its trial."""

    def due() -> bool:
        left = offers.get("/offer/circuit").json()["seconds_until_trial"]
        return left is not None and left <= 0

    wait_for(due, timeout=RESET_TIMEOUT + 10, interval=0.05, what="the reset timeout to pass")


def normal_log_line(line: str) -> str:
    line = re.sub(r"^\w+\.\d+\s+\| ", "", line)  # honcho's `offer.1   | `
    line = re.sub(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\]", "[TIME]", line)
    return re.sub(r"http://127\.0\.0\.1:\d+", "http://127.0.0.1:PORT", line)


def assert_logged_in_order(shown: str, log: list[str], cursor: int) -> int:
    """Each line shown, found in the log after `cursor` and after the line before it."""
    for line in shown.splitlines():
        wanted = normal_log_line(line)
        found = next((i for i in range(cursor, len(log)) if log[i] == wanted), None)
        assert found is not None, f"the README shows {line!r}; the log after line {cursor} has no {wanted!r}"
        cursor = found + 1
    return cursor


@pytest.mark.timeout(120)
def test_the_walkthrough_shows_what_the_services_answer_and_log(
    demo: tuple[EditablePartner, Service],
) -> None:
    """Every command of the walkthrough run in order against the services, as a reader would:
    its headers, bodies, `/offer/circuit` keys and states, and the log lines shown."""
    partner, offers = demo
    log_cursor = 0
    ran = 0
    for language, block in code_blocks(WALKTHROUGH):
        if language == "python":
            partner.set_status(int(re.fullmatch(r"STATUS_CODE = (\d+)", block.strip())[1]))  # type: ignore[index]
        elif language == "console" and block.startswith("$ "):
            for command, shown in commands(block):
                if command.startswith("sleep "):
                    wait_for_the_trial(offers)
                else:
                    assert_same_output(
                        command, normal_output("\n".join(shown)), run(command, partner, offers)
                    )
                ran += 1
        elif language == "":
            log = [normal_log_line(line) for line in offers.log().splitlines()]
            log_cursor = assert_logged_in_order(block, log, log_cursor)
    assert ran >= 10, "the walkthrough's commands were not found"


def test_the_chaos_controls_answer_as_the_operations_page_shows(tmp_path: Path) -> None:
    chaos = section(OPERATIONS_PAGE, "## Chaos controls", "## Tripping")
    (block,) = [block for language, block in code_blocks(chaos) if language == "console"]
    with uvicorn_service("partner_offer_service:app", log_dir=tmp_path) as partner:
        for command, shown in commands(block):
            assert_same_output(command, shown, run(command, partner))


@pytest.mark.timeout(120)
def test_two_instances_share_one_circuit_as_the_fleet_page_shows(
    editable_partner: EditablePartner, redis_server: Any, tmp_path: Path
) -> None:
    """docs/fleet.md's run: trip the circuit through one instance, and the other already knows."""
    fleet_page = (PROJECT_DIR / "docs/fleet.md").read_text()
    (block,) = [
        block
        for language, block in code_blocks(fleet_page)
        if language == "console" and block.startswith("$ ")
    ]
    editable_partner.set_status(500)
    env = {"PARTNER_OFFER_URL": editable_partner.url, "REDIS_URL": redis_server.url}
    with (
        uvicorn_service("offer_service:app", env=env, log_dir=tmp_path) as first,
        uvicorn_service("offer_service:app", env=env, log_dir=tmp_path) as second,
    ):
        for command, shown in commands(block):
            command = command.replace("localhost:8002", f"127.0.0.1:{second.port}")
            assert_same_output(
                command, normal_output("\n".join(shown)), run(command, editable_partner, first)
            )


# --- The pages, read ------------------------------------------------------------------------


def test_the_readme_is_read_in_five_minutes() -> None:
    assert len(ENGLISH.encode()) <= README_MAX_BYTES


def test_the_portuguese_walkthrough_shows_the_same_commands_and_outputs() -> None:
    """The diagram's labels are translated; everything a reader types or sees come back is not."""
    english = [block for block in code_blocks(WALKTHROUGH) if block[0] != "mermaid"]
    portuguese = [block for block in code_blocks(PASSO_A_PASSO) if block[0] != "mermaid"]
    assert english == portuguese


def test_the_portuguese_diagram_has_the_same_states_and_edges() -> None:
    def edges(text: str) -> list[str]:
        (diagram,) = [block for language, block in code_blocks(text) if language == "mermaid"]
        return re.findall(r"^\s*(\S+ --> \S+?):?", diagram, re.MULTILINE)

    assert edges(WALKTHROUGH) == edges(PASSO_A_PASSO)


def test_every_make_target_the_pages_name_exists() -> None:
    makefile = (PROJECT_DIR / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z-]+):", makefile, re.MULTILINE))
    named = set(re.findall(r"`make ([a-z-]+)", "".join(page.read_text() for page in PAGES)))
    assert named and named <= targets, named - targets


def test_every_setting_in_the_table_exists_and_every_setting_is_in_the_table() -> None:
    table = OPERATIONS_PAGE[OPERATIONS_PAGE.index("## Settings") :]
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", table, re.MULTILINE))
    fields = {name.upper() for cls in (OfferSettings, PartnerSettings) for name in cls.model_fields}
    assert documented == fields


def test_the_settings_the_readme_names_exist() -> None:
    rows = table_after(ENGLISH, "## The settings that matter")
    fields = {name.upper() for cls in (OfferSettings, PartnerSettings) for name in cls.model_fields}
    named = {row[0].strip("`") for row in rows}
    assert named and named <= fields, named - fields


def test_the_circuit_table_lists_exactly_the_fields_of_circuit_status_and_its_schema() -> None:
    """A field added to `CircuitStatus` without a row here, or a row without a field, fails."""
    rows = table_after(BREAKER_PAGE, "## `GET /offer/circuit`")
    documented = [key for row in rows for key in re.findall(r"`(\w+)`", row[0])]
    assert len(documented) == len(set(documented)), "a key is in the table twice"
    schema = create_app(OfferSettings()).openapi()["components"]["schemas"]["CircuitStatus"]
    assert set(documented) == set(CircuitStatus.model_fields)
    assert set(documented) == set(schema["properties"])
    for row in rows:
        assert len(row) == 2 and row[1], f"a key without its meaning: {row}"


def anchors(text: str) -> set[str]:
    """The ids GitHub gives a file's headings: lower case, punctuation dropped, spaces as `-`."""
    text = CODE_BLOCK.sub("", text)
    headings = re.findall(r"^#+ (.+)$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_link_to_a_heading_finds_it() -> None:
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            path, _, anchor = target.partition("#")
            if anchor and not target.startswith(("http://", "https://")):
                linked = (page.parent / path) if path else page
                if anchor not in anchors(linked.read_text()):
                    broken.append(f"{page.relative_to(PROJECT_DIR)}: {target}")
    assert not broken, broken


def test_every_file_the_pages_name_exists() -> None:
    """Relative to the page, or to the project (where the commands run)."""
    missing = []
    for page in PAGES:
        text = page.read_text()
        links = [
            target.split("#")[0]
            for target in LINK.findall(text)
            if not target.startswith(("http://", "https://", "#", "mailto:"))
        ]
        named = [path.rstrip(".") for path in FILE_PATH.findall(text)]
        assert named, f"no file found in {page.name}: is FILE_PATH still right?"
        for path in links + named:
            if not any((Path(base) / path).exists() for base in (page.parent, PROJECT_DIR)):
                missing.append(f"{page.relative_to(PROJECT_DIR)}: {path}")
    assert not missing, missing


def test_the_tests_page_names_every_test_file() -> None:
    """The README sends readers to docs/tests.md for every test file."""
    page = (PROJECT_DIR / "docs/tests.md").read_text()
    files = sorted(path.relative_to(PROJECT_DIR).as_posix() for path in PROJECT_DIR.glob("tests/test_*.py"))
    assert files, "no test file found: is the pattern still right?"
    assert [name for name in files if f"`{name}`" not in page] == []


def test_each_rule_is_stated_once_and_linked_from_elsewhere() -> None:
    """Retry-After and the noise that flaps the consecutive policy: one statement each, in
    docs/breaker.md; a page that mentions them links there instead of saying it again."""
    assert BREAKER_PAGE.count("## Retry-After") == 1
    assert BREAKER_PAGE.count("**Under load it trips on noise**") == 1
    for page in PAGES:
        text = page.read_text()
        assert "is not used to lengthen the open state" not in text, page.name
        if page.name != "breaker.md":
            assert not re.search(r"three failures in a row come", text), page.name


async def test_the_readmes_copy_example_runs_as_written() -> None:
    """The one example of the breaker's API, run: a hot offer, failures counted until the circuit
    opens, then the cold offer without the partner being called."""
    (example,) = [
        block
        for language, block in code_blocks(section(ENGLISH, "## Copying", "## The settings"))
        if language == "python"
    ]
    namespace: dict[str, Any] = {}
    exec(compile(example, "README.md", "exec"), namespace)  # the README's own code, run as written
    calls = 0

    async def healthy() -> str:
        nonlocal calls
        calls += 1
        return "Hot offer"

    async def broken() -> str:
        nonlocal calls
        calls += 1
        raise ConnectionError("partner down")

    namespace["fetch_hot_offer"] = healthy
    assert await namespace["offer"]() == "Hot offer"
    namespace["fetch_hot_offer"] = broken
    assert [await namespace["offer"]() for _ in range(3)] == ["Cold offer"] * 3
    assert namespace["breaker"].state == "open"
    assert await namespace["offer"]() == "Cold offer"
    assert calls == 4, "the partner was called while the circuit was open"

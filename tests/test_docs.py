"""The READMEs stay true: the Portuguese walkthrough in step, and commands, settings, files and
the `/offer/circuit` keys that exist."""

from __future__ import annotations

import re
from pathlib import Path

from offer_service import create_app
from service.circuit_routes import CircuitStatus
from service.settings import OfferSettings, PartnerSettings
from tools.processes import PROJECT_DIR

ENGLISH = (PROJECT_DIR / "README.md").read_text()
PORTUGUESE = (PROJECT_DIR / "README.pt-BR.md").read_text()
READMES = [PROJECT_DIR / "README.md", PROJECT_DIR / "README.pt-BR.md", PROJECT_DIR / "tools/bench/README.md"]

# A file the text names: under one of the project's folders, or a name with a file's extension.
# Not preceded by `/` or `:` (URLs and URL paths like `/openapi.json`), not followed by `*` (globs).
FILE_PATH = re.compile(
    r"(?<![\w/.:-])"
    r"((?:\.ci|service|tools|tests|docs)/[\w./-]*|[\w.-]+(?:/[\w.-]+)*\.(?:py|md|png|json|toml|txt|css|js|html))"
    r"(?![\w/*-])"
)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```[a-z]*\n.*?\n```", text, re.DOTALL)


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


def test_the_portuguese_walkthrough_shows_the_same_commands_and_outputs() -> None:
    walkthrough = ENGLISH[ENGLISH.index("## The walkthrough") : ENGLISH.index("## How the breaker is wired")]
    passo_a_passo = PORTUGUESE[PORTUGUESE.index("## Passo a passo") : PORTUGUESE.index("## O painel")]
    assert code_blocks(walkthrough) == code_blocks(passo_a_passo)


def test_every_make_target_the_readmes_name_exists() -> None:
    makefile = (PROJECT_DIR / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z-]+):", makefile, re.MULTILINE))
    named = set(re.findall(r"`make ([a-z-]+)", ENGLISH + PORTUGUESE))
    assert named and named <= targets


def test_every_setting_in_the_table_exists_and_every_setting_is_in_the_table() -> None:
    table = ENGLISH[ENGLISH.index("## Settings") :]
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", table, re.MULTILINE))
    fields = {name.upper() for cls in (OfferSettings, PartnerSettings) for name in cls.model_fields}
    assert documented == fields


def test_the_circuit_table_lists_exactly_the_fields_of_circuit_status_and_its_schema() -> None:
    """A field added to `CircuitStatus` without a row here, or a row without a field, fails."""
    rows = table_after(ENGLISH, "### `GET /offer/circuit`")
    documented = [key for row in rows for key in re.findall(r"`(\w+)`", row[0])]
    assert len(documented) == len(set(documented)), "a key is in the table twice"
    schema = create_app(OfferSettings()).openapi()["components"]["schemas"]["CircuitStatus"]
    assert set(documented) == set(CircuitStatus.model_fields)
    assert set(documented) == set(schema["properties"])
    for row in rows:
        assert len(row) == 2 and row[1], f"a key without its meaning: {row}"


def anchors(text: str) -> set[str]:
    """The ids GitHub gives a file's headings: lower case, punctuation dropped, spaces as `-`."""
    headings = re.findall(r"^#+ (.+)$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_link_to_a_heading_finds_it() -> None:
    broken = []
    for readme in READMES:
        for target in LINK.findall(readme.read_text()):
            path, _, anchor = target.partition("#")
            if anchor and not target.startswith(("http://", "https://")):
                linked = (readme.parent / path) if path else readme
                if anchor not in anchors(linked.read_text()):
                    broken.append(f"{readme.relative_to(PROJECT_DIR)}: {target}")
    assert not broken, broken


def test_every_file_the_readmes_name_exists() -> None:
    """Relative to the README, or to the project (where the commands run)."""
    missing = []
    for readme in READMES:
        text = readme.read_text()
        links = [
            target.split("#")[0]
            for target in LINK.findall(text)
            if not target.startswith(("http://", "https://", "#", "mailto:"))
        ]
        named = [path.rstrip(".") for path in FILE_PATH.findall(text)]
        assert named, f"no file found in {readme.name}: is FILE_PATH still right?"
        for path in links + named:
            if not any((Path(base) / path).exists() for base in (readme.parent, PROJECT_DIR)):
                missing.append(f"{readme.relative_to(PROJECT_DIR)}: {path}")
    assert not missing, missing

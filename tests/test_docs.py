"""The READMEs stay true: the Portuguese walkthrough in step, commands and settings that exist."""

from __future__ import annotations

import re

from service.settings import OfferSettings, PartnerSettings
from tools.processes import PROJECT_DIR

ENGLISH = (PROJECT_DIR / "README.md").read_text()
PORTUGUESE = (PROJECT_DIR / "README.pt-BR.md").read_text()


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```[a-z]*\n.*?\n```", text, re.DOTALL)


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

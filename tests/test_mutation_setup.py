"""`make mutation` keeps running: mutmut copies into `mutants/` only the files that
[tool.mutmut] names (and tests/), so a module the tests import but the list forgets makes
every mutant fail to import, and the run stops before scoring anything. That is how it broke
once already, when `build_breaker` moved to offer_service.py."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
# What mutmut 3 copies whatever the configuration says (mutmut/configuration.py).
COPIED_BY_MUTMUT = ("tests/", "pyproject.toml")
# Tests that import a mutated module but do not run against its mutants, and why.
NOT_RUN_AGAINST_MUTANTS = {
    # Random walks of 11 s (memory) to 47 s (fleet) each: every mutant they reach would pay
    # that much; the breaker and shared-state tests pin the same guarantees one by one.
    "tests/test_model.py",
}
# `uvicorn module:app` in a string: a service a test starts, from a file it must find.
SERVED_APP = re.compile(r"^([A-Za-z_][\w.]*):app$")


def mutmut_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["mutmut"]
    return settings


def module_file(name: str) -> Path | None:
    """The project's file for the dotted module `name`, or None for a library's."""
    parts = name.split(".")
    for candidate in (PROJECT.joinpath(*parts).with_suffix(".py"), PROJECT.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def files_needed_by(path: Path) -> set[Path]:
    """The project files `path` imports or starts as a service (`"offer_service:app"`)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from tools import scenario` imports tools/scenario.py, not only tools/__init__.py.
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            served = SERVED_APP.match(node.value)
            if served:
                names.append(served.group(1))
    return {found for name in names if (found := module_file(name)) is not None}


def closure(start: set[Path]) -> set[Path]:
    seen: set[Path] = set()
    todo = list(start)
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += files_needed_by(path)
    return seen


def copied(path: Path, listed: list[str]) -> bool:
    relative = path.relative_to(PROJECT).as_posix()
    return any(relative == entry or (entry.endswith("/") and relative.startswith(entry)) for entry in listed)


def test_mutmut_copies_every_project_file_the_mutated_tests_need() -> None:
    settings = mutmut_settings()
    tests = {PROJECT / name for name in settings["pytest_add_cli_args_test_selection"]}
    needed = closure(tests | {PROJECT / "tests" / "conftest.py"})
    listed = [*settings["source_paths"], *settings["also_copy"], *COPIED_BY_MUTMUT]
    missing = sorted(path.relative_to(PROJECT).as_posix() for path in needed if not copied(path, listed))
    assert missing == [], (
        f"[tool.mutmut] also_copy lacks {missing}: mutmut's copy of the tests cannot import them"
    )


def test_every_test_file_of_a_mutated_module_runs_against_its_mutants() -> None:
    settings = mutmut_settings()
    mutated = {PROJECT / name for name in settings["source_paths"]}
    importing = {
        test.relative_to(PROJECT).as_posix()
        for test in (PROJECT / "tests").glob("test_*.py")
        if files_needed_by(test) & mutated
    }
    selected = set(settings["pytest_add_cli_args_test_selection"])
    left_out = sorted(importing - selected - NOT_RUN_AGAINST_MUTANTS)
    assert left_out == [], f"these tests import a mutated module but mutmut does not run them: {left_out}"

"""The extras the web example's docs name install every package `examples/web_app.py` imports."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path

from packaging.requirements import Requirement

from tests.helpers.paths import ROOT
from tests.helpers.web_app import EXAMPLE

PROJECT = "pydantic-ai-absurd"


def named_extras(text: str) -> set[str]:
    """The extras of the project named in `pip install` commands of `text` (`.[a,b]` or `pydantic-ai-absurd[a]`)."""
    found = re.findall(r"pip install[^\n`]*?(?:\.|pydantic-ai-absurd)\[([a-z,-]+)\]", text)
    assert found, "no `pip install ...[extras]` command"
    return {extra for group in found for extra in group.split(",")}


def installed_by(extras: set[str]) -> set[str]:
    """The distributions `pip install pydantic-ai-absurd[extras]` installs (normalised names), from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pending = [Requirement(r) for r in project["dependencies"]]
    pending += [Requirement(r) for extra in extras for r in project["optional-dependencies"][extra]]
    seen: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = normalise(requirement.name)
        if name == PROJECT:
            pending += [Requirement(r) for e in requirement.extras for r in project["optional-dependencies"][e]]
            continue
        key = f"{name}[{','.join(sorted(requirement.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        requires = _requires(name)
        if requires is None:
            continue  # not installed here: the modules it would provide are reported missing
        for text in requires:
            dependency = Requirement(text)
            wanted = dependency.marker is None or any(
                dependency.marker.evaluate({"extra": extra}) for extra in {"", *requirement.extras}
            )
            if wanted:
                pending.append(dependency)
    return {key.split("[")[0] for key in seen}


# Both tests walk the same installed distributions: read their metadata once (a scan of every distribution).
@functools.cache
def _requires(name: str) -> tuple[str, ...] | None:
    """The requirements of distribution `name`, or None when it is not installed."""
    try:
        return tuple(importlib.metadata.requires(name) or [])
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def _providers() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"__future__", "pydantic_ai_absurd"}


def missing(extras: set[str]) -> set[str]:
    installed = installed_by(extras)
    providers = _providers()
    return {
        module
        for module in third_party_imports(EXAMPLE)
        if not {normalise(d) for d in providers.get(module, [])} & installed
    }


def test_the_example_docstring_names_the_extras_it_needs() -> None:
    docstring = ast.get_docstring(ast.parse(EXAMPLE.read_text())) or ""
    assert missing(named_extras(docstring)) == set()


def test_the_docs_page_names_the_extras_the_example_needs() -> None:
    page = (ROOT / "docs" / "streaming.md").read_text()
    section = page[page.index("## A complete web app") :]
    section = section[: section.index("\n## ")]
    assert missing(named_extras(section)) == set()

"""The core imports nothing above it: no module of the engine imports a layer, even inside a function.

The layers (events, conversations, telemetry, ...) plug into a run through `_extensions`; this test reads
every import of the core modules with `ast`, follows the imports that stay inside the core, and fails
on any edge to a layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers.paths import SRC

PACKAGE = "pydantic_ai_absurd"

CORE = {
    "_durability",
    "_backend",
    "_naming",
    "_step_names",
    "_step_kinds",
    "_execution",
    "_extensions",
    "_steps",
    "_lease",
    "_waits",
    "_time",
    "_provider_waits",
    "_checkpoint",
    "_digest",
    "_agent",
    "_absurd",
    "_pydantic_ai",
    "_text",
    "errors",
}
"""Top-level modules and packages of the engine; `_absurd` is a package, the rest are modules."""

LAYERS = {
    "worker",
    "inbox",
    "conversations",
    "children",
    "events",
    "inspection",
    "verify",
    "cli",
    "schema",
    "testing",
    "telemetry",
    "embedded",
    "client",
    "_worker_records",
    "transactions",
}

HELPERS = {"_dsn", "_db", "_pg_binaries", "_pooler"}
"""Neither: small helpers for the core and the layers; they import no layer."""


def _module_file(parts: tuple[str, ...]) -> Path | None:
    base = SRC.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(node: ast.Import | ast.ImportFrom, package: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The package-relative module paths `node` imports (`from . import x` may name modules too)."""
    if isinstance(node, ast.Import):
        names = [tuple(alias.name.split(".")) for alias in node.names]
        return [name[1:] for name in names if name[0] == PACKAGE]
    written = tuple(node.module.split(".")) if node.module else ()
    if node.level:
        module = (*package[: len(package) - node.level + 1], *written)
    elif written[:1] == (PACKAGE,):
        module = written[1:]
    else:
        return []
    found = [module] if module else []
    return found + [(*module, alias.name) for alias in node.names if _module_file((*module, alias.name))]


def _edges(parts: tuple[str, ...]) -> list[tuple[str, ...]]:
    path = _module_file(parts)
    assert path is not None, parts
    package = parts if path.name == "__init__.py" else parts[:-1]
    tree = ast.parse(path.read_text(), str(path))
    return [
        target
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for target in _imported(node, package)
    ]


def _core_modules() -> list[tuple[str, ...]]:
    modules: list[tuple[str, ...]] = []
    for name in sorted(CORE):
        if (SRC / name).is_dir():
            modules += [
                (name, *path.relative_to(SRC / name).with_suffix("").parts) for path in (SRC / name).rglob("*.py")
            ]
        elif _module_file((name,)) is not None:
            modules.append((name,))
    return [module[:-1] if module[-1] == "__init__" else module for module in modules]


def upward_edges() -> list[str]:
    """Every import from a core module (directly or through the core modules it imports) of a layer."""
    found: list[str] = []
    seen: set[tuple[str, ...]] = set()
    todo = _core_modules()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for target in _edges(module):
            if target and target[0] in LAYERS:
                found.append(f"{'.'.join(module)} -> {'.'.join(target)}")
            elif target and target[0] in CORE | HELPERS:
                todo.append(target)
    return sorted(found)


def test_every_top_level_module_is_core_or_layer() -> None:
    names = {path.stem for path in SRC.glob("*.py")} | {path.parent.name for path in SRC.glob("*/__init__.py")}
    assert names - CORE - LAYERS - HELPERS - {"__init__"} == set()


def test_the_core_imports_no_layer() -> None:
    assert upward_edges() == []

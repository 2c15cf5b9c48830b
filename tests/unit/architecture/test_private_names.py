"""Private names of `absurd_sdk` and `pydantic_ai` are used only in `_absurd/` and `_pydantic_ai.py`."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pydantic_ai_absurd

SRC = Path(pydantic_ai_absurd.__file__).parent
BOUNDARY = ("pydantic_ai_absurd._absurd", "pydantic_ai_absurd._pydantic_ai")
UPSTREAM = ("absurd_sdk", "pydantic_ai")
_GENERATED = {"_abc_impl", "_is_protocol"}  # set by `abc` and `typing` on classes, not overrides


def _outside_boundary() -> list[Path]:
    return [
        path
        for path in sorted(SRC.rglob("*.py"))
        if path.relative_to(SRC).parts[0] not in {"_absurd", "_pydantic_ai.py"}
    ]


def test_no_private_usage_is_silenced_outside_the_boundary_modules() -> None:
    offenders = [str(path) for path in _outside_boundary() if "reportPrivateUsage" in path.read_text()]
    assert offenders == []


def test_nothing_reads_python_stack_frames() -> None:
    frames = re.compile(r"_getframe|f_locals|f_back|currentframe|f_globals")
    offenders = [str(path) for path in sorted(SRC.rglob("*.py")) if frames.search(path.read_text())]
    assert offenders == []


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in _GENERATED


def test_no_class_outside_the_boundary_overrides_a_private_upstream_name() -> None:
    offenders: list[str] = []
    for module_info in pkgutil.walk_packages(pydantic_ai_absurd.__path__, "pydantic_ai_absurd."):
        if module_info.name.startswith(BOUNDARY) or module_info.name.endswith("__main__"):
            continue
        module = importlib.import_module(module_info.name)
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            upstream = [base for base in cls.__mro__[1:] if base.__module__.startswith(UPSTREAM)]
            offenders += [
                f"{cls.__module__}.{cls.__qualname__}.{name}"
                for name in vars(cls)
                if _is_private(name) and any(name in vars(base) for base in upstream)
            ]
    assert offenders == []

"""`pydantic-ai-absurd worker MODULE:ATTRIBUTE` on modules written as the docs write them."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from pydantic_ai_absurd.cli._worker import resolve_client
from tests.helpers.paths import ROOT


def _tutorial_task_module() -> str:
    text = (ROOT / "docs" / "tutorial.md").read_text()
    section = text.split("## 4.", 1)[1]
    match = re.search(r"^```python\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert match is not None
    return match.group(1)


def test_the_tutorial_module_loads_in_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, absurd_dsn: str
) -> None:
    assert "pydantic-ai-absurd worker tutorial:absurd" in (ROOT / "docs" / "tutorial.md").read_text()
    (tmp_path / "paa_tutorial_step.py").write_text(_tutorial_task_module())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ABSURD_DATABASE_URL", absurd_dsn)
    monkeypatch.delitem(sys.modules, "paa_tutorial_step", raising=False)

    async def load() -> list[str]:
        absurd = await resolve_client("paa_tutorial_step:absurd")
        try:
            return sorted(absurd._registry)  # pyright: ignore[reportPrivateUsage]
        finally:
            await absurd.close()

    try:
        assert asyncio.run(load()) == ["bill"]
    finally:
        sys.modules.pop("paa_tutorial_step", None)


def test_no_program_in_the_docs_runs_at_import() -> None:
    """Any docs program may be pointed at by `pydantic-ai-absurd worker`: none calls `asyncio.run` when imported."""
    fence = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
    bare: list[str] = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in fence.findall(path.read_text()):
            bare += [f"{path.name}: {line}" for line in block.splitlines() if line.startswith("asyncio.run(")]
    assert bare == []

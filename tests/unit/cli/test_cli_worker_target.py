"""`pydantic-ai-absurd worker MODULE:ATTRIBUTE` on modules written as the docs write them."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pydantic_ai_absurd.cli._worker import resolve_client
from tests.helpers.paths import ROOT

CLI = [sys.executable, "-c", "import sys; from pydantic_ai_absurd.cli import main; sys.exit(main())"]


def _tutorial_task_module() -> str:
    text = (ROOT / "docs" / "tutorial.md").read_text()
    section = text.split("## 4.", 1)[1]
    match = re.search(r"^```python\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert match is not None
    return match.group(1)


def test_module_calling_asyncio_run_at_import_is_one_line_exit_2(tmp_path: Path, absurd_dsn: str) -> None:
    (tmp_path / "eager.py").write_text(
        "import asyncio\n"
        "from absurd_sdk import AsyncAbsurd\n\n"
        "absurd = AsyncAbsurd(queue_name='agents')\n\n\n"
        "async def main():\n"
        "    pass\n\n\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(
        [*CLI, "worker", "eager:absurd", "--dsn", absurd_dsn],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pydantic-ai-absurd: error: ")
    assert "asyncio.run(...)" in lines[0]
    assert 'if __name__ == "__main__":' in lines[0]


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

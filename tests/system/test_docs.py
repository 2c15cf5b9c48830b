"""Code in the docs is executed: every ```python block of README.md and docs/*.md runs as a program.

A block whose info string carries `test="skip"` (```` ```python {test="skip"} ````) is not run; keep those rare.
Each block runs in its own subprocess, offline, with `ABSURD_DATABASE_URL` pointing at a database of its
own for this session, so blocks that reuse queue names (`agents`) never see another run's tasks.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.helpers.paths import ROOT

DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
SKIP = re.compile(r"""test\s*=\s*["']skip["']""")


def python_blocks() -> list[pytest.ParameterSet]:
    blocks: list[pytest.ParameterSet] = []
    for path in DOC_FILES:
        if not path.exists():
            continue
        text = path.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            block_id = f"{path.relative_to(ROOT)}:{line}"
            marks = [pytest.mark.skip(reason='marked test="skip"')] if SKIP.search(match.group(1)) else []
            blocks.append(pytest.param(match.group(2), id=block_id, marks=marks))
    return blocks


BLOCKS = python_blocks()


def test_docs_have_python_blocks() -> None:
    assert len(BLOCKS) >= 5, [b.id for b in BLOCKS]


@pytest.fixture(scope="module")
def docs_dsn(absurd_dsn: str) -> Iterator[str]:
    """A fresh database on the test server (the test database itself if we may not create one)."""
    name = f"docs_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(absurd_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    except psycopg.Error:
        yield absurd_dsn
        return
    params = {key: value for key, value in conninfo_to_dict(absurd_dsn).items() if value is not None}
    params["dbname"] = name
    try:
        yield make_conninfo(**params)  # pyright: ignore[reportArgumentType]
    finally:
        with contextlib.suppress(psycopg.Error), psycopg.connect(absurd_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.mark.parametrize("code", BLOCKS)
def test_python_block_runs(code: str, docs_dsn: str, tmp_path: Path) -> None:
    script = tmp_path / "block.py"
    script.write_text(code)
    env = {**os.environ, "ABSURD_DATABASE_URL": docs_dsn}
    env.pop("PYDANTIC_AI_MODEL", None)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"

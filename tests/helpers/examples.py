"""The scripts of `examples/`, run as a reader would: `python examples/<name>.py`, offline, on a test database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .paths import EXAMPLES, ROOT


def run_example(
    name: str, *args: str, dsn: str, cwd: Path = ROOT, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `examples/<name>.py ARGS...` on `dsn` with the scripted model, and check it exits 0.

    `PYDANTIC_AI_MODEL` is removed from the environment so the example stays offline; its output is captured
    (text) and the last lines of it are the assertion message of a failure.
    """
    env = {**os.environ, "ABSURD_DATABASE_URL": dsn}
    env.pop("PYDANTIC_AI_MODEL", None)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result

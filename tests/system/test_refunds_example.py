"""`examples/refunds.py` runs offline: two worker processes are killed, and each refund row exists once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.paths import ROOT

pytestmark = pytest.mark.crash


def test_the_refunds_example(absurd_dsn: str) -> None:
    env = {**os.environ, "ABSURD_DATABASE_URL": absurd_dsn}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "refunds.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout
    assert result.returncode == 0, output[-2000:] + result.stderr[-2000:]
    assert "killed at refund-o-2" in output and "killed at model" in output
    assert output.count("exited with -9; starting another") == 2
    assert "refunded 12 on o-3; refunded 30 on o-1; refunded 45 on o-2" in output
    assert "[main] refund rows per order: {'o-1': 1, 'o-2': 1, 'o-3': 1}" in output
    executions = next(line for line in output.splitlines() if "refund tool executions" in line)
    assert executions.count("'o-2'") == 2  # killed before its commit: refunded again, written once

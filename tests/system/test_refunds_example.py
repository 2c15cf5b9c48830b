"""`examples/refunds.py` runs offline: two worker processes are killed, and each refund row exists once."""

from __future__ import annotations

import pytest

from tests.helpers.examples import run_example

pytestmark = pytest.mark.crash


def test_the_refunds_example(absurd_dsn: str) -> None:
    output = run_example("refunds", dsn=absurd_dsn).stdout
    assert "killed at refund-o-2" in output and "killed at model" in output
    assert output.count("exited with -9; starting another") == 2
    assert "refunded 12 on o-3; refunded 30 on o-1; refunded 45 on o-2" in output
    assert "[main] refund rows per order: {'o-1': 1, 'o-2': 1, 'o-3': 1}" in output
    executions = next(line for line in output.splitlines() if "refund tool executions" in line)
    assert executions.count("'o-2'") == 2  # killed before its commit: refunded again, written once

"""`examples/research_team.py` runs offline: three researcher child tasks on two workers, one worker killed."""

from __future__ import annotations

import re

import pytest

from tests.helpers.examples import run_example

pytestmark = pytest.mark.crash


def test_the_research_team_example(absurd_dsn: str) -> None:
    out = run_example("research_team", dsn=absurd_dsn).stdout
    assert "three researchers are reading on two workers" in out
    killed = re.search(r"which was running the researchers of \[(.*)\]", out)
    assert killed is not None
    killed_count = len(killed.group(1).split(", "))
    assert "coordinator completed: {'output': 'Summary of 3 reports'}" in out
    assert out.count("killed once; replayed from checkpoints: ['model.request']") == killed_count
    assert out.count("never interrupted; replayed from checkpoints: nothing") == 3 - killed_count
    assert "child tasks: 3;" in out
    assert "researcher model calls: 6 (two per topic: none repeated)" in out
    assert f"read_sources runs: {3 + killed_count} " in out

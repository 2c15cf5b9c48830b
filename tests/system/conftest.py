"""Fixtures of the system tests: the processes a test starts, and the table `worker_app`'s steps write to."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.helpers.apps.worker_app import EFFECTS_TABLE
from tests.helpers.processes import Workers


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Start worker (or reader, or server) processes; whatever still runs at the end of the test is killed."""
    started = Workers(tmp_path)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def effects(absurd_dsn: str) -> str:
    """`absurd_dsn`, with `worker_app`'s effects table created."""
    with psycopg.connect(absurd_dsn, autocommit=True) as conn:
        conn.execute(EFFECTS_TABLE)
    return absurd_dsn

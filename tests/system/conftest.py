"""System-test fixtures: a real PgBouncer in transaction pooling mode in front of the test database."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .pgbouncer_support import PGBOUNCER_MISSING, pgbouncer_binary, running_pgbouncer


@pytest.fixture(scope="session")
def pgbouncer_dsn(absurd_dsn: str) -> Iterator[str]:
    """DSN of the test database through PgBouncer (`pool_mode = transaction`), for the whole session.

    Skipped, with the reason, only where pgbouncer is not installed and `CI` is unset; under CI it fails.
    """
    if pgbouncer_binary() is None:
        if os.environ.get("CI"):
            pytest.fail(PGBOUNCER_MISSING, pytrace=False)
        pytest.skip(PGBOUNCER_MISSING)
    with running_pgbouncer(absurd_dsn) as dsn:
        yield dsn

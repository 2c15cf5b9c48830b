"""Fixtures shared by the unit and system tests.

The database fixtures (`absurd_dsn`, `absurd_queue`, `absurd_client`, ...) come from the
`pydantic_ai_absurd.testing.pytest_plugin` pytest plugin (entry point `pytest11`); the system tests'
process fixtures are in `tests/system/conftest.py`, and the helpers in the `tests.helpers` package.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.asserts import rewrite_tests_only
from tests.helpers.infra import fresh_database

rewrite_tests_only()


@pytest.fixture
def empty_db(absurd_dsn: str) -> Iterator[str]:
    """A new database without Absurd's schema, on the test server (dropped afterwards)."""
    with fresh_database(absurd_dsn) as dsn:
        yield dsn


@pytest.fixture(autouse=True)
def _no_inherited_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """CLI output is read whole: a `$COLUMNS` from the shell (or pytest-xdist's workers) would cut table cells."""
    monkeypatch.delenv("COLUMNS", raising=False)

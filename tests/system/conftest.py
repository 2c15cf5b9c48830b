"""Fixtures of the system tests: the processes a test starts, the table `worker_app`'s steps write to, and a real
PgBouncer in transaction pooling mode in front of the test database (and a client through it)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd

from pydantic_ai_absurd._db import connect_async  # pyright: ignore[reportPrivateUsage]
from tests.helpers.apps.worker_app import EFFECTS_TABLE
from tests.helpers.pgbouncer import require_pgbouncer, running_pgbouncer
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


@pytest.fixture(scope="session")
def pgbouncer_dsn(absurd_dsn: str) -> Iterator[str]:
    """DSN of the test database through PgBouncer (`pool_mode = transaction`), for the whole session.

    Skipped, with the reason, only where pgbouncer is not installed and `CI` is unset; under CI it fails.
    """
    require_pgbouncer()
    with running_pgbouncer(absurd_dsn) as dsn:
        yield dsn


@pytest.fixture
async def pooled_client(pgbouncer_dsn: str, absurd_queue: str) -> AsyncIterator[AsyncAbsurd]:
    """A client of the test queue whose connection goes through PgBouncer (`pgbouncer_dsn`)."""
    conn = await connect_async(pgbouncer_dsn, autocommit=True)
    try:
        yield AsyncAbsurd(conn, queue_name=absurd_queue)
    finally:
        await conn.close()

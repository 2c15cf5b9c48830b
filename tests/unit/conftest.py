"""Fixtures of the unit tests: their queues (`tests.helpers.queue_pool`) and empty databases
(`tests.helpers.infra.EmptyDatabases`) are reused within a test process.

The unit tests start no process that could outlive a test, so a queue can be emptied and handed to the next test
instead of being dropped and created again; the system tests keep the plugin's fresh queue per test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pydantic_ai_absurd.worker import _loop as worker_loop
from tests.helpers.infra import EmptyDatabases
from tests.helpers.queue_pool import QueuePool


@pytest.fixture(scope="session")
def queue_pool(absurd_dsn: str) -> Iterator[QueuePool]:
    """The queues of this test process, dropped at the end of the session."""
    pool = QueuePool(absurd_dsn)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def absurd_queue(queue_pool: QueuePool) -> Iterator[str]:
    """An empty queue of this test's own (a fresh one, or one emptied after an earlier test)."""
    name = queue_pool.take()
    yield name
    queue_pool.give_back(name)


@pytest.fixture(scope="session")
def empty_databases(absurd_dsn: str) -> Iterator[EmptyDatabases]:
    """The empty databases of this test process, dropped at the end of the session."""
    databases = EmptyDatabases(absurd_dsn)
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture
def empty_db(empty_databases: EmptyDatabases) -> Iterator[str]:
    """A database without Absurd's schema: new, or one an earlier test left untouched."""
    database = empty_databases.take()
    yield database[1]
    empty_databases.give_back(database)


@pytest.fixture(autouse=True)
def _quick_takeover_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process workers look for dead peers every 50 ms (1 s in production), as they poll the queue every 20 ms."""
    monkeypatch.setattr(worker_loop, "TAKEOVER_CHECK_INTERVAL", 0.05)

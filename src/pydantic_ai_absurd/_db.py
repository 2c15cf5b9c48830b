"""Database access for the core and every layer: connecting, the missing-queue error, rows as dataclasses.

Every connection the package opens goes through `connect` / `connect_async` (libpq's failures become one-line
`DatabaseConnectionError`s), every "queue does not exist" error through `queue_not_found`, and rows that used to
be read by position are read by name into dataclasses with `fetch_all_as` / `fetch_one_as`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from ._absurd import queue_exists
from ._dsn import connection_error
from .errors import QueueNotFoundError

__all__ = [
    "connect",
    "connect_async",
    "connection_pool",
    "create_queue_hint",
    "fetch_all_as",
    "fetch_one_as",
    "open_connection",
    "queue_not_found",
    "require_queue",
]

Query = LiteralString | sql.SQL | sql.Composed
T = TypeVar("T")


def connect(dsn: str, *, autocommit: bool = False, connect_timeout: int = 10) -> psycopg.Connection[tuple[object, ...]]:
    """Open a psycopg connection, turning connection failures into `DatabaseConnectionError`."""
    try:
        return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=connect_timeout)
    except psycopg.Error as exc:
        raise connection_error(exc, dsn) from exc


async def connect_async(
    dsn: str, *, autocommit: bool = False, connect_timeout: int = 10, application_name: str | None = None
) -> psycopg.AsyncConnection[tuple[object, ...]]:
    """Async twin of `connect`; `application_name` labels the session in `pg_stat_activity`."""
    try:
        if application_name is None:
            return await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit, connect_timeout=connect_timeout)
        return await psycopg.AsyncConnection.connect(
            dsn, autocommit=autocommit, connect_timeout=connect_timeout, application_name=application_name
        )
    except psycopg.Error as exc:
        raise connection_error(exc, dsn) from exc


def connection_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int | None = None,
    application_name: str | None = None,
    connect_timeout: int | None = None,
    timeout: float = 30.0,
    check: bool | Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] = False,
    name: str | None = None,
) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
    """An unopened pool of autocommit connections to `dsn` (the caller opens and closes it).

    `check`: True checks every connection (an empty query) before lending it; a callable decides itself.
    """
    kwargs: dict[str, Any] = {"autocommit": True}
    if connect_timeout is not None:
        kwargs["connect_timeout"] = connect_timeout
    if application_name is not None:
        kwargs["application_name"] = application_name
    return AsyncConnectionPool[psycopg.AsyncConnection[Any]](
        dsn,
        kwargs=kwargs,
        min_size=min_size,
        max_size=max_size,
        open=False,
        check=(AsyncConnectionPool.check_connection if check else None) if isinstance(check, bool) else check,
        timeout=timeout,
        name=name,
    )


@asynccontextmanager
async def open_connection(dsn: str) -> AsyncGenerator[psycopg.AsyncConnection[Any]]:
    """An autocommit connection to `dsn` for the block, closed after it."""
    conn = await connect_async(dsn, autocommit=True)
    async with conn:
        yield conn


def create_queue_hint(queue: str) -> str:
    """What to run to create `queue` (the end of most missing-queue messages)."""
    return f"create it with `pydantic-ai-absurd init --queue {queue}`"


def queue_not_found(queue: str, hint: str, *, where: str | None = None) -> QueueNotFoundError:
    """The one "queue does not exist" error: `Queue 'q' does not exist[ in where]: hint`."""
    place = f" in {where}" if where else ""
    return QueueNotFoundError(f"Queue {queue!r} does not exist{place}: {hint}")


async def require_queue(conn: psycopg.AsyncConnection[Any], queue: str, hint: str, *, where: str | None = None) -> None:
    """Raise `queue_not_found` unless `queue` is a queue of the database of `conn`."""
    if not await queue_exists(conn, queue):
        raise queue_not_found(queue, hint, where=where)


async def fetch_all_as(
    conn: psycopg.AsyncConnection[Any], cls: type[T], query: Query, params: Sequence[Any] | Mapping[str, Any] = ()
) -> list[T]:
    """Run `query` and build one `cls` per row, from the columns named like its fields."""
    async with conn.cursor(row_factory=class_row(cls)) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


async def fetch_one_as(
    conn: psycopg.AsyncConnection[Any], cls: type[T], query: Query, params: Sequence[Any] | Mapping[str, Any] = ()
) -> T | None:
    """`fetch_all_as` for at most one row."""
    async with conn.cursor(row_factory=class_row(cls)) as cur:
        await cur.execute(query, params)
        return await cur.fetchone()

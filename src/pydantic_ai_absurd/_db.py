"""Database access for the core and every layer: connecting, the missing-queue error, rows as dataclasses.

Every connection the package opens goes through `connect` / `connect_async` (libpq's failures become one-line
`DatabaseConnectionError`s), every "queue does not exist" error through `queue_not_found`, and rows that used to
be read by position are read by name into dataclasses with `fetch_all_as` / `fetch_one_as`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from ._absurd import queue_exists
from ._dsn import connection_error
from ._pooler import is_direct_session, known_direct, remember_direct
from .errors import QueueNotFoundError

__all__ = [
    "connect",
    "connect_async",
    "connection_pool",
    "create_queue_hint",
    "fetch_all_as",
    "fetch_one_as",
    "fit_to_pooler",
    "open_connection",
    "queue_not_found",
    "require_queue",
]

Query = LiteralString | sql.SQL | sql.Composed
T = TypeVar("T")


def connect(dsn: str, *, autocommit: bool = False, connect_timeout: int = 10) -> psycopg.Connection[tuple[object, ...]]:
    """Open a psycopg connection, turning connection failures into `DatabaseConnectionError`.

    Without prepared statements: the synchronous connections run one-off statements (schema, CLI), which
    gain nothing from them, and they must work through a transaction-mode pooler.
    """
    try:
        return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=connect_timeout, prepare_threshold=None)
    except psycopg.Error as exc:
        raise connection_error(exc, dsn) from exc


async def connect_async(
    dsn: str, *, autocommit: bool = False, connect_timeout: int = 10, application_name: str | None = None
) -> psycopg.AsyncConnection[tuple[object, ...]]:
    """Async twin of `connect`; `application_name` labels the session in `pg_stat_activity`.

    Keeps psycopg's prepared statements only where the connection is proven direct (see `fit_to_pooler`).
    """
    try:
        if application_name is None:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit, connect_timeout=connect_timeout)
        else:
            conn = await psycopg.AsyncConnection.connect(
                dsn, autocommit=autocommit, connect_timeout=connect_timeout, application_name=application_name
            )
    except psycopg.Error as exc:
        raise connection_error(exc, dsn) from exc
    try:
        await fit_to_pooler(conn, dsn)
    except BaseException:
        await conn.close()
        raise
    return conn


async def fit_to_pooler(conn: psycopg.AsyncConnection[Any], dsn: str) -> bool:
    """Turn psycopg's prepared statements off on `conn` unless connections to `dsn` are proven direct.

    Behind a transaction-mode pooler (PgBouncer before 1.21, or without `max_prepared_statements`) a
    statement prepared on one server connection is missing on the next (`prepared statement "_pg3_0" does
    not exist`). The first connection to a DSN in a process is probed (`_pooler.is_direct_session`, one
    query); the others reuse the answer. Returns whether the connection is direct.
    """
    direct = known_direct(dsn)
    if direct is None:
        direct = await is_direct_session(conn)
        if not conn.autocommit and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            await conn.rollback()
        remember_direct(dsn, direct)
    if not direct:
        conn.prepare_threshold = None
    return direct


def connection_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int | None = None,
    application_name: str | None = None,
    connect_timeout: int | None = None,
    timeout: float = 30.0,
    check: bool = False,
    name: str | None = None,
) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
    """An unopened pool of autocommit connections to `dsn` (the caller opens and closes it)."""
    kwargs: dict[str, Any] = {"autocommit": True}
    if connect_timeout is not None:
        kwargs["connect_timeout"] = connect_timeout
    if application_name is not None:
        kwargs["application_name"] = application_name

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        await fit_to_pooler(conn, dsn)

    return AsyncConnectionPool[psycopg.AsyncConnection[Any]](
        dsn,
        kwargs=kwargs,
        configure=configure,
        min_size=min_size,
        max_size=max_size,
        open=False,
        check=AsyncConnectionPool.check_connection if check else None,
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

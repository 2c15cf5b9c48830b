"""Database access for the core and every layer: connecting, the missing-queue error, rows as dataclasses.

Every connection the package opens goes through `connect` / `connect_async` (libpq's failures become one-line
`DatabaseConnectionError`s), every "queue does not exist" error through `queue_not_found`, and rows that used to
be read by position are read by name into dataclasses with `fetch_all_as` / `fetch_one_as`.

`borrow_connection(dsn)` is the one place a short-lived connection for application work (a tool's
`durable_transaction()` block) comes from: idle connections are kept per event loop and DSN and reused.
"""

from __future__ import annotations

import asyncio
import select
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, LiteralString, TypeVar
from weakref import WeakKeyDictionary

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from ._absurd import queue_exists
from ._dsn import connection_error
from ._pooler import is_direct_session, known_direct, remember_direct
from .errors import QueueNotFoundError

__all__ = [
    "borrow_connection",
    "conninfo_of",
    "connect",
    "connect_async",
    "connection_pool",
    "create_queue_hint",
    "fetch_all_as",
    "fetch_one_as",
    "fit_to_pooler",
    "is_quiet",
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

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        await fit_to_pooler(conn, dsn)

    return AsyncConnectionPool[psycopg.AsyncConnection[Any]](
        dsn,
        kwargs=kwargs,
        configure=configure,
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


def is_quiet(*conns: psycopg.AsyncConnection[Any]) -> bool:
    """Whether the server has sent nothing on these idle connections: no data, no end of stream (no round trip).

    A backend that ends (terminated, the server restarting or crashing) writes its termination notice or
    closes the socket; a live backend of an idle session sends nothing unprompted. One `poll` with no wait
    for all of them. False also when a socket cannot be polled.
    """
    if not conns:
        return False
    try:
        fds = [conn.pgconn.socket for conn in conns]
        if _poll is None:  # pragma: no cover - a platform without poll (Windows)
            return not select.select(fds, [], [], 0)[0]
        poller = _poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)  # POLLHUP and POLLERR are reported too
        return not poller.poll(0)
    except (psycopg.Error, OSError, ValueError):
        return False


_poll = getattr(select, "poll", None)


_IDLE: WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, list[psycopg.AsyncConnection[Any]]]] = WeakKeyDictionary()
"""Idle connections per event loop and DSN (no background task: nothing outlives a loop but these sockets)."""
_MAX_IDLE = 8


def _finish(idle: dict[str, list[psycopg.AsyncConnection[Any]]]) -> None:
    """Close the sockets of connections left idle by a loop that is gone (synchronous: that loop cannot run)."""
    for conns in idle.values():
        for conn in conns:
            conn.pgconn.finish()
        conns.clear()


def _idle_connections(dsn: str) -> list[psycopg.AsyncConnection[Any]]:
    for loop in [loop for loop in _IDLE if loop.is_closed()]:
        _finish(_IDLE.pop(loop))
    loop = asyncio.get_running_loop()
    idle = _IDLE.get(loop)
    if idle is None:
        idle = _IDLE[loop] = {}
        weakref.finalize(loop, _finish, idle)
    return idle.setdefault(dsn, [])


@asynccontextmanager
async def borrow_connection(dsn: str) -> AsyncGenerator[psycopg.AsyncConnection[Any]]:
    """An autocommit connection to `dsn` for the block, reused by later blocks of this event loop.

    The one place a tool's `durable_transaction()` gets its connection: a worker that owns a pool can serve it
    here. A connection given back idle and in autocommit is kept (a few per DSN); any other is closed.
    """
    idle = _idle_connections(dsn)
    conn: psycopg.AsyncConnection[Any] | None = None
    while idle and conn is None:
        candidate = idle.pop()
        if (
            candidate.closed
            or candidate.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
            or not is_quiet(candidate)  # its backend ended (a restart, a terminate) while it sat idle
        ):
            await candidate.close()
        else:
            conn = candidate
    if conn is None:
        conn = await connect_async(dsn, autocommit=True)
    try:
        yield conn
    finally:
        reusable = (
            not conn.closed and conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        )
        if reusable and len(idle) < _MAX_IDLE:
            idle.append(conn)
        else:
            await conn.close()


def conninfo_of(conn: psycopg.AsyncConnection[Any]) -> str:
    """A connection string for the database `conn` is connected to (its DSN plus the password libpq leaves out)."""
    password = conn.info.password
    return make_conninfo(conn.info.dsn, password=password) if password else conn.info.dsn


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

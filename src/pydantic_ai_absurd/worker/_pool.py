"""The worker's connection pool: every statement of the worker and of its runs borrows from it.

A connection is lent for one statement (or one short transaction) and given back at once, so the pool's
size bounds the worker's connections, not its concurrency. A connection idle for a while is checked (an
empty query) before it is lent: one that died meanwhile (a server restart, an idle timeout of a pooler) is
replaced instead of failing a run's write. A connection in steady use is lent without that round trip.

A connection given back is kept at hand (`_idle`, last in, first out) and lent again directly, without the
bookkeeping of `psycopg_pool` (two lock round trips, its statistics and log calls, a commit): the worker's
statements are many and short. Lending the last one used also keeps a busy worker on few connections, whose
prepared statements and server caches are warm. A connection goes back to `psycopg_pool` itself (which
resets, checks, replaces, expires and shrinks connections as before) when it is not idle (a transaction left
open) or broken, when another borrower waits for one there, after `IDLE_CHECK_AFTER` seconds unused, and
at least every `RECYCLE_AFTER` seconds.
"""

from __future__ import annotations

import time
import weakref
from types import TracebackType
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import AsyncRowFactory
from psycopg_pool import AsyncConnectionPool

from .._db import connection_pool

__all__ = ["IDLE_CHECK_AFTER", "RECYCLE_AFTER", "WorkerPool"]

IDLE_CHECK_AFTER = 30.0
"""Seconds a pooled connection may sit unused before it is checked (one empty query) when lent again."""

RECYCLE_AFTER = 60.0
"""Seconds a connection may be lent again directly before it passes through `psycopg_pool` once more."""

_IDLE = TransactionStatus.IDLE


_CURSORS_PER_CONNECTION = 4
"""Row factories whose cursor a connection keeps (the SDK uses two: none and `dict_row`)."""


class WorkerPool:
    """An `AsyncConnectionPool` of autocommit connections, lent one statement at a time."""

    def __init__(self, dsn: str, *, size: int, application_name: str, connect_timeout: float, name: str) -> None:
        self._last_used: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = weakref.WeakKeyDictionary()
        self._taken: dict[psycopg.AsyncConnection[Any], float] = {}
        """When each connection out of `pool` (lent or at hand) was taken from it."""
        self._idle: list[tuple[psycopg.AsyncConnection[Any], float]] = []
        """Connections out of `pool` that nobody uses, with when they were given back (the last one at the end)."""
        self._cursors: dict[psycopg.AsyncConnection[Any], dict[Any, psycopg.AsyncCursor[Any]]] = {}
        """The cursors of each connection out of `pool`, by row factory (`cursor`)."""
        self._asking = 0
        self._closed = False
        self.timeout = connect_timeout
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = connection_pool(
            dsn,
            min_size=1,
            max_size=size,
            application_name=application_name,
            connect_timeout=max(1, round(connect_timeout)),
            timeout=connect_timeout,
            check=self._check,
            name=name,
        )

    async def _check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        last = self._last_used.get(conn)
        if last is None or time.monotonic() - last > IDLE_CHECK_AFTER:
            await AsyncConnectionPool.check_connection(conn)

    def connection(self) -> _Lent:
        """Lend a connection for the block (checked first if it sat idle), then take it back."""
        return _Lent(self)

    async def get(self) -> psycopg.AsyncConnection[Any]:
        """A connection for the caller alone until `put` (prefer `connection()`)."""
        idle = self._idle
        if idle:
            conn, last = idle.pop()
            if time.monotonic() - last <= IDLE_CHECK_AFTER:
                return conn
            await self._give_back(conn, last)  # sat idle: `pool` checks it (or another one) before lending it
            while idle:  # the others sat idle even longer
                await self._give_back(*idle.pop())
        self._asking += 1
        try:
            conn = await self.pool.getconn(timeout=self.timeout)
        finally:
            self._asking -= 1
        self._taken[conn] = time.monotonic()
        return conn

    def cursor(
        self, conn: psycopg.AsyncConnection[Any], row_factory: AsyncRowFactory[Any] | None
    ) -> psycopg.AsyncCursor[Any]:
        """A cursor of `conn` (from `get`, not given back yet) with `row_factory`, reused by its later borrowers.

        Creating a cursor costs more than many statements' own work. A connection is lent to one borrower at a
        time, who runs a statement and reads its rows before giving it back, so its cursors are never shared
        by two statements at once. A cursor keeps the last result until its next statement, at most until its
        connection goes back to `pool`.
        """
        cursors = self._cursors.get(conn)
        if cursors is None:
            cursors = self._cursors[conn] = {}
        cur = cursors.get(row_factory)
        if cur is None:
            cur = conn.cursor(row_factory=row_factory) if row_factory else conn.cursor()
            if len(cursors) < _CURSORS_PER_CONNECTION:  # a row factory made per call (`class_row(...)`) is not kept
                cursors[row_factory] = cur
        return cur

    async def put(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Take back a connection from `get`."""
        now = time.monotonic()
        if (
            self._asking
            or self._closed
            or conn.pgconn.transaction_status != _IDLE  # also when closed or broken (libpq: unknown)
            or now - self._taken.get(conn, 0.0) > RECYCLE_AFTER
        ):
            await self._give_back(conn, now)
            return
        idle = self._idle
        idle.append((conn, now))
        if now - idle[0][1] > IDLE_CHECK_AFTER:  # unused for long: back to `pool`, which may close it
            await self._give_back(*idle.pop(0))

    async def _give_back(self, conn: psycopg.AsyncConnection[Any], last_used: float) -> None:
        self._taken.pop(conn, None)
        self._cursors.pop(conn, None)
        self._last_used[conn] = last_used
        await self.pool.putconn(conn)

    async def open(self) -> None:
        """Start connecting in the background (a claim waits for the first connection)."""
        self._closed = False
        await self.pool.open(wait=False)

    async def close(self) -> None:
        """Close every connection."""
        self._closed = True
        while self._idle:
            await self._give_back(*self._idle.pop())
        await self.pool.close()


class _Lent:
    """`WorkerPool.connection()`: `get` on entry, `put` on exit (a class: cheaper than a generator)."""

    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: WorkerPool) -> None:
        self._pool = pool
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def __aenter__(self) -> psycopg.AsyncConnection[Any]:
        self._conn = await self._pool.get()
        return self._conn

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._pool.put(conn)

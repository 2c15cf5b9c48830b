"""A stand-in for a task's connection that borrows a pooled connection for each statement.

`absurd_sdk.AsyncTaskContext` keeps the connection of its client in `_conn` and sends every statement of a
run on it: the checkpoint preload, checkpoint writes, heartbeats, `await_event`, `emit_event`, the run's
completion or failure. The production worker builds the per-task client on a `BorrowedConnection` instead
of a real connection, so a run holds a connection from the worker's pool only while one of its statements
runs: nothing is held across a model call or a tool body, and a pool of 10 serves hundreds of runs.

What the SDK (absurd-sdk 0.5.1) does with its connection, and all this class offers (pinned by
`tests/unit/worker/test_borrowed_connection.py`): `conn.cursor(row_factory=...)`, `await cursor.execute(query,
params)`, `await cursor.fetchone()` / `fetchall()`; this package's own writes on the task's connection add
`await conn.execute(query, params)` and `conn.info.dsn`. A statement borrows a connection, runs, reads all its
rows and gives the connection back before `execute` returns: one round trip, as on a held connection.

A connection that breaks during a statement fails that statement only; `broken` then tells the worker that
the run lost a connection (it hands the run back), and the pool replaces the broken connection for the
other runs.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from psycopg import AsyncConnection, AsyncCursor
from psycopg.pq import ExecStatus
from psycopg.rows import AsyncRowFactory

from ._sql_claims import CHECKPOINT_PRELOAD, Preloaded

__all__ = ["Borrow", "BorrowedConnection", "BorrowedCursor", "Lender", "unsupported_connection_uses"]

_TUPLES_OK = ExecStatus.TUPLES_OK

Borrow = Callable[[], AbstractAsyncContextManager[AsyncConnection[Any]]]
"""Lends a pooled autocommit connection for the block (the worker's `WorkerPool.connection`)."""


class Lender(Protocol):
    """What `Borrow` does, unrolled for one statement at a time (the worker's `WorkerPool`)."""

    async def get(self) -> AsyncConnection[Any]:
        """A connection for the caller alone until `put`."""
        ...

    async def put(self, conn: AsyncConnection[Any]) -> None:
        """Take back a connection from `get` (also when it broke)."""
        ...

    def cursor(self, conn: AsyncConnection[Any], row_factory: AsyncRowFactory[Any] | None) -> AsyncCursor[Any]:
        """A cursor of `conn` (from `get`) for one statement, maybe one used before."""
        ...


@dataclass(frozen=True)
class _Info:
    dsn: str
    """The worker's connection string, password included (psycopg's `info.dsn` leaves it out)."""
    password: str | None = None
    """Always `None`: `dsn` already holds it, so code that adds `info.password` to `info.dsn` needs no branch."""


class BorrowedCursor:
    """A cursor whose `execute` borrows a connection, runs the statement and keeps its rows in memory."""

    def __init__(self, owner: BorrowedConnection, row_factory: AsyncRowFactory[Any] | None) -> None:
        self._owner = owner
        self._row_factory = row_factory
        self._rows: list[Any] = []
        self._next = 0
        self.rowcount = -1

    async def execute(self, query: Any, params: Sequence[Any] | dict[str, Any] | None = None) -> BorrowedCursor:
        """Run `query` on a borrowed connection; its rows are read before the connection goes back.

        The checkpoint preload the claim answered already (`claim_with_checkpoints`) sends no statement.
        """
        owner = self._owner
        if owner.preloaded is not None and query == CHECKPOINT_PRELOAD:
            rows = owner.take_preloaded(params)
            if rows is not None:
                self._rows, self.rowcount, self._next = rows, len(rows), 0
                return self
        self._rows, self.rowcount = await owner.run(query, params, self._row_factory)
        self._next = 0
        return self

    async def fetchone(self) -> Any:
        """The next row of the last statement, or None."""
        if self._next >= len(self._rows):
            return None
        row = self._rows[self._next]
        self._next += 1
        return row

    async def fetchall(self) -> list[Any]:
        """The remaining rows of the last statement."""
        rows = self._rows[self._next :]
        self._next = len(self._rows)
        return rows

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while (row := await self.fetchone()) is not None:
            yield row

    async def __aenter__(self) -> BorrowedCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._rows = []

    async def close(self) -> None:
        """Forget the rows (nothing is held)."""
        self._rows = []


class BorrowedConnection:
    """What a task's client and context get as their connection: each statement borrows one from a pool."""

    autocommit = True

    def __init__(
        self, borrow: Borrow, dsn: str, *, lender: Lender | None = None, preloaded: Preloaded | None = None
    ) -> None:
        """Borrow with `borrow`; a single statement with `lender` when given (cheaper; same pool).

        `preloaded`: the answer to the run's checkpoint preload, read with its claim (used once).
        """
        self._borrow = borrow
        self._lender = lender
        self.preloaded = preloaded
        self.info = _Info(dsn)
        self.lost: BaseException | None = None
        """The error of the first statement whose connection broke, if one did."""

    def take_preloaded(self, params: Any) -> list[Any] | None:
        """The rows of the checkpoint preload with `params` if the claim read them (once), else None."""
        preloaded = self.preloaded
        if preloaded is None or tuple(params or ()) != preloaded[0]:
            return None
        self.preloaded = None
        return preloaded[1]

    @property
    def broken(self) -> bool:
        """Whether a statement of this run lost its connection (the run is then handed back)."""
        return self.lost is not None

    @property
    def closed(self) -> bool:
        """Never closed: a stand-in holds no connection."""
        return False

    def cursor(self, *, row_factory: AsyncRowFactory[Any] | None = None) -> BorrowedCursor:
        """A cursor like `AsyncConnection.cursor`'s, for one statement at a time."""
        return BorrowedCursor(self, row_factory)

    async def execute(self, query: Any, params: Sequence[Any] | dict[str, Any] | None = None) -> BorrowedCursor:
        """`AsyncConnection.execute`: run `query` on a borrowed connection, return a cursor over its rows."""
        return await self.cursor().execute(query, params)

    @asynccontextmanager
    async def borrow(self) -> AsyncGenerator[AsyncConnection[Any]]:
        """Lend a real connection for a few statements that belong together (a transaction)."""
        conn: AsyncConnection[Any] | None = None
        try:
            async with self._borrow() as conn:
                yield conn
        except psycopg.OperationalError as err:
            self._note_lost(conn, err)
            raise

    async def run(
        self, query: Any, params: Sequence[Any] | dict[str, Any] | None, row_factory: AsyncRowFactory[Any] | None
    ) -> tuple[list[Any], int]:
        """Run one statement on a borrowed connection: its rows and row count (`borrow`, unrolled)."""
        lender = self._lender
        conn: AsyncConnection[Any] | None = None
        try:
            if lender is None:
                async with self._borrow() as conn:
                    cur = conn.cursor(row_factory=row_factory) if row_factory is not None else conn.cursor()
                    return await _run_on(cur, query, params)
            conn = await lender.get()
            try:
                return await _run_on(lender.cursor(conn, row_factory), query, params)
            finally:
                await lender.put(conn)
        except psycopg.OperationalError as err:
            self._note_lost(conn, err)
            raise

    def _note_lost(self, conn: AsyncConnection[Any] | None, err: psycopg.OperationalError) -> None:
        if (conn is None or conn.broken or conn.closed) and self.lost is None:  # none to be had, or it broke
            self.lost = err


async def _run_on(
    cur: AsyncCursor[Any], query: Any, params: Sequence[Any] | dict[str, Any] | None
) -> tuple[list[Any], int]:
    await cur.execute(query, params)
    result = cur.pgresult
    rows = await cur.fetchall() if result is not None and result.status == _TUPLES_OK else []
    return rows, cur.rowcount


_SUPPORTED = frozenset({"cursor", "execute"})
_CONNECTION_USE = re.compile(r"\b(?:self\._conn|conn)\.(\w+)")


@functools.cache
def unsupported_connection_uses() -> tuple[str, ...]:
    """What the installed SDK does with a task's connection beyond what `BorrowedConnection` offers (start-up check).

    Reads the source of the SDK code that runs a claimed task: `AsyncTaskContext`, its creation, and the run's
    completion and failure. Empty on absurd-sdk 0.5.1.
    """
    import absurd_sdk

    names = ("_create_async_task_context", "_complete_task_run_async", "_fail_task_run_async")
    code = [absurd_sdk.AsyncTaskContext, *(getattr(absurd_sdk, name, None) for name in names)]
    try:
        sources = [inspect.getsource(obj) for obj in code if obj is not None]
    except (OSError, TypeError):  # pragma: no cover - an SDK installed without sources
        return ()
    if len(sources) < len(code):
        return tuple(f"absurd_sdk.{name}" for name in names if getattr(absurd_sdk, name, None) is None)
    used = {match for source in sources for match in _CONNECTION_USE.findall(source)}
    return tuple(sorted(f"AsyncTaskContext._conn.{name}" for name in used - _SUPPORTED))

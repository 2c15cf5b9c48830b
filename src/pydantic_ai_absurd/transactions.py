"""Exactly-once database writes from tools: `durable_transaction()`.

Inside a durable tool step the block runs on a pooled connection to the task's own database with a
transaction open, and its statements are not committed when the block exits: the step backend writes the
tool step's checkpoint in the same transaction and commits both when the tool body returns (the
`TransactionSlot` of `_execution`). Either the rows and the checkpoint exist, or neither does: a retried run
executes the tool again, a resumed one replays its result.

Outside a durable run the block is an ordinary transaction on `ABSURD_DATABASE_URL` (else the DSN of the
running `AbsurdAgent`'s Absurd client), committed when the block exits. In a task but outside any step (a tool
opted out of checkpoints, the task handler itself) it is an ordinary transaction on the task's database.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from types import TracebackType
from typing import Any

import psycopg
from absurd_sdk import AsyncTaskContext
from psycopg import AsyncConnection, IsolationLevel

from . import _absurd
from ._agent import current_agent_client
from ._db import borrow_connection, conninfo_of
from ._execution import TransactionSlot, current_step_body, current_task_context, require_task_context
from .errors import DurableTransactionError

__all__ = ["durable_transaction"]

_CONFLICTS = ("40001", "40P01")
"""SQLSTATEs of a serialization failure and a deadlock: the tool step runs its body again."""


def durable_transaction(
    *, isolation_level: IsolationLevel | None = None
) -> AbstractAsyncContextManager[AsyncConnection[Any]]:
    """A database transaction that commits together with the current tool step's checkpoint.

    ```python
    @agent.tool
    async def refund(ctx: RunContext[None], order_id: str, amount: int) -> str:
        async with durable_transaction() as conn:
            await conn.execute("insert into refunds (order_id, amount) values (%s, %s)", (order_id, amount))
        return f"refunded {amount} on {order_id}"
    ```

    In a durable tool step, the block's statements commit with the step's checkpoint when the tool returns,
    so they are written exactly once whatever crashes; an exception out of the block (or a `ModelRetry` the
    tool raises after it) rolls them back. At most one block per tool step; a serialization failure or a
    deadlock (SQLSTATE 40001 / 40P01) runs the tool again, a few times at most. Outside a durable run the
    block is an ordinary transaction committed at its end. Do not call `commit()` or `rollback()` on the
    connection; nested `conn.transaction()` blocks (savepoints) are fine.

    Args:
        isolation_level: The transaction's isolation level (default: the server's, usually read committed).
    """
    return _Block(isolation_level)


def is_conflict(error: BaseException) -> bool:
    """Whether `error` is a serialization failure or a deadlock, which a retry of the transaction can get past."""
    return isinstance(error, psycopg.Error) and error.sqlstate in _CONFLICTS


class _Block(AbstractAsyncContextManager[AsyncConnection[Any]]):
    def __init__(self, isolation_level: IsolationLevel | None) -> None:
        self._isolation_level = isolation_level
        self._slot: TransactionSlot | None = None
        self._held: _Held | None = None

    async def __aenter__(self) -> AsyncConnection[Any]:
        body = current_step_body()
        if body is None:
            self._held = await _Held.open(_plain_source(), self._isolation_level)
            return self._held.conn
        step = body.checkpoint_name or "(a wait or sleep)"
        slot = body.transaction
        if slot is None:
            raise DurableTransactionError(
                f"durable_transaction() was used in step {step!r}, which is not a tool call: only a function or "
                "toolset tool's step can commit a transaction with its checkpoint (not a model request, an MCP "
                "call or an event handler)."
            )
        if slot.used:
            raise DurableTransactionError(
                f"durable_transaction() was opened twice in tool step {step!r}: a tool step holds at most one "
                "block (put all its statements in one block)."
            )
        slot.used = True
        self._slot = slot
        self._held = await _Held.open(_task_source(require_task_context()), self._isolation_level)
        return self._held.conn

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        held, slot = self._held, self._slot
        assert held is not None, "the block was not entered"
        if exc is not None:
            if slot is not None and is_conflict(exc):
                slot.conflict = exc
            await held.rollback()
        elif slot is None:
            await held.commit_with(None)
        else:
            slot.pending = _Pending(held, slot)


class _Held:
    """A borrowed connection with its transaction open; given back after the commit or rollback."""

    def __init__(self, conn: AsyncConnection[Any], stack: AsyncExitStack) -> None:
        self.conn = conn
        self._stack = stack

    @classmethod
    async def open(cls, source: _Source, isolation_level: IsolationLevel | None) -> _Held:
        stack = AsyncExitStack()
        try:
            conn = await stack.enter_async_context(source)
            await conn.set_autocommit(False)  # psycopg begins the transaction at the first statement
            await conn.set_isolation_level(isolation_level)
        except BaseException:
            await stack.aclose()
            raise
        return cls(conn, stack)

    async def commit_with(self, write: Callable[[AsyncConnection[Any]], Awaitable[None]] | None) -> None:
        """Run `write(conn)` and commit, in one round trip (a pipeline); roll back and re-raise on failure."""
        try:
            async with self.conn.pipeline():
                if write is not None:
                    await write(self.conn)
                # A `COMMIT` statement, not `conn.commit()`: that one syncs the pipeline, and leaving it syncs again.
                await self.conn.execute("commit")
        except BaseException:
            await self.rollback()
            raise
        await self._give_back()

    async def rollback(self) -> None:
        """Roll back (unless the connection is gone) and give the connection back; a second call does nothing."""
        if self.conn.closed or self._stack is None:
            await self._give_back()
            return
        try:
            await self.conn.rollback()
        except psycopg.Error:
            await self.conn.close()  # the pool discards a closed connection
        await self._give_back()

    async def _give_back(self) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        try:
            if not self.conn.closed:
                await self.conn.set_isolation_level(None)
                await self.conn.set_autocommit(True)
        except psycopg.Error:
            await self.conn.close()
        finally:
            await stack.aclose()


class _Pending:
    """A tool step's open transaction, committed with its checkpoint by the step backend (`StepTransaction`)."""

    def __init__(self, held: _Held, slot: TransactionSlot) -> None:
        self._held = held
        self._slot = slot

    async def commit_with(self, write: Callable[[AsyncConnection[Any]], Awaitable[None]]) -> None:
        try:
            await self._held.commit_with(write)
        except BaseException as error:
            if is_conflict(error):
                self._slot.conflict = error
            raise

    async def rollback(self) -> None:
        await self._held.rollback()


_Source = AbstractAsyncContextManager[AsyncConnection[Any]]


def _task_source(task_ctx: AsyncTaskContext) -> _Source:
    """A connection to the task's database: from the worker's pool when our worker runs the task."""
    task_conn = _absurd.task_connection(task_ctx)
    if isinstance(task_conn, _absurd.BorrowedConnection):
        return task_conn.borrow()
    return borrow_connection(conninfo_of(task_conn))


def _plain_source() -> _Source:
    task_ctx = current_task_context()  # in a task, outside any step (a tool opted out of checkpoints, say)
    if task_ctx is not None:
        return _task_source(task_ctx)
    return borrow_connection(_plain_dsn())


def _plain_dsn() -> str:
    dsn = os.environ.get("ABSURD_DATABASE_URL")
    if dsn:
        return dsn
    client = current_agent_client()
    conninfo = _absurd.client_conninfo(client) if client is not None else None
    if conninfo:
        return conninfo
    raise DurableTransactionError(
        "durable_transaction() outside a durable run needs a database: set ABSURD_DATABASE_URL, or run it in a "
        "tool of an AbsurdAgent built with an Absurd client."
    )

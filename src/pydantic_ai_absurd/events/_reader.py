"""Reading a task's event log from any process: the backlog, then new events as `NOTIFY` announces them.

`LISTEN` needs a session of its own on the server: behind a transaction-mode pooler (PgBouncer) the
reader listens on `listen_dsn` (a direct connection string) when given, and otherwise reads the log every
`POOLED_POLL_INTERVAL` seconds, saying so once per process in a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import psycopg
from absurd_sdk import AsyncAbsurd
from psycopg import sql

from .._absurd import TERMINAL_TASK_STATES, client_conninfo, client_queue_name, task_state
from .._db import connect_async, fit_to_pooler
from .._dsn import redact_dsn
from ..client import TaskNotFoundError
from ..errors import EventLogError
from ._model import TaskEvent, decode_event

__all__ = ["FALLBACK_POLL_INTERVAL", "POOLED_POLL_INTERVAL", "channel_name", "read_events", "stream_events"]

logger = logging.getLogger("pydantic_ai_absurd.events")

FALLBACK_POLL_INTERVAL = 5.0
"""Seconds a reader waits for a notification before it reads the log anyway (a lost `NOTIFY`)."""

POOLED_POLL_INTERVAL = 0.5
"""Seconds between reads of a reader that cannot `LISTEN` (a pooled connection and no `listen_dsn`)."""

_said_polling: set[str] = set()
"""Connection strings whose readers were already reported as polling (one log line per process)."""

_PAGE = 1000


def channel_name(task_id: str) -> str:
    """The `LISTEN` channel announcing new events of `task_id` (payload: the last seq written)."""
    return f"pydantic_ai_absurd.events.{task_id}"


def task_uuid(task_id: str) -> str:
    try:
        return str(uuid.UUID(str(task_id)))
    except ValueError:
        raise TaskNotFoundError(f"{task_id!r} is not an Absurd task id (a UUID).") from None


async def read_events(
    conn: psycopg.AsyncConnection[Any], queue_name: str, task_id: str, *, after: int = 0, limit: int = _PAGE
) -> list[TaskEvent]:
    """Up to `limit` events of the log after `after`, in order (one query)."""
    try:
        cur = await conn.execute(
            "select seq, kind, event, attempt, step, created_at from pydantic_ai_absurd.events"
            " where queue_name = %s and task_id = %s and seq > %s order by seq limit %s",
            (queue_name, task_id, after, limit),
        )
    except psycopg.errors.UndefinedTable as error:
        raise EventLogError(
            "The event log of pydantic-ai-absurd is not installed in this database: run `pydantic-ai-absurd init` "
            "or `setup()` once."
        ) from error
    return [
        TaskEvent(seq=int(seq), event=decode_event(kind, value), attempt=attempt, step=step, created_at=created_at)
        for seq, kind, value, attempt, step, created_at in await cur.fetchall()
    ]


async def stream_events(
    absurd: AsyncAbsurd,
    task_id: str,
    *,
    after: int | str | None = None,
    queue_name: str | None = None,
    poll_interval: float = FALLBACK_POLL_INTERVAL,
    listen_dsn: str | None = None,
) -> AsyncIterator[TaskEvent]:
    """Yield the events of `task_id`'s log after `after`, live, until the run has finished.

    Works in any process that can reach the database: it reads the backlog, then waits on `LISTEN` for new
    events (reading the log anyway every `poll_interval` seconds, in case a notification was lost), and
    ends after the `RunFinishedEvent`. Starting from any `seq` yields exactly the events after it: no gap,
    no duplicate. Each call holds one connection of its own while it runs.

    Args:
        absurd: A client of the database (and, unless `queue_name` is given, of the queue) of the task.
        task_id: The task, as `spawn` returned it.
        after: The last `seq` the caller has seen (an int or its string); `None` or 0 for all.
        queue_name: The task's queue when it is not the client's.
        poll_interval: Seconds between reads when no notification arrives.
        listen_dsn: A direct connection string (a session, not through a transaction pooler) to `LISTEN`
            on, for a client whose connection goes through PgBouncer in transaction mode. Without it such a
            reader reads the log every `POOLED_POLL_INTERVAL` seconds instead (with one log line).

    Raises:
        TaskNotFoundError: the queue has no such task (a wrong id, or one removed by Absurd's cleanup).
        EventLogError: the event log is not installed in this database.
    """
    queue = queue_name or client_queue_name(absurd)
    task = task_uuid(task_id)
    seen = parse_after(after)
    conninfo = client_conninfo(absurd)
    if conninfo is None:
        raise EventLogError("stream_events needs an AsyncAbsurd client built with a connection string or connection.")
    async with _reader_connections(conninfo, listen_dsn, task) as (conn, listener):
        while True:
            # The state is read before the log: a finished task's last event committed with its state.
            state = await task_state(conn, queue, task)
            page = await read_events(conn, queue, task, after=seen)
            for item in page:
                yield item
                seen = item.seq
                if item.is_final:
                    return
            if len(page) == _PAGE:
                continue
            if state is None:
                raise TaskNotFoundError(f"No task {task} in queue {queue!r} (a wrong id or queue, or cleaned up).")
            if state in TERMINAL_TASK_STATES:
                return  # finished without publishing (or `after` is past its end)
            if listener is None:
                await asyncio.sleep(min(poll_interval, POOLED_POLL_INTERVAL))
                continue
            async for _ in listener.notifies(timeout=poll_interval, stop_after=1):
                pass


@contextlib.asynccontextmanager
async def _reader_connections(
    conninfo: str, listen_dsn: str | None, task: str
) -> AsyncGenerator[tuple[psycopg.AsyncConnection[Any], psycopg.AsyncConnection[Any] | None]]:
    """A reader's connection and its listener (the same one, another to `listen_dsn`, or None), closed after."""
    conn = await connect_async(conninfo, autocommit=True)
    listener: psycopg.AsyncConnection[Any] | None = None
    try:
        listener = await _listener(conn, conninfo, listen_dsn, task)
        yield conn, listener
    finally:
        if listener is not None and listener is not conn:
            await listener.close()
        await conn.close()


async def _listener(
    conn: psycopg.AsyncConnection[Any], conninfo: str, listen_dsn: str | None, task: str
) -> psycopg.AsyncConnection[Any] | None:
    """The connection that `LISTEN`s for `task`'s events: `conn` when direct, else one to `listen_dsn`, else None."""
    channel = sql.SQL("listen {}").format(sql.Identifier(channel_name(task)))
    if listen_dsn is None and await fit_to_pooler(conn, conninfo):
        await conn.execute(channel)
        return conn
    if listen_dsn is not None:
        listener = await connect_async(listen_dsn, autocommit=True)
        if await fit_to_pooler(listener, listen_dsn):
            await listener.execute(channel)
            return listener
        await listener.close()
    where = redact_dsn(listen_dsn or conninfo)
    if where not in _said_polling:
        _said_polling.add(where)
        logger.warning(
            "event readers poll the log every %.1fs: %s is not a direct session (PgBouncer in transaction mode?) "
            "and LISTEN needs one; pass listen_dsn= a direct connection string for instant delivery",
            POOLED_POLL_INTERVAL,
            where,
        )
    return None


def parse_after(after: int | str | None) -> int:
    if after is None or after == "":
        return 0
    try:
        value = int(after)
    except ValueError:
        raise EventLogError(f"{after!r} is not an event sequence number (an integer >= 0).") from None
    if value < 0:
        raise EventLogError(f"{after!r} is not an event sequence number (an integer >= 0).")
    return value

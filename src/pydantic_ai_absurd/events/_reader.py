"""Reading a task's event log from any process: the backlog, then new events as `NOTIFY` announces them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from absurd_sdk import AsyncAbsurd
from psycopg import sql

from .._absurd import TERMINAL_TASK_STATES, client_conninfo, client_queue_name, task_state
from .._db import connect_async
from ..client import TaskNotFoundError
from ..errors import EventLogError
from ._model import TaskEvent, decode_event

__all__ = ["FALLBACK_POLL_INTERVAL", "channel_name", "read_events", "stream_events"]

FALLBACK_POLL_INTERVAL = 5.0
"""Seconds a reader waits for a notification before it reads the log anyway (a lost `NOTIFY`)."""

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
    conn = await connect_async(conninfo, autocommit=True)
    try:
        await conn.execute(sql.SQL("listen {}").format(sql.Identifier(channel_name(task))))
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
            async for _ in conn.notifies(timeout=poll_interval, stop_after=1):
                pass
    finally:
        await conn.close()


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

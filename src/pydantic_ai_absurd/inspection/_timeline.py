"""`inspect_task` and `list_tasks`: a task's story from Absurd's tables and our checkpoints."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from typing import Any
from uuid import UUID

import psycopg
from absurd_sdk import AsyncAbsurd
from psycopg import AsyncConnection

from .. import _absurd
from .._db import borrow_connection, queue_not_found
from .._worker_records import read_lost_executions, registered_names
from ..client import TaskNotFoundError
from ..errors import QueueNotFoundError, SchemaNotInstalledError
from ._assemble import FORKED_FROM_HEADER, build_timeline
from ._family import read_family
from ._records import TaskSummary, TaskTimeline, TokenUsage

__all__ = ["FORKED_FROM_HEADER", "build_timeline", "inspect_task", "list_tasks"]

Source = AsyncAbsurd | AsyncConnection[Any] | str


@asynccontextmanager
async def _connection(source: Source) -> AsyncGenerator[AsyncConnection[Any]]:
    if isinstance(source, AsyncConnection):
        yield source
        return
    conninfo = source if isinstance(source, str) else _absurd.client_conninfo(source)
    if conninfo is None:
        raise SchemaNotInstalledError("The Absurd client has neither a connection nor a connection string.")
    async with borrow_connection(conninfo) as conn:  # a dashboard inspects often: reuse idle connections
        yield conn


def _default_queue(source: Source) -> str | None:
    return _absurd.client_queue_name(source) if isinstance(source, AsyncAbsurd) else None


@contextmanager
def _mapped_errors(queue: str) -> Generator[None]:
    """Raise the one-line error of a missing queue, schema or malformed task id instead of psycopg's."""
    try:
        yield
    except psycopg.Error as err:
        mapped = _map(err, queue)
        if mapped is not None:
            raise mapped from err
        raise


def _map(err: psycopg.Error, queue: str) -> Exception | None:
    if isinstance(err, psycopg.errors.UndefinedTable):
        return queue_not_found(queue, "check the name (`pydantic-ai-absurd tasks` lists every queue's tasks).")
    if isinstance(err, psycopg.errors.UndefinedFunction | psycopg.errors.InvalidSchemaName):
        return SchemaNotInstalledError(
            "The database has no Absurd schema: run `pydantic-ai-absurd init` (or `await setup(dsn)`) first."
        )
    if isinstance(err, psycopg.errors.InvalidTextRepresentation):
        return TaskNotFoundError("The task id is not a task id (a UUID).")
    return None


async def _queue_names(conn: AsyncConnection[Any]) -> list[str]:
    with _mapped_errors(""):
        return await _absurd.list_queue_names(conn)


async def inspect_task(absurd: Source, task_id: str | UUID, *, queue: str | None = None) -> TaskTimeline:
    """What task `task_id` did: its attempts, every step grouped by agent run, and the totals.

    Args:
        absurd: The `AsyncAbsurd` client (its database and queue are used), a psycopg `AsyncConnection`
            or a connection string.
        task_id: The task's id, as `spawn` returned it (a string or a `UUID`).
        queue: The task's queue. Defaults to the client's; with a connection or a string and no
            queue, every queue is searched.

    Raises:
        TaskNotFoundError: No such task (wrong id or queue, or removed by Absurd's cleanup).
    """
    task_id = str(task_id)
    async with _connection(absurd) as conn:
        target = queue or _default_queue(absurd)
        queues = [target] if target is not None else await _queue_names(conn)
        for name in queues:
            try:
                with _mapped_errors(name):
                    timeline = await _timeline_on(conn, name, task_id)
                    if timeline is None:
                        continue
                    family = await read_family(conn, name, task_id, _spent_by)
            except QueueNotFoundError:
                if target is not None:
                    raise
                continue  # dropped while every queue was searched
            return replace(timeline, parent=family.parent, children=family.children)
    where = f"queue {target!r}" if target is not None else "any queue"
    raise TaskNotFoundError(
        f"No task {task_id} in {where}: check the id and the queue, or it was removed by Absurd's cleanup."
    )


async def _timeline_on(conn: AsyncConnection[Any], name: str, task_id: str) -> TaskTimeline | None:
    """The timeline of a task of queue `name`, without its family; None when the queue has no such task."""
    task = await _absurd.read_task(conn, name, task_id)
    if task is None:
        return None
    runs = await _absurd.read_runs(conn, name, task_id)
    last_run = task["last_attempt_run"] or (runs[-1]["run_id"] if runs else None)
    rows = [] if last_run is None else await _absurd.read_checkpoints(conn, name, task_id, last_run)
    now = await _absurd.database_now(conn)
    lost = await read_lost_executions(conn, name, task_id)
    known = await registered_names(conn, name)
    timeline = build_timeline(name, task, runs, rows, now, lost)
    return replace(timeline, known_to_workers=None if known is None else timeline.task_name in known)


async def _spent_by(conn: AsyncConnection[Any], name: str, task_id: str) -> TokenUsage:
    timeline = await _timeline_on(conn, name, task_id)
    return TokenUsage() if timeline is None else timeline.totals.tokens_spent


async def list_tasks(
    absurd: Source,
    *,
    queue: str | None = None,
    state: str | None = None,
    name: str | None = None,
    since: float | None = None,
    limit: int = 50,
) -> list[TaskSummary]:
    """Tasks newest first, with state, attempts, age and the latest step.

    Args:
        absurd: The `AsyncAbsurd` client, a psycopg `AsyncConnection` or a connection string.
        queue: Only this queue. Defaults to the client's; with a connection or a string, every queue.
        state: Only tasks in this state (pending, running, sleeping, completed, failed, cancelled).
        name: Only tasks with this task name.
        since: Only tasks spawned in the last `since` seconds.
        limit: At most this many tasks (across queues).
    """
    async with _connection(absurd) as conn:
        target = queue or _default_queue(absurd)
        queues = [target] if target is not None else await _queue_names(conn)
        now = await _absurd.database_now(conn)
        summaries: list[TaskSummary] = []
        for queue_name in queues:
            try:
                with _mapped_errors(queue_name):
                    rows = await _absurd.list_tasks(
                        conn, queue_name, state=state, task_name=name, since_seconds=since, limit=limit
                    )
                    known = await registered_names(conn, queue_name)
            except QueueNotFoundError:
                if target is not None:
                    raise
                continue  # dropped while every queue was listed
            summaries.extend(
                TaskSummary(
                    task_id=str(row["task_id"]),
                    queue=queue_name,
                    task_name=str(row["task_name"]),
                    state=str(row["state"]),
                    attempts=int(row["attempts"]),
                    enqueued_at=row["enqueue_at"],
                    age_seconds=max((now - row["enqueue_at"]).total_seconds(), 0.0),
                    last_step=row["last_step"],
                    last_step_at=row["last_step_at"],
                    claimed_by=row["claimed_by"],
                    known_to_workers=None if known is None else str(row["task_name"]) in known,
                )
                for row in rows
            )
    summaries.sort(key=lambda summary: summary.task_id, reverse=True)  # UUIDv7: spawn order
    return summaries[:limit]

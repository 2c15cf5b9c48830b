"""What workers record in this package's tables for inspection: lost executions and registered task names.

Both tables come with `setup()`'s migrations (`004_lost_executions`, `005_task_registrations`). On a
database migrated before them, writes are skipped and reads return nothing, so a worker or an
inspection never fails for lack of them. Lost executions go with their task (the trigger that
`record_worker_tasks` installs, migration `006_worker_records_cleanup`); registrations go with their queue
(`schema.drop_queue_sync`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import psycopg
from absurd_sdk import AsyncAbsurd
from psycopg import AsyncConnection

from ._absurd import OrphanedRun, client_queue_name, registered_queue, registered_task_names
from .errors import one_line

logger = logging.getLogger("pydantic_ai_absurd.worker")

__all__ = [
    "install_cleanup_trigger",
    "read_lost_executions",
    "record_lost_executions",
    "record_registrations",
    "record_worker_tasks",
    "registered_names",
]

_LOST = "pydantic_ai_absurd.lost_executions"
_REGISTRATIONS = "pydantic_ai_absurd.task_registrations"
_INSTALL_TRIGGERS = "pydantic_ai_absurd.install_worker_record_triggers(text)"


async def _exists(conn: AsyncConnection[Any], table: str) -> bool:
    cur = await conn.execute("select to_regclass(%s) is not null", (table,))
    row = await cur.fetchone()
    return bool(row and row[0])


async def record_lost_executions(
    conn: AsyncConnection[Any], queue_name: str, runs: list[OrphanedRun], taken_over_by: str
) -> None:
    """Record the executions of `runs` that died with their worker (in the takeover's transaction)."""
    if not await _exists(conn, _LOST):
        return
    rows = [
        (queue_name, run.task_id, run.run_id, run.attempt, run.claimed_by, run.claimed_at, run.handed_back_at)
        for run in runs
    ]
    try:
        async with conn.transaction(), conn.cursor() as cur:  # a savepoint: a failed record keeps the takeover
            await cur.executemany(
                f"insert into {_LOST} (queue_name, task_id, run_id, attempt, worker, claimed_at, taken_over_at,"
                " taken_over_by) values (%s, %s, %s, %s, %s, %s, %s, %s) on conflict do nothing",
                [(*row, taken_over_by) for row in rows],
            )
    except psycopg.Error as err:
        logger.warning("cannot record the lost executions of a takeover: %s", one_line(err, with_type=True))


async def read_lost_executions(conn: AsyncConnection[Any], queue_name: str, task_id: str) -> list[dict[str, Any]]:
    """The lost executions of a task, oldest first: `run_id, attempt, worker, claimed_at, taken_over_at, taken_over_by`."""
    if not await _exists(conn, _LOST):
        return []
    cur = await conn.execute(
        f"select run_id::text as run_id, attempt, worker, claimed_at, taken_over_at, taken_over_by from {_LOST}"
        " where queue_name = %s and task_id = %s order by taken_over_at, run_id",
        (queue_name, task_id),
    )
    names = [column.name for column in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]


async def record_registrations(
    conn: AsyncConnection[Any], queue_name: str, task_names: Iterable[str], worker_id: str
) -> None:
    """Record that a worker of `queue_name` runs `task_names` (each name's latest registration wins)."""
    names = sorted(set(task_names))
    if not names or not await _exists(conn, _REGISTRATIONS):
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            f"insert into {_REGISTRATIONS} (queue_name, task_name, worker_id) values (%s, %s, %s)"
            " on conflict (queue_name, task_name) do update set worker_id = excluded.worker_id,"
            " registered_at = now()",
            [(queue_name, name, worker_id) for name in names],
        )


async def install_cleanup_trigger(conn: AsyncConnection[Any], queue_name: str) -> None:
    """Have Absurd's cleanup of a task of `queue_name` delete its lost executions (idempotent; skipped before 006)."""
    cur = await conn.execute("select to_regprocedure(%s) is not null", (_INSTALL_TRIGGERS,))
    row = await cur.fetchone()
    if row and row[0]:
        await conn.execute("select pydantic_ai_absurd.install_worker_record_triggers(%s)", (queue_name,))


async def record_worker_tasks(conn: AsyncConnection[Any], queue_name: str, absurd: AsyncAbsurd, worker_id: str) -> None:
    """Record the tasks a worker of `queue_name` runs (registered on `absurd` for that queue); log a failure.

    Also installs the trigger that deletes the queue's lost executions with their task, before this worker can
    record one.
    """
    runnable = (queue_name, client_queue_name(absurd))
    names = [name for name in registered_task_names(absurd) if registered_queue(absurd, name) in runnable]
    try:
        async with conn.transaction():  # a savepoint when the caller is in a transaction
            await record_registrations(conn, queue_name, names, worker_id)
    except psycopg.Error as err:
        logger.warning("cannot record the task names of this worker: %s", one_line(err, with_type=True))
    try:
        async with conn.transaction():
            await install_cleanup_trigger(conn, queue_name)
    except psycopg.Error as err:
        logger.warning(
            "cannot install the trigger that deletes lost executions with their task: %s",
            one_line(err, with_type=True),
        )


async def registered_names(conn: AsyncConnection[Any], queue_name: str) -> set[str] | None:
    """The task names workers recorded for `queue_name`, or None when none did (nothing is known)."""
    if not await _exists(conn, _REGISTRATIONS):
        return None
    cur = await conn.execute(f"select task_name from {_REGISTRATIONS} where queue_name = %s", (queue_name,))
    names = {str(row[0]) for row in await cur.fetchall()}
    return names or None

"""Raw SQL that reads Absurd's tasks, runs and checkpoints (inspection, verification, forks), and task copies.

The companion of `_sql` (runs and worker locks) and `_sql_schema` (schema version and queues). Each direct
read of a per-queue table (`t_`, `r_`, `c_`, `e_`) says so in its docstring.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.rows import class_row


async def read_task(conn: AsyncConnection[Any], queue_name: str, task_id: str) -> dict[str, Any] | None:
    """One task's row from `t_<queue>`, with `result` and `failure_reason` from `absurd.get_task_result`.

    Columns: `task_name, params, headers, state, attempts, max_attempts, enqueue_at, first_started_at,
    cancelled_at, last_attempt_run`. `None` when the queue has no such task.
    """
    query = sql.SQL(
        "select t.task_id::text as task_id, t.task_name, t.params, t.headers, t.state, t.attempts, t.max_attempts,"
        " t.enqueue_at, t.first_started_at, t.cancelled_at, t.last_attempt_run::text as last_attempt_run,"
        " g.result, g.failure_reason"
        " from absurd.{} t cross join lateral absurd.get_task_result(%s, t.task_id) g"
        " where t.task_id = %s"
    ).format(sql.Identifier(f"t_{queue_name}"))
    cur = await conn.execute(query, (queue_name, task_id))
    return await _one_dict(cur)


async def read_runs(conn: AsyncConnection[Any], queue_name: str, task_id: str) -> list[dict[str, Any]]:
    """A task's runs (one per attempt) from `r_<queue>`, oldest first.

    Columns: `run_id, attempt, state, claimed_by, claim_expires_at, available_at, wake_event, started_at`
    (the latest claim), `completed_at, failed_at, failure_reason, created_at`. A run waiting for an event
    without timeout is available at `infinity`, read as `None`.
    """
    query = sql.SQL(
        "select run_id::text as run_id, attempt, state, claimed_by,"
        " nullif(claim_expires_at, 'infinity') as claim_expires_at,"
        " nullif(available_at, 'infinity') as available_at, wake_event,"
        " started_at, completed_at, failed_at, failure_reason, created_at"
        " from absurd.{} where task_id = %s order by attempt, created_at"
    ).format(sql.Identifier(f"r_{queue_name}"))
    cur = await conn.execute(query, (task_id,))
    return await _all_dicts(cur)


@dataclass(frozen=True)
class CheckpointRow:
    """One committed checkpoint as `absurd.get_task_checkpoint_states` returns it."""

    checkpoint_name: str
    state: Any
    """The checkpoint's JSON value, decoded by psycopg (read it through `_checkpoint`)."""
    owner_run_id: str | None
    """The run that wrote it."""
    updated_at: datetime
    """When it was committed (Absurd's clock)."""


async def read_checkpoints(
    conn: AsyncConnection[Any], queue_name: str, task_id: str, run_id: str
) -> list[CheckpointRow]:
    """The committed checkpoints `run_id` sees (`absurd.get_task_checkpoint_states`), in write order.

    Given the task's latest run, that is all of them.
    """
    async with conn.cursor(row_factory=class_row(CheckpointRow)) as cur:
        await cur.execute(
            "select checkpoint_name, state, owner_run_id::text as owner_run_id, updated_at"
            " from absurd.get_task_checkpoint_states(%s, %s, %s)",
            (queue_name, task_id, run_id),
        )
        return await cur.fetchall()


async def list_queue_names(conn: AsyncConnection[Any]) -> list[str]:
    """Every queue's name (`absurd.list_queues()`)."""
    cur = await conn.execute("select queue_name from absurd.list_queues() order by queue_name")
    return [str(row[0]) for row in await cur.fetchall()]


async def list_tasks(
    conn: AsyncConnection[Any],
    queue_name: str,
    *,
    state: str | None = None,
    task_name: str | None = None,
    since_seconds: float | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Tasks of a queue from `t_<queue>`, newest first (task ids are UUIDv7, so the primary key is in spawn order).

    Each with its latest run from `r_<queue>` (`run_state`, `claimed_by`) and its latest committed checkpoint
    from `c_<queue>` (`last_step`, `last_step_at`).
    """
    query = sql.SQL(
        "select t.task_id::text as task_id, t.task_name, t.state, t.attempts, t.enqueue_at, t.first_started_at,"
        " t.headers, r.state as run_state, r.claimed_by, r.completed_at, r.failed_at,"
        " c.checkpoint_name as last_step, c.updated_at as last_step_at"
        " from absurd.{tasks} t"
        " left join absurd.{runs} r on r.run_id = t.last_attempt_run"
        " left join lateral (select checkpoint_name, updated_at from absurd.{checkpoints} c"
        "   where c.task_id = t.task_id and c.status = 'committed'"
        "   order by c.updated_at desc limit 1) c on true"
        " where (%(state)s::text is null or t.state = %(state)s)"
        " and (%(name)s::text is null or t.task_name = %(name)s)"
        " and (%(since)s::float8 is null"
        "      or t.enqueue_at >= absurd.current_time() - make_interval(secs => %(since)s::float8))"
        " order by t.task_id desc limit %(limit)s"
    ).format(
        tasks=sql.Identifier(f"t_{queue_name}"),
        runs=sql.Identifier(f"r_{queue_name}"),
        checkpoints=sql.Identifier(f"c_{queue_name}"),
    )
    cur = await conn.execute(query, {"state": state, "name": task_name, "since": since_seconds, "limit": limit})
    return await _all_dicts(cur)


async def database_now(conn: AsyncConnection[Any]) -> Any:
    """Absurd's clock (`absurd.current_time()`), to compute ages against the database's time."""
    cur = await conn.execute("select absurd.current_time()")
    row = await cur.fetchone()
    assert row is not None
    return row[0]


async def _one_dict(cur: psycopg.AsyncCursor[Any]) -> dict[str, Any] | None:
    row = await cur.fetchone()
    if row is None:
        return None
    names = [column.name for column in cur.description or ()]
    return dict(zip(names, row, strict=True))


async def _all_dicts(cur: psycopg.AsyncCursor[Any]) -> list[dict[str, Any]]:
    names = [column.name for column in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]


TASK_STATES = ("pending", "running", "sleeping", "completed", "failed", "cancelled")
"""Every state of an Absurd task."""

TERMINAL_TASK_STATES = ("completed", "failed", "cancelled")
"""States of a row of `absurd.t_<queue>` after which the task never runs again (unless retried by hand)."""


def task_states(queue_name: str) -> sql.Composed:
    """`absurd.t_<queue>` as an identifier (columns `task_id uuid`, `state text`), for joins on task state."""
    return sql.SQL("absurd.{}").format(sql.Identifier(f"t_{queue_name}"))


def emitted_events(queue_name: str) -> sql.Composed:
    """`absurd.e_<queue>` as an identifier (`event_name text primary key`, `payload jsonb`; SQL NULL = not emitted)."""
    return sql.SQL("absurd.{}").format(sql.Identifier(f"e_{queue_name}"))


async def existing_queues(conn: AsyncConnection[Any], names: list[str]) -> list[str]:
    """Which of `names` are queues of this database (rows of `absurd.queues`)."""
    cur = await conn.execute("select queue_name from absurd.queues where queue_name = any(%s)", (names,))
    return [str(row[0]) for row in await cur.fetchall()]


async def task_ids_in_states(conn: AsyncConnection[Any], queue_name: str, states: list[str]) -> list[str]:
    """IDs of the tasks of `queue_name` whose state is one of `states`, oldest first (reads `t_<queue>`)."""
    query = sql.SQL("select task_id::text from absurd.{} where state = any(%s) order by enqueue_at, task_id").format(
        sql.Identifier(f"t_{queue_name}")
    )
    cur = await conn.execute(query, (states,))
    return [str(row[0]) for row in await cur.fetchall()]


async def task_options(conn: AsyncConnection[Any], queue_name: str, task_id: str) -> dict[str, Any] | None:
    """A task's `retry_strategy`, `max_attempts` and `cancellation` (reads `t_<queue>`), for a copy of it."""
    query = sql.SQL("select retry_strategy, max_attempts, cancellation from absurd.{} where task_id = %s").format(
        sql.Identifier(f"t_{queue_name}")
    )
    cur = await conn.execute(query, (task_id,))
    return await _one_dict(cur)


async def spawn_with_checkpoints(
    conn: AsyncConnection[Any],
    queue_name: str,
    task_name: str,
    params: Any,
    options: dict[str, Any],
    checkpoints: list[tuple[str, Any]],
) -> str:
    """Spawn a task that already has `checkpoints` (name, state), in one transaction; return its ID.

    `absurd.spawn_task`, then `absurd.set_task_checkpoint_state` for each checkpoint, owned by the new run.
    """
    async with conn.transaction():
        cur = await conn.execute(
            "select task_id::text, run_id::text from absurd.spawn_task(%s, %s, %s::jsonb, %s::jsonb)",
            (queue_name, task_name, json.dumps(params), json.dumps(options)),
        )
        row = await cur.fetchone()
        assert row is not None
        task_id, run_id = str(row[0]), str(row[1])
        for name, state in checkpoints:
            await conn.execute(
                "select absurd.set_task_checkpoint_state(%s, %s, %s, %s::jsonb, %s, null)",
                (queue_name, task_id, name, json.dumps(state), run_id),
            )
    return task_id


async def task_state(conn: AsyncConnection[Any], queue_name: str, task_id: str) -> str | None:
    """A task's state (`pending`, `running`, `sleeping`, `completed`, `failed`, `cancelled`) from `t_<queue>`.

    `None` when the queue has no such task (a wrong id, or a task removed by Absurd's cleanup).
    """
    query = sql.SQL("select state from absurd.{} where task_id = %s").format(sql.Identifier(f"t_{queue_name}"))
    cur = await conn.execute(query, (task_id,))
    row = await cur.fetchone()
    return None if row is None else str(row[0])

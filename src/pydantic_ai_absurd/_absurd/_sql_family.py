"""Raw SQL on Absurd's functions for child tasks: spawn with a parent link, a task's end, cancel by id."""

from __future__ import annotations

import json
from typing import Any

from psycopg import AsyncConnection

__all__ = ["TaskEnd", "cancel_task_sql", "spawn_linked_child", "task_end"]

TaskEnd = tuple[str, Any, Any]
"""`(state, result, failure_reason)` of a task (`absurd.get_task_result`)."""


async def spawn_linked_child(
    conn: AsyncConnection[Any],
    *,
    queue_name: str,
    task_name: str,
    params: Any,
    options: dict[str, Any],
    parent_queue: str,
    parent_task_id: str,
    call_site: str,
    request_key: str,
    event_prefix: str,
) -> tuple[str, str | None]:
    """`absurd.spawn_task` and the row of `pydantic_ai_absurd.child_tasks` linking it to its parent, in one statement.

    With an `idempotency_key` in `options`, a repeat returns the task spawned first (and links nothing new).
    The event the child's end emits on the parent's queue is `event_prefix` followed by the child's id.
    Returns the child's id and, for a repeat, the `request_key` the first spawn recorded (None for a new child).
    """
    cur = await conn.execute(
        "with spawned as (select task_id from absurd.spawn_task(%s, %s, %s::jsonb, %s::jsonb)),"
        " linked as (insert into pydantic_ai_absurd.child_tasks"
        "  (child_queue, child_task_id, parent_queue, parent_task_id, task_name, call_site, request_key, event_name)"
        "  select %s, task_id, %s, %s::uuid, %s, %s, %s, %s || task_id::text from spawned"
        "  on conflict (child_queue, child_task_id) do nothing)"
        " select s.task_id::text, (select c.request_key from pydantic_ai_absurd.child_tasks c"
        "  where c.child_queue = %s and c.child_task_id = s.task_id) from spawned s",
        (
            queue_name,
            task_name,
            json.dumps(params),
            json.dumps(options),
            queue_name,
            parent_queue,
            parent_task_id,
            task_name,
            call_site,
            request_key,
            event_prefix,
            queue_name,
        ),
    )
    row = await cur.fetchone()
    assert row is not None
    return str(row[0]), None if row[1] is None else str(row[1])


async def task_end(conn: AsyncConnection[Any], queue_name: str, task_id: str) -> TaskEnd | None:
    """A task's `(state, result, failure_reason)`; None when the queue has no such task."""
    cur = await conn.execute(
        "select state, result, failure_reason from absurd.get_task_result(%s, %s::uuid)", (queue_name, task_id)
    )
    row = await cur.fetchone()
    return None if row is None else (str(row[0]), row[1], row[2])


async def cancel_task_sql(conn: AsyncConnection[Any], queue_name: str, task_id: str) -> None:
    """`absurd.cancel_task`: a finished task is left as it is."""
    await conn.execute("select absurd.cancel_task(%s, %s::uuid)", (queue_name, task_id))

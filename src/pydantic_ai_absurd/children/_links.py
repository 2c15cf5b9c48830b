"""The parent/child links in `pydantic_ai_absurd.child_tasks` and the triggers that act on them.

The triggers (migration `008_child_tasks.sql`) wake a parent when a child ends, cancel a cancelled or
failed parent's unfinished children, and delete links with their tasks. `install_triggers` adds them to a
queue's task table once per process; `cancel_descendants` is the eager cascade of this package's own cancel
paths (the CLI), for queues whose triggers are missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection

from .. import _absurd
from ..errors import SchemaNotInstalledError

__all__ = ["ChildLink", "cancel_descendants", "install_triggers", "read_children", "read_parent"]

logger = logging.getLogger("pydantic_ai_absurd.children")

_installed: set[tuple[str | None, str]] = set()


async def install_triggers(conn: AsyncConnection[Any], queue_name: str) -> None:
    """Make sure `queue_name`'s task table has the child-task triggers (a no-op after the first call per process)."""
    key = (conn.info.dsn, queue_name)
    if key in _installed:
        return
    for attempt in (1, 2):  # two processes creating the same trigger at once: the second try sees it
        try:
            await conn.execute("select pydantic_ai_absurd.install_child_task_triggers(%s)", (queue_name,))
            break
        except psycopg.errors.UndefinedFunction as error:
            raise SchemaNotInstalledError(
                "Child tasks need the child_tasks migration of the pydantic_ai_absurd schema: run `pydantic-ai-absurd init` "
                "or `setup()` once."
            ) from error
        except psycopg.errors.OperationalError:
            raise
        except psycopg.Error:
            if attempt == 2:
                raise
    _installed.add(key)


@dataclass(frozen=True)
class ChildLink:
    """One child task of a parent, as linked: where it runs and which call of the parent started it."""

    queue: str
    task_id: str
    task_name: str
    call_site: str
    parent_queue: str
    parent_task_id: str


_COLUMNS = "child_queue, child_task_id::text, task_name, call_site, parent_queue, parent_task_id::text"


def _link(row: tuple[Any, ...]) -> ChildLink:
    return ChildLink(*(str(value) for value in row))


async def read_children(conn: AsyncConnection[Any], queue_name: str, task_id: str) -> list[ChildLink]:
    """The children of a task, in spawn order (empty without the table)."""
    try:
        cur = await conn.execute(
            f"select {_COLUMNS} from pydantic_ai_absurd.child_tasks"
            " where parent_queue = %s and parent_task_id = %s::uuid order by created_at, child_task_id",
            (queue_name, task_id),
        )
    except psycopg.errors.UndefinedTable:
        return []
    return [_link(row) for row in await cur.fetchall()]


async def read_parent(conn: AsyncConnection[Any], queue_name: str, task_id: str) -> ChildLink | None:
    """The link of a child task to its parent, or None for a task no durable run spawned as a child."""
    try:
        cur = await conn.execute(
            f"select {_COLUMNS} from pydantic_ai_absurd.child_tasks where child_queue = %s and child_task_id = %s::uuid",
            (queue_name, task_id),
        )
    except psycopg.errors.UndefinedTable:
        return None
    row = await cur.fetchone()
    return None if row is None else _link(row)


async def cancel_descendants(conn: AsyncConnection[Any], queue_name: str, task_id: str) -> list[str]:
    """Cancel every unfinished descendant of a task (children, theirs, ...); returns the ids cancelled.

    Each cancel is its own statement on `conn` (autocommit); a child already finished is left as it is.
    """
    cancelled: list[str] = []
    todo = [(queue_name, task_id)]
    seen: set[tuple[str, str]] = set()
    while todo:
        parent = todo.pop()
        if parent in seen:
            continue
        seen.add(parent)
        for child in await read_children(conn, *parent):
            end = await _absurd.task_end(conn, child.queue, child.task_id)
            if end is not None and end[0] not in _absurd.TERMINAL_TASK_STATES:
                await _absurd.cancel_task_sql(conn, child.queue, child.task_id)
                cancelled.append(child.task_id)
            todo.append((child.queue, child.task_id))
    return cancelled

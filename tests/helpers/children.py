"""Helpers of the child-task system tests: `children_app` worker processes, what they recorded in Postgres."""

from __future__ import annotations

from typing import Any

import psycopg
from absurd_sdk import AsyncAbsurd

from .apps.children_app import TABLES
from .processes import WorkerProcess, Workers, app_command

__all__ = [
    "calls",
    "child_links",
    "open_gate",
    "prepare_tables",
    "spawn_coordinator",
    "start_worker",
    "state_of",
    "worker_by_pid",
]


def prepare_tables(dsn: str) -> None:
    """Create the tables `children_app` records its calls in and reads its gates from."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(TABLES)


def start_worker(workers: Workers, dsn: str, queue: str, **settings: Any) -> WorkerProcess:
    """Start a `children_app` worker through the `workers` fixture (settings as `WORKER_<NAME>` variables)."""
    return workers.worker(dsn, queue, command=app_command("children_app"), log="children", **settings)


def worker_by_pid(workers: Workers, pid: int) -> WorkerProcess:
    """The worker process the fixture started with process id `pid`."""
    return next(w for w in workers.started if isinstance(w, WorkerProcess) and w.pid == pid)


async def calls(dsn: str, queue: str, what: str | None = None) -> list[tuple[str, str, int]]:
    """`(what, topic, pid)` rows recorded by the app on `queue`, in order."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "select what, topic, pid from child_calls where queue = %s and (%s::text is null or what = %s) order by at",
            (queue, what, what),
        )
        return [(str(a), str(b), int(c)) for a, b, c in await cur.fetchall()]


async def open_gate(dsn: str, queue: str, name: str) -> None:
    """Let the app's calls waiting on the gate `name` go on."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("insert into child_gates values (%s, %s)", (queue, name))


async def child_links(dsn: str, parent_queue: str, parent_id: str) -> list[tuple[str, str, str]]:
    """`(child queue, child id, state)` of a task's children, in spawn order."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "select l.child_queue, l.child_task_id::text, g.state from pydantic_ai_absurd.child_tasks l"
            " cross join lateral absurd.get_task_result(l.child_queue, l.child_task_id) g"
            " where l.parent_queue = %s and l.parent_task_id = %s::uuid order by l.created_at",
            (parent_queue, parent_id),
        )
        return [(str(a), str(b), str(c)) for a, b, c in await cur.fetchall()]


async def state_of(dsn: str, queue: str, task_id: str) -> str:
    """The task's state, as Absurd reports it."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("select state from absurd.get_task_result(%s, %s::uuid)", (queue, task_id))
        row = await cur.fetchone()
        assert row is not None
        return str(row[0])


async def spawn_coordinator(dsn: str, queue: str, topics: list[str], **params: Any) -> str:
    """Spawn the app's `coordinate` task on `queue` for `topics`; its task id."""
    absurd = AsyncAbsurd(dsn, queue_name=queue)
    try:
        spawned = await absurd.spawn("coordinate", {"topics": topics, **params}, queue=queue)
    finally:
        await absurd.close()
    return str(spawned["task_id"])

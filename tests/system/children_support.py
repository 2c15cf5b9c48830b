"""Helpers for the child-task system tests: worker processes of `children_app`, counts read from Postgres."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from absurd_sdk import AsyncAbsurd

from ..worker_support import WorkerProcess, eventually
from .children_app import TABLES

__all__ = [
    "Workers",
    "calls",
    "child_links",
    "eventually",
    "open_gate",
    "prepare_tables",
    "spawn_coordinator",
    "state_of",
    "workers_for",
]

COMMAND = [sys.executable, "-m", "tests.system.children_app"]


def prepare_tables(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(TABLES)


class Workers:
    """Worker processes of `children_app`, killed at the end of the test."""

    def __init__(self, dsn: str, queue: str, tmp_path: Path) -> None:
        self.dsn, self.queue, self.tmp_path = dsn, queue, tmp_path
        self.started: list[WorkerProcess] = []

    def start(self, **settings: Any) -> WorkerProcess:
        log = self.tmp_path / f"worker{len(self.started)}.log"
        worker = WorkerProcess(self.dsn, self.queue, log, command=COMMAND, **settings)
        self.started.append(worker)
        return worker

    def by_pid(self, pid: int) -> WorkerProcess:
        return next(worker for worker in self.started if worker.pid == pid)

    def close(self) -> None:
        for worker in self.started:
            worker.close()


@contextmanager
def workers_for(dsn: str, queue: str, tmp_path: Path) -> Iterator[Workers]:
    workers = Workers(dsn, queue, tmp_path)
    try:
        yield workers
    finally:
        workers.close()


async def calls(dsn: str, queue: str, what: str | None = None) -> list[tuple[str, str, int]]:
    """`(what, topic, pid)` rows recorded by the app on `queue`, in order."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "select what, topic, pid from child_calls where queue = %s and (%s::text is null or what = %s) order by at",
            (queue, what, what),
        )
        return [(str(a), str(b), int(c)) for a, b, c in await cur.fetchall()]


async def open_gate(dsn: str, queue: str, name: str) -> None:
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
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("select state from absurd.get_task_result(%s, %s::uuid)", (queue, task_id))
        row = await cur.fetchone()
        assert row is not None
        return str(row[0])


async def spawn_coordinator(dsn: str, queue: str, topics: list[str], **params: Any) -> str:
    absurd = AsyncAbsurd(dsn, queue_name=queue)
    try:
        spawned = await absurd.spawn("coordinate", {"topics": topics, **params}, queue=queue)
    finally:
        await absurd.close()
    return str(spawned["task_id"])

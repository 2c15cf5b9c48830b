"""What the tests read from Absurd's tables, through the library's own queries (`pydantic_ai_absurd._absurd`).

Reads that do not depend on the database clock reuse connections within a test's event loop (`borrow_connection`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd

from pydantic_ai_absurd import _db as db
from pydantic_ai_absurd._absurd import (
    CheckpointRow,
    database_now,
    list_queue_names,
    read_checkpoints,
    read_runs,
    read_task,
    task_options,
)
from pydantic_ai_absurd._db import borrow_connection, open_connection

from .polling import wait_until


async def task_state(dsn: str, queue: str, task_id: str) -> dict[str, Any]:
    """The task's `state`, `attempts`, `max_attempts` and `retry_strategy`."""
    async with borrow_connection(dsn) as conn:
        task = await read_task(conn, queue, task_id)
        options = await task_options(conn, queue, task_id)
    assert task is not None and options is not None, f"no task {task_id} in queue {queue}"
    return {
        "state": task["state"],
        "attempts": task["attempts"],
        "max_attempts": task["max_attempts"],
        "retry_strategy": options["retry_strategy"],
    }


async def runs(dsn: str, queue: str, task_id: str) -> list[dict[str, Any]]:
    """The task's runs, oldest first, each with the database's clock at reading time as `now`."""
    async with open_connection(dsn) as conn:
        rows = await read_runs(conn, queue, task_id)
        now = await database_now(conn)
    return [{**row, "now": now} for row in rows]


async def latest_run(dsn: str, queue: str, task_id: str) -> dict[str, Any]:
    """The `state` and `claimed_by` of the task's latest run."""
    rows = await runs(dsn, queue, task_id)
    assert rows, f"no run of task {task_id} in queue {queue}"
    return {"state": rows[-1]["state"], "claimed_by": rows[-1]["claimed_by"]}


async def _checkpoint_rows(dsn: str, queue: str, task_id: str) -> list[CheckpointRow]:
    async with borrow_connection(dsn) as conn:  # reused within the test's event loop: polled often
        task = await read_task(conn, queue, task_id)
        assert task is not None, f"no task {task_id} in queue {queue}"
        rows = await read_checkpoints(conn, queue, task_id, task["last_attempt_run"])
    return sorted(rows, key=lambda row: (row.updated_at, row.checkpoint_name))


async def checkpoint_names(dsn: str, queue: str, task_id: str) -> list[str]:
    """The checkpoint names stored for `task_id`, in the order they were written."""
    return [row.checkpoint_name for row in await _checkpoint_rows(dsn, queue, task_id)]


async def checkpoints(dsn: str, queue: str, task_id: str) -> dict[str, Any]:
    """The stored checkpoint states of `task_id`, by name."""
    return {row.checkpoint_name: row.state for row in await _checkpoint_rows(dsn, queue, task_id)}


async def database_clock(dsn: str) -> datetime:
    """Absurd's clock (`absurd.current_time()`), which the tests may move (`absurd.fake_now`)."""
    async with open_connection(dsn) as conn:
        return await database_now(conn)


async def wait_for_database_clock(dsn: str, moment: datetime) -> None:
    """Wait until Absurd's clock reaches `moment`."""
    async with open_connection(dsn) as conn:

        async def reached() -> bool:
            return await database_now(conn) >= moment

        await wait_until(reached)


async def queue_names(dsn: str) -> set[str]:
    """The names of the queues in the database of `dsn`."""
    async with open_connection(dsn) as conn:
        return set(await list_queue_names(conn))


async def close_idle_connections() -> None:
    """Close the connections `borrow_connection` keeps idle for this event loop."""
    idle = db._IDLE.get(asyncio.get_running_loop(), {})  # pyright: ignore[reportPrivateUsage]
    for conns in idle.values():
        while conns:
            await conns.pop().close()


def queue_names_sync(dsn: str) -> set[str]:
    """`queue_names` for synchronous tests."""
    return asyncio.run(queue_names(dsn))


@contextlib.asynccontextmanager
async def client_on_fake_clock(
    dsn: str, queue: str, *, new_connections: pytest.MonkeyPatch | None = None
) -> AsyncIterator[tuple[AsyncAbsurd, FakeClock]]:
    """A client whose one connection runs on Absurd's fake clock (`absurd.fake_now`, a setting of that session
    only), stopped at the database's time; move it with the `FakeClock`. Whatever runs through this client
    (claims, task runs, `run_queued`) sees the fake time; other connections keep the real one, unless
    `new_connections` is given: then the connections this process opens from now on start at the clock's
    time too (libpq's `PGOPTIONS`, set through that monkeypatch), e.g. those the `Inbox` opens, and those kept
    idle by `borrow_connection` are closed whenever the clock moves."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        clock = FakeClock(conn, new_connections)
        await clock.set(await database_now(conn))
        client = AsyncAbsurd(conn, queue_name=queue)
        try:
            yield client, clock
        finally:
            await client.close()


class FakeClock:
    """Absurd's clock on one connection (and optionally on the connections opened later): stopped, and moved
    only by `advance`."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], new_connections: pytest.MonkeyPatch | None = None) -> None:
        self.conn = conn
        self._env = new_connections

    async def set(self, moment: datetime) -> None:
        """Stop the clock at `moment`."""
        text = moment.isoformat()  # no blank: it goes into PGOPTIONS as is
        await self.conn.execute("select set_config('absurd.fake_now', %s, false)", (text,))
        if self._env is not None:
            self._env.setenv("PGOPTIONS", f"-c absurd.fake_now={text}")
            await close_idle_connections()  # kept by `borrow_connection`, they would show the time they opened at

    async def now(self) -> datetime:
        """The time the clock shows."""
        return await database_now(self.conn)

    async def advance(self, delta: timedelta) -> None:
        """Move the clock `delta` forward."""
        await self.set(await self.now() + delta)

"""Helpers for the worker tests: run a `Worker` in-process, poll Postgres, read Absurd's tables."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import psycopg
from absurd_sdk import AsyncAbsurd
from psycopg import sql

from pydantic_ai_absurd.worker import Worker, WorkerConfig

WAIT = 20.0
"""Generous bound (seconds) for anything the tests wait for; never a performance assertion."""


async def eventually(check: Callable[[], Awaitable[Any]], *, timeout: float = WAIT, interval: float = 0.05) -> Any:
    """Poll `check` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {check}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def running_worker(absurd: AsyncAbsurd, **config: Any) -> AsyncGenerator[Worker]:
    """Run a `Worker` (no signal handlers, fast polling) for the body; stop and drain it afterwards."""
    config.setdefault("handle_signals", False)
    config.setdefault("poll_interval", 0.05)
    config.setdefault("drain_timeout", 5.0)
    worker = Worker(absurd, WorkerConfig(**config))
    job = asyncio.ensure_future(worker.run())
    try:
        yield worker
    finally:
        if not worker.health.stopping:
            worker.request_stop()
        await asyncio.wait_for(job, timeout=WAIT)


async def task_state(dsn: str, queue: str, task_id: str) -> dict[str, Any]:
    """Row of `absurd.t_<queue>` for the task (state, attempts, max_attempts, retry_strategy)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            sql.SQL("select state, attempts, max_attempts, retry_strategy from absurd.{} where task_id = %s").format(
                sql.Identifier(f"t_{queue}")
            ),
            (task_id,),
        )
        row = await cur.fetchone()
        assert row is not None
        return dict(zip(("state", "attempts", "max_attempts", "retry_strategy"), row, strict=True))


async def runs(dsn: str, queue: str, task_id: str) -> list[dict[str, Any]]:
    """Rows of `absurd.r_<queue>` for the task, oldest first."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            sql.SQL(
                "select run_id, attempt, state, failure_reason, available_at, failed_at, absurd.current_time()"
                " from absurd.{} where task_id = %s order by attempt"
            ).format(sql.Identifier(f"r_{queue}")),
            (task_id,),
        )
        names = ("run_id", "attempt", "state", "failure_reason", "available_at", "failed_at", "now")
        return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]

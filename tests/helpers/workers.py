"""Workers in the test's own process, and what `worker_app`'s steps record (its `worker_effects` table)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import psycopg
from absurd_sdk import AsyncAbsurd

from pydantic_ai_absurd.worker import Worker, WorkerConfig

from .polling import WAIT


@contextlib.asynccontextmanager
async def running_worker(absurd: AsyncAbsurd, **config: Any) -> AsyncGenerator[Worker]:
    """Run a `Worker` (no signal handlers, fast polling) for the body; stop and drain it afterwards."""
    config.setdefault("handle_signals", False)
    config.setdefault("poll_interval", 0.02)
    config.setdefault("drain_timeout", 5.0)
    worker = Worker(absurd, WorkerConfig(**config))
    job = asyncio.ensure_future(worker.run())
    try:
        yield worker
    finally:
        if not worker.health.stopping:
            worker.request_stop()
        await asyncio.wait_for(job, timeout=WAIT)


async def effect_events(dsn: str, queue: str, task_id: str) -> list[tuple[str, str, int]]:
    """(step, start|end, pid) rows `worker_app`'s step bodies recorded for the task, in order."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "select step, event, pid from worker_effects where queue = %s and task_id = %s order by at",
            (queue, str(task_id)),
        )
        return [(str(r[0]), str(r[1]), int(r[2])) for r in await cur.fetchall()]


def count_events(events: list[tuple[str, str, int]], step: str, event: str) -> int:
    """How often `step` recorded `event`."""
    return sum(1 for s, e, _ in events if (s, e) == (step, event))


async def seen_event(dsn: str, queue: str, task_id: str, step: str, event: str) -> bool:
    """Whether `step` of the task recorded `event` at least once."""
    return count_events(await effect_events(dsn, queue, task_id), step, event) > 0


async def open_gate(dsn: str, queue: str, task_id: str, step: str) -> None:
    """Let the gated step `step` of the `steps` task (`params["gate"]`) finish, in every worker running it."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "insert into worker_effects (queue, task_id, step, event, pid) values (%s, %s, %s, 'open', 0)",
            (queue, str(task_id), step),
        )


async def is_completed(absurd: AsyncAbsurd, task_id: str) -> bool:
    """Whether the task has completed."""
    snapshot = await absurd.fetch_task_result(task_id)
    return snapshot is not None and snapshot.state == "completed"


async def lock_holders(dsn: str, identity: str) -> int:
    """How many server processes hold the worker liveness lock of `identity` (a worker's claim id)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "select count(distinct pid) from pg_locks where locktype = 'advisory' and granted and objsubid = 1"
            " and ((classid::int8 << 32) | objid::int8) = hashtextextended(%s, 0)",
            (identity,),
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def takeover_checks_at_least(worker: Worker, n: int) -> bool:
    """Whether the in-process worker has looked for dead peers `n` times."""
    return worker.health.takeover_checks >= n

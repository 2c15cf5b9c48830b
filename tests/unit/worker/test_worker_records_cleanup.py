"""How the rows of `lost_executions` and `task_registrations` go away (migration 006_worker_records_cleanup)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
from absurd_sdk import AsyncAbsurd, AsyncTaskContext

from pydantic_ai_absurd._absurd import OrphanedRun
from pydantic_ai_absurd._worker_records import (
    read_lost_executions,
    record_lost_executions,
    record_registrations,
    record_worker_tasks,
)
from pydantic_ai_absurd.schema import create_queue_sync, drop_queue_sync


def _lost(task_id: str) -> OrphanedRun:
    now = datetime.now(UTC)
    return OrphanedRun(str(uuid.uuid4()), task_id, 1, "pydantic-ai-absurd:dead:1:x", now, now)


async def _registered(conn: psycopg.AsyncConnection[Any], queue: str) -> list[str]:
    cur = await conn.execute(
        "select task_name from pydantic_ai_absurd.task_registrations where queue_name = %s order by 1", (queue,)
    )
    return [str(row[0]) for row in await cur.fetchall()]


async def test_lost_executions_go_with_their_task(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    @absurd_client.register_task(name="hello")
    async def hello(params: Any, ctx: AsyncTaskContext) -> str:
        return "hi"

    cleaned = (await absurd_client.spawn("hello", None))["task_id"]
    kept = (await absurd_client.spawn("hello", None))["task_id"]
    async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
        await record_worker_tasks(conn, absurd_queue, absurd_client, "worker-1")  # installs the trigger
        await record_worker_tasks(conn, absurd_queue, absurd_client, "worker-1")  # idempotent
        await record_lost_executions(conn, absurd_queue, [_lost(str(cleaned)), _lost(str(kept))], "peer")
        assert len(await read_lost_executions(conn, absurd_queue, str(cleaned))) == 1
        await conn.execute("select absurd.cancel_task(%s, %s)", (absurd_queue, cleaned))
        await conn.execute("select absurd.cleanup_tasks(%s, 0, 1000)", (absurd_queue,))  # Absurd's retention
        assert await read_lost_executions(conn, absurd_queue, str(cleaned)) == []
        assert len(await read_lost_executions(conn, absurd_queue, str(kept))) == 1
        assert await _registered(conn, absurd_queue) == ["hello"]


async def test_dropping_a_queue_deletes_its_rows(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    dropped = f"test_{uuid.uuid4().hex[:12]}"
    await asyncio.to_thread(create_queue_sync, absurd_dsn, dropped)

    task_id = str(uuid.uuid4())
    async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
        for queue in (dropped, absurd_queue):
            await record_registrations(conn, queue, [f"task_of_{queue}"], "worker-1")
            await record_lost_executions(conn, queue, [_lost(task_id)], "peer")
        await conn.execute(
            "insert into pydantic_ai_absurd.events (queue_name, task_id, seq, kind, event)"
            " values (%s, %s, 1, 'status', '{}'::jsonb)",
            (dropped, task_id),
        )
        assert await _registered(conn, dropped) == [f"task_of_{dropped}"]
        await asyncio.to_thread(drop_queue_sync, absurd_dsn, dropped)
        assert await _registered(conn, dropped) == []
        assert await read_lost_executions(conn, dropped, task_id) == []
        cur = await conn.execute("select count(*) from pydantic_ai_absurd.events where queue_name = %s", (dropped,))
        assert await cur.fetchone() == (0,)
        assert await _registered(conn, absurd_queue) == [f"task_of_{absurd_queue}"]  # another queue's rows stay
        assert len(await read_lost_executions(conn, absurd_queue, task_id)) == 1

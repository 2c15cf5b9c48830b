"""A claim reads each run's checkpoints; the SDK's checkpoint preload of that run then sends no statement."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncGenerator
from typing import Any

import absurd_sdk
import psycopg
from absurd_sdk import AsyncAbsurd, AsyncTaskContext
from psycopg.rows import dict_row

from pydantic_ai_absurd._absurd import BorrowedConnection, claim_with_checkpoints
from pydantic_ai_absurd._absurd._sql_claims import CHECKPOINT_PRELOAD


def test_the_preload_statement_is_the_sdks() -> None:
    assert CHECKPOINT_PRELOAD in inspect.getsource(absurd_sdk._create_async_task_context)  # pyright: ignore[reportPrivateUsage]


async def _run_with_a_checkpoint_then_fail(absurd_client: AsyncAbsurd) -> str:
    @absurd_client.register_task(name="checkpointed")
    async def checkpointed(params: Any, ctx: AsyncTaskContext) -> None:
        async def value() -> dict[str, Any]:
            return {"n": 1, "text": "é"}

        await ctx.step("first", value)
        await ctx.step("second", value)
        raise RuntimeError("fail after the steps: the next attempt replays them")

    spawned = await absurd_client.spawn("checkpointed", {}, max_attempts=3)
    await absurd_client.work_batch(claim_timeout=30)
    return str(spawned["task_id"])


async def test_a_claim_reads_what_the_sdk_preload_reads(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    task_id = await _run_with_a_checkpoint_then_fail(absurd_client)
    async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
        [(task, (params, rows))] = await claim_with_checkpoints(conn, absurd_queue, "w", 30, 5)
        assert str(task["task_id"]) == task_id and task["attempt"] == 2 and "checkpoints" not in task
        assert params == (absurd_queue, task["task_id"], task["run_id"])
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(CHECKPOINT_PRELOAD, params)
        expected = await cur.fetchall()
    assert [row["checkpoint_name"] for row in rows] == ["first", "second"]
    assert rows == expected  # the same keys, values and types (timestamps compare as instants)

    async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
        claimed = await absurd_client.claim_tasks(claim_timeout=30)
        assert claimed == []  # the claim was a real one
        assert await claim_with_checkpoints(conn, absurd_queue, "w", 30, 5) == []


async def test_the_preload_the_claim_answered_sends_no_statement(absurd_dsn: str) -> None:
    borrowed: list[str] = []

    @contextlib.asynccontextmanager
    async def borrow() -> AsyncGenerator[psycopg.AsyncConnection[Any]]:
        async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
            borrowed.append("conn")
            yield conn

    rows = [{"checkpoint_name": "a", "state": 1}]
    params = ("q", "task", "run")
    conn = BorrowedConnection(borrow, absurd_dsn, preloaded=(params, rows))
    assert conn.take_preloaded(("q", "another task", "run")) is None  # another run's preload: asked for real
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(CHECKPOINT_PRELOAD, params)
    assert await cur.fetchall() == rows and borrowed == []
    assert conn.preloaded is None  # answered once
    await cur.execute("select 1 as one")
    assert await cur.fetchall() == [{"one": 1}] and borrowed == ["conn"]

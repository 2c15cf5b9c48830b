"""Bulk heartbeats extend only the runs still claimed by this worker, and stop the ones a peer took over."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from absurd_sdk import AsyncAbsurd, AsyncTaskContext
from psycopg import sql

from pydantic_ai_absurd._absurd import extend_claims
from tests.helpers.polling import WAIT, wait_until
from tests.helpers.sql import latest_run
from tests.helpers.workers import running_worker

LONG_LEASE = 60


async def _claim_expires_at(dsn: str, queue: str, run_id: str) -> Any:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        query = sql.SQL("select claim_expires_at from absurd.{} where run_id = %s").format(sql.Identifier(f"r_{queue}"))
        cur = await conn.execute(query, (run_id,))
        row = await cur.fetchone()
        assert row is not None
        return row[0]


async def test_a_run_claimed_in_another_identity_is_reported_and_not_extended(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    await absurd_client.spawn("anything", None, queue=absurd_queue)
    [claimed] = await absurd_client.claim_tasks(batch_size=1, claim_timeout=LONG_LEASE, worker_id="peer")
    run_id = str(claimed["run_id"])
    before = await _claim_expires_at(absurd_dsn, absurd_queue, run_id)
    async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
        assert await extend_claims(conn, absurd_queue, [(run_id, "me")], 1) == [(run_id, "taken_over")]
        assert await _claim_expires_at(absurd_dsn, absurd_queue, run_id) == before
        assert await extend_claims(conn, absurd_queue, [(run_id, "peer")], 1) == []
        assert await _claim_expires_at(absurd_dsn, absurd_queue, run_id) < before  # extended by 1 s from now
        assert await extend_claims(conn, absurd_queue, [(run_id, None)], LONG_LEASE * 2) == []
        assert await _claim_expires_at(absurd_dsn, absurd_queue, run_id) > before


async def test_a_run_a_peer_took_over_is_stopped_by_the_next_heartbeat_without_a_write(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    started = asyncio.Event()
    stopped: list[str] = []

    @absurd_client.register_task(name="held")
    async def held(params: Any, ctx: AsyncTaskContext) -> str:
        async def body() -> str:
            started.set()
            try:
                await asyncio.sleep(WAIT)
            except asyncio.CancelledError:
                stopped.append(ctx.task_id)
                raise
            return "done"

        return await ctx.step("held", body)

    spawned = await absurd_client.spawn("held", None)
    # concurrency=1: the worker itself does not claim the run again once it is handed back.
    async with running_worker(absurd_client, concurrency=1, claim_timeout=1) as worker:
        await asyncio.wait_for(started.wait(), WAIT)
        run = await latest_run(absurd_dsn, absurd_queue, spawned["task_id"])
        assert run["claimed_by"] == worker.claim_id
        # What a peer does when it presumes this worker dead: hand the run back, then claim it.
        async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
            hand_back = sql.SQL(
                "select absurd.schedule_run(%s, run_id, absurd.current_time()) from absurd.{} where task_id = %s"
                " and state = 'running'"
            ).format(sql.Identifier(f"r_{absurd_queue}"))
            await conn.execute(hand_back, (absurd_queue, spawned["task_id"]))
        [claimed] = await absurd_client.claim_tasks(batch_size=1, claim_timeout=LONG_LEASE, worker_id="peer")
        assert claimed["task_id"] == spawned["task_id"]
        await wait_until(lambda: _is(worker.health.lost == 1))
        assert stopped == [spawned["task_id"]]
        assert worker.health.handed_back == 0
    assert await latest_run(absurd_dsn, absurd_queue, spawned["task_id"]) == {"state": "running", "claimed_by": "peer"}


async def _is(value: bool) -> bool:
    return value

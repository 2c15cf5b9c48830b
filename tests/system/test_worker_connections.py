"""The worker's runs borrow pooled connections per statement, and their claims are kept in bulk."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd, AsyncTaskContext, CancelledTask

import pydantic_ai_absurd.worker._execute as execute_module
from pydantic_ai_absurd._absurd import BorrowedConnection
from pydantic_ai_absurd.worker import Worker
from tests.helpers.polling import WAIT, wait_until
from tests.helpers.sql import runs
from tests.helpers.workers import is_completed, running_worker


async def _connections(dsn: str, application_name: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "select count(*) from pg_stat_activity where application_name = %s", (application_name,)
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


def _executor(worker: Worker) -> execute_module.Executor:
    executor = worker._executor  # pyright: ignore[reportPrivateUsage]
    assert executor is not None
    return executor


async def test_runs_waiting_in_step_bodies_hold_no_connection(absurd_client: AsyncAbsurd, absurd_dsn: str) -> None:
    """Twelve runs wait in a step body at once on a pool of three: the pool never grows past three."""
    waiting: list[str] = []
    release = asyncio.Event()

    @absurd_client.register_task(name="waits")
    async def waits(params: int, ctx: AsyncTaskContext) -> int:
        await ctx.step("before", lambda: _value(params))

        async def body() -> int:
            waiting.append(ctx.task_id)
            await asyncio.wait_for(release.wait(), WAIT)
            return params

        return await ctx.step("model", body)

    spawned = [await absurd_client.spawn("waits", i) for i in range(12)]
    async with running_worker(absurd_client, concurrency=12, pool_size=3) as worker:
        await wait_until(lambda: _value(len(waiting) == 12))
        assert await _connections(absurd_dsn, worker.application_name) <= 3
        assert _executor(worker).pool.pool.get_stats()["pool_size"] <= 3
        release.set()
        for s in spawned:
            await wait_until(lambda s=s: is_completed(absurd_client, s["task_id"]))
        assert await _connections(absurd_dsn, worker.application_name) <= 3


async def _value(value: Any) -> Any:
    return value


async def test_one_statement_keeps_the_claims_of_all_runs(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five runs busy for several claim timeouts keep their claims; no run heartbeats on its own."""
    own_heartbeats: list[str] = []
    original = AsyncTaskContext.heartbeat

    async def counted(self: AsyncTaskContext, seconds: int | None = None) -> None:
        own_heartbeats.append(self.task_id)
        await original(self, seconds)

    monkeypatch.setattr(AsyncTaskContext, "heartbeat", counted)
    release = asyncio.Event()

    @absurd_client.register_task(name="busy")
    async def busy(params: int, ctx: AsyncTaskContext) -> int:
        await asyncio.wait_for(release.wait(), WAIT)
        return params

    spawned = [await absurd_client.spawn("busy", i) for i in range(5)]
    sweeper = AsyncAbsurd(absurd_dsn, queue_name=absurd_queue)  # its claims fail expired leases
    try:
        async with running_worker(absurd_client, concurrency=5, claim_timeout=1) as worker:

            async def four_beats_later() -> bool:
                assert await sweeper.claim_tasks(batch_size=1, claim_timeout=1, worker_id="sweeper") == []
                return _executor(worker).heartbeats.statements >= 4  # more than one claim timeout has passed

            await wait_until(lambda: _value(worker.health.in_flight == 5))
            await wait_until(four_beats_later)
            release.set()
            for s in spawned:
                await wait_until(lambda s=s: is_completed(absurd_client, s["task_id"]))
    finally:
        await sweeper.close()
    assert own_heartbeats == []
    for s in spawned:
        assert [r["attempt"] for r in await runs(absurd_dsn, absurd_queue, s["task_id"])] == [1]


async def test_the_bulk_heartbeat_stops_a_cancelled_run_and_no_other(absurd_client: AsyncAbsurd) -> None:
    started: list[str] = []
    stopped: list[str] = []
    release = asyncio.Event()

    @absurd_client.register_task(name="tool")
    async def tool(params: int, ctx: AsyncTaskContext) -> int:
        async def body() -> int:
            started.append(ctx.task_id)
            try:
                await asyncio.wait_for(release.wait(), WAIT)
            except asyncio.CancelledError:
                stopped.append(ctx.task_id)
                raise
            return params

        return await ctx.step("tool", body)

    spawned = [await absurd_client.spawn("tool", i) for i in range(3)]
    victim = spawned[0]["task_id"]
    async with running_worker(absurd_client, concurrency=3, claim_timeout=1) as worker:
        await wait_until(lambda: _value(len(started) == 3))
        await absurd_client.cancel_task(victim)
        await wait_until(lambda: _value(worker.health.cancelled == 1))
        assert stopped == [victim]
        release.set()
        for s in spawned[1:]:
            await wait_until(lambda s=s: is_completed(absurd_client, s["task_id"]))
    assert worker.health.completed == 2


async def test_a_connection_dying_in_a_write_fails_only_that_run(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server drops the connection of one run's checkpoint write: that run is handed back, neighbours go on."""
    bodies: dict[str, int] = {}
    arrived = asyncio.Barrier(3)
    victim: list[str] = []

    class Dying(BorrowedConnection):
        async def run(self, query: Any, params: Any, row_factory: Any) -> tuple[list[Any], int]:
            if victim and "set_task_checkpoint_state" in str(query) and str(params[1]) == victim[0]:
                victim.clear()
                async with self.borrow() as conn:
                    async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as admin:
                        await admin.execute("select pg_terminate_backend(%s)", (conn.info.backend_pid,))
                    await conn.execute(query, params)
            return await super().run(query, params, row_factory)

    monkeypatch.setattr(execute_module, "BorrowedConnection", Dying)

    @absurd_client.register_task(name="write")
    async def write(params: int, ctx: AsyncTaskContext) -> int:
        async def body() -> int:
            bodies[str(ctx.task_id)] = bodies.get(str(ctx.task_id), 0) + 1
            if bodies[str(ctx.task_id)] == 1:
                await asyncio.wait_for(arrived.wait(), WAIT)  # all three in flight when the write fails
            return params

        return await ctx.step("write", body)

    spawned = [await absurd_client.spawn("write", i) for i in range(3)]
    victim.append(str(spawned[1]["task_id"]))
    async with running_worker(absurd_client, concurrency=3, pool_size=3) as worker:
        for s in spawned:
            await wait_until(lambda s=s: is_completed(absurd_client, s["task_id"]))
    assert victim == []  # the fault was injected
    assert worker.health.handed_back == 1
    assert bodies == {str(spawned[0]["task_id"]): 1, str(spawned[1]["task_id"]): 2, str(spawned[2]["task_id"]): 1}
    for s in spawned:
        assert [r["attempt"] for r in await runs(absurd_dsn, absurd_queue, s["task_id"])] == [1]


async def test_a_cancelled_task_raises_cancelled_task_in_its_next_write(absurd_client: AsyncAbsurd) -> None:
    """Cancellation still reaches a run at its next write through a borrowed connection."""
    seen: list[type[BaseException]] = []
    go = asyncio.Event()
    started = asyncio.Event()

    @absurd_client.register_task(name="writes")
    async def writes(params: Any, ctx: AsyncTaskContext) -> None:
        started.set()
        await asyncio.wait_for(go.wait(), WAIT)
        try:
            await ctx.step("after", lambda: _value(1))
        except CancelledTask as ended:
            seen.append(type(ended))
            raise

    spawned = await absurd_client.spawn("writes", None)
    async with running_worker(absurd_client, concurrency=2, heartbeat=False) as worker:
        await asyncio.wait_for(started.wait(), WAIT)
        await absurd_client.cancel_task(spawned["task_id"])
        go.set()
        await wait_until(lambda: _value(worker.health.cancelled == 1))
    assert seen == [CancelledTask]

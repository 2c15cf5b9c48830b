"""`durable_transaction()` under concurrency: conflicts retried, a lost run rolled back, siblings and parallel calls."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent, RunContext

from pydantic_ai_absurd import AbsurdAgent, durable_transaction
from pydantic_ai_absurd._steps import CONFLICT_ATTEMPTS, commit_hook
from tests.helpers.agents import SimulatedCrash, run_until_done
from tests.helpers.sql import checkpoint_names
from tests.helpers.transactions import STEP, Refunds, count_rows, refund_agent, refund_calls, register


async def test_a_serialization_failure_runs_the_tool_again_in_the_same_step(
    absurd_client: AsyncAbsurd, absurd_queue: str, absurd_dsn: str, table: str
) -> None:
    refunds = Refunds()

    async def conflict_twice(order_id: str, conn: psycopg.AsyncConnection[Any]) -> None:
        if len(refunds.executions) <= 2:
            code = "40001" if len(refunds.executions) == 1 else "40P01"
            await conn.execute(f"do $$ begin raise exception 'conflict' using errcode = '{code}'; end $$")  # type: ignore[arg-type]

    register(absurd_client, refund_agent(refund_calls("a"), table, refunds, inside=conflict_twice))
    task_id = (await absurd_client.spawn("refund", {}))["task_id"]
    assert (await run_until_done(absurd_client, task_id)).state == "completed"
    assert refunds.executions == ["a", "a", "a"]
    assert await count_rows(absurd_dsn, table) == 1
    names = await checkpoint_names(absurd_dsn, absurd_queue, task_id)
    assert [n for n in names if "refund" in n] == [STEP.format("a")]


async def test_conflicts_without_end_fail_the_run_like_a_tool_error(
    absurd_client: AsyncAbsurd, absurd_dsn: str, table: str
) -> None:
    refunds = Refunds()

    async def always_conflict(order_id: str, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute("do $$ begin raise exception 'conflict' using errcode = '40001'; end $$")

    register(absurd_client, refund_agent(refund_calls("a"), table, refunds, inside=always_conflict))
    task_id = (await absurd_client.spawn("refund", {}, max_attempts=1))["task_id"]
    snapshot = await run_until_done(absurd_client, task_id)
    assert snapshot.state == "failed" and "conflict" in str(snapshot.failure)
    assert len(refunds.executions) == CONFLICT_ATTEMPTS
    assert await count_rows(absurd_dsn, table) == 0


async def test_a_lost_run_rolls_the_whole_transaction_back(
    absurd_client: AsyncAbsurd, absurd_queue: str, absurd_dsn: str, table: str
) -> None:
    refunds = Refunds()
    lost = {STEP.format("a")}

    async def lose_the_run(name: str) -> None:
        if name in lost:  # another worker failed this run (its lease expired) just before the commit
            lost.discard(name)
            async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
                await conn.execute(
                    f'select absurd.fail_run(%s, r.run_id, %s::jsonb, null) from absurd."r_{absurd_queue}" r'  # type: ignore[arg-type]
                    " where r.task_id = %s and r.state = 'running'",
                    (absurd_queue, '{"name": "$ClaimTimeout"}', task_id),
                )

    register(absurd_client, refund_agent(refund_calls("a"), table, refunds))
    task_id = (await absurd_client.spawn("refund", {}))["task_id"]
    with commit_hook(lose_the_run):
        snapshot = await run_until_done(absurd_client, task_id)
    assert snapshot.state == "completed"
    assert refunds.executions == ["a", "a"]  # the lost run's rows were never committed: the new run wrote them
    assert await count_rows(absurd_dsn, table) == 1


async def test_a_failing_sibling_does_not_tear_a_returned_tools_commit_apart(
    absurd_client: AsyncAbsurd, absurd_dsn: str, table: str
) -> None:
    refunds = Refunds()
    committing = asyncio.Event()
    sibling_failed = asyncio.Event()
    first_run = [True]

    async def fail_b(order_id: str) -> None:
        if order_id == "b" and first_run[0]:
            await committing.wait()
            first_run[0] = False
            sibling_failed.set()
            raise SimulatedCrash("b")

    async def slow_commit(name: str) -> None:
        if name == STEP.format("a") and not committing.is_set():
            committing.set()
            await sibling_failed.wait()
            await asyncio.sleep(0)  # the run is being torn down now; this write is shielded

    register(absurd_client, refund_agent(refund_calls("a", "b"), table, refunds, after=fail_b))
    task_id = (await absurd_client.spawn("refund", {}))["task_id"]
    with commit_hook(slow_commit):
        snapshot = await run_until_done(absurd_client, task_id)
    assert snapshot.state == "completed"
    assert sorted(refunds.executions) == ["a", "b", "b"]  # `a` committed with its rows and was replayed
    async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
        cursor = await conn.execute(f'select order_id from "{table}" order by order_id')  # type: ignore[arg-type]
        assert [row[0] for row in await cursor.fetchall()] == ["a", "b"]


async def test_parallel_calls_each_hold_their_own_connection(
    absurd_client: AsyncAbsurd, absurd_dsn: str, table: str
) -> None:
    pids: dict[str, int] = {}
    both_in = asyncio.Barrier(2)

    async def meet(order_id: str, conn: psycopg.AsyncConnection[Any]) -> None:
        pids[order_id] = conn.info.backend_pid
        await both_in.wait()  # both blocks are open at once

    register(absurd_client, refund_agent(refund_calls("a", "b"), table, Refunds(), inside=meet))
    task_id = (await absurd_client.spawn("refund", {}))["task_id"]
    assert (await run_until_done(absurd_client, task_id)).state == "completed"
    assert len(set(pids.values())) == 2
    assert await count_rows(absurd_dsn, table) == 2


async def test_a_real_serialization_conflict_between_parallel_calls_is_retried(
    absurd_client: AsyncAbsurd, absurd_dsn: str, table: str
) -> None:
    """Two serializable blocks read the table, then both insert: one of them cannot commit, and runs again."""
    executions: list[str] = []
    both_read = asyncio.Barrier(2)
    agent = Agent(refund_calls("a", "b").model(), name="billing")

    @agent.tool
    async def refund(ctx: RunContext[None], order_id: str, amount: int) -> str:
        executions.append(order_id)
        async with durable_transaction(isolation_level=psycopg.IsolationLevel.SERIALIZABLE) as conn:
            cursor = await conn.execute(f'select count(*) from "{table}"')  # type: ignore[arg-type]
            (before,) = await cursor.fetchone()  # type: ignore[misc]
            if len(executions) <= 2:
                await both_read.wait()  # both transactions have read before either writes
            await conn.execute(f'insert into "{table}" values (%s, %s)', (order_id, before))  # type: ignore[arg-type]
        return f"refund #{before + 1}"

    register(absurd_client, AbsurdAgent(agent))
    task_id = (await absurd_client.spawn("refund", {}, max_attempts=1))["task_id"]
    snapshot = await run_until_done(absurd_client, task_id)
    assert snapshot.state == "completed", snapshot.failure
    assert len(executions) == 3  # one of the two ran again after its serialization failure
    async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
        cursor = await conn.execute(f'select amount from "{table}" order by amount')  # type: ignore[arg-type]
        assert [row[0] for row in await cursor.fetchall()] == [0, 1]  # serial: the second saw the first

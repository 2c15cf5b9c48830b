"""Benchmark deploy verification and forks: `verify_replay` and `fork_task` on a long recorded run.

    python benchmarks/bench_verify.py [--dsn DSN] [--turns 250] [--reps 5]

Records one task of `2 * turns + 1` steps (a model request and a tool call per turn, then the answer) in a
scratch database, then times: `verify_replay` of it (read + sandbox replay), the sandbox replay alone
(`replay_recorded` of the already-read recording), and `fork_task` at the middle step (one transaction
copying half the checkpoints). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from absurd_sdk import AsyncAbsurd, AsyncTaskContext
from psycopg import sql
from psycopg.conninfo import make_conninfo
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import UsageLimits

from pydantic_ai_absurd import AbsurdAgent, fork_task, setup, verify_replay
from pydantic_ai_absurd._absurd import registered_handlers
from pydantic_ai_absurd.testing import run_queued
from pydantic_ai_absurd.verify import recorded_tasks, replay_recorded

QUEUE = "bench_verify"


def build(dsn: str, turns: int) -> AsyncAbsurd:
    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        turn = sum(1 for m in messages if m.kind == "response")
        if turn < turns:
            return ModelResponse(parts=[ToolCallPart("work", {"i": turn}, tool_call_id=f"call-{turn}")])
        return ModelResponse(parts=[TextPart("done")])

    agent = Agent(FunctionModel(respond, model_name="scripted"), name="long")

    @agent.tool
    async def work(ctx: RunContext[None], i: int) -> str:
        return f"result {i}"

    durable = AbsurdAgent(agent)
    absurd = AsyncAbsurd(dsn, queue_name=QUEUE)

    @absurd.register_task(name="long")
    async def long(params: Any, ctx: AsyncTaskContext) -> str:
        return (await durable.run("go", usage_limits=UsageLimits(request_limit=None))).output

    return absurd


async def timed(make: Callable[[], Awaitable[Any]], reps: int) -> list[float]:
    values: list[float] = []
    for _ in range(reps):
        start = time.perf_counter()
        await make()
        values.append(time.perf_counter() - start)
    return values


def row(label: str, values: list[float], note: str) -> str:
    quantiles = statistics.quantiles(values, n=10) if len(values) > 1 else [values[0]] * 9
    return f"| {label} | {statistics.median(values) * 1000:.1f} ms ({quantiles[0] * 1000:.1f} - {quantiles[-1] * 1000:.1f}) | {note} |"


async def main_async(args: argparse.Namespace) -> None:
    dbname = f"bench_{secrets.token_hex(4)}"
    async with await psycopg.AsyncConnection.connect(args.dsn, autocommit=True) as conn:
        await conn.execute(sql.SQL("create database {}").format(sql.Identifier(dbname)))
    dsn = make_conninfo(args.dsn, dbname=dbname)
    try:
        await setup(dsn, queues=[QUEUE])
        absurd = build(dsn, args.turns)
        spawned = await absurd.spawn("long", {})
        task_id = str(spawned["task_id"])
        await run_queued(absurd)
        (task,) = await recorded_tasks(absurd, [task_id])
        steps = len(task.steps)
        report = await verify_replay(absurd, [task_id])
        assert report.ok, report
        full = await timed(lambda: verify_replay(absurd, [task_id]), args.reps)
        handlers = registered_handlers(absurd)
        replay_only = await timed(lambda: replay_recorded(handlers, [task]), args.reps)
        forks = await timed(lambda: fork_task(absurd, task_id, at_step=steps // 2), args.reps)
        await absurd.close()
    finally:
        async with await psycopg.AsyncConnection.connect(args.dsn, autocommit=True) as conn:
            await conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname)))
    print(f"| call ({steps} recorded steps) | median (p10 - p90) | notes |")
    print("|---|---|---|")
    print(row("`verify_replay(absurd, [task_id])`", full, "connect, read the task and its checkpoints, replay"))
    print(
        row(
            "sandbox replay alone (`replay_recorded`)",
            replay_only,
            f"{steps / statistics.median(replay_only):,.0f} steps/s",
        )
    )
    print(row(f"`fork_task(..., at_step={steps // 2})`", forks, "connect, read, spawn + copy in one transaction"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default=os.environ.get("BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--turns", type=int, default=250)
    parser.add_argument("--reps", type=int, default=5)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()

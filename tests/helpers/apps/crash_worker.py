"""A worker process for crash tests: runs one scenario's task and can SIGKILL itself at a chosen point.

Usage: python -m tests.helpers.apps.crash_worker <dsn> <queue> <state dir> [claim_timeout]
Counters are appended to files in <state dir> so they survive the process. A file named `kill-<point>`
in the state dir makes the process kill itself (once) when it reaches that point.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import psycopg
from absurd_sdk import AsyncAbsurd, get_current_context
from psycopg import sql
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from pydantic_ai_absurd import AbsurdAgent
from tests.helpers.apps._common import append, die_if_armed, work_until_stopped


def main() -> None:
    dsn, queue, state = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    claim_timeout = int(sys.argv[4]) if len(sys.argv) > 4 else 3

    def record(name: str, value: str = "x") -> None:
        append(state / name, value)

    def maybe_die(point: str) -> None:
        die_if_armed(state / f"kill-{point}")

    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        turn = sum(1 for m in messages if m.kind == "response")
        maybe_die(f"model-{turn}")
        delay = float(os.environ.get("FIRST_MODEL_DELAY", "0"))
        if delay and turn == 0:
            record("model-started", str(turn))
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                record("model-aborted", str(turn))
                raise
        record("model", str(turn))
        if turn == 0:
            return ModelResponse(
                parts=[
                    ToolCallPart("charge", {"amount": 1}, tool_call_id="p1"),
                    ToolCallPart("charge", {"amount": 2}, tool_call_id="p2"),
                    ToolCallPart("charge", {"amount": 3}, tool_call_id="p3"),
                ]
            )
        returns = [p.content for m in messages for p in m.parts if p.part_kind == "tool-return"]
        return ModelResponse(parts=[TextPart(f"charged {returns}")])

    inner = Agent(FunctionModel(respond, model_name="scripted"), name="crashy")

    async def earlier_calls_committed(amount: int) -> None:
        """Wait until the checkpoints of the charges of smaller amounts (they return first) are committed.

        A kill after this charge's side effect then finds exactly one step in flight, however slow the machine.
        """
        task_id = get_current_context().task_id
        patterns = [f"%call_tool:charge@p{n}" for n in range(1, amount)]
        query = sql.SQL("select count(*) from absurd.{} where task_id = %s and checkpoint_name like any(%s)").format(
            sql.Identifier(f"c_{queue}")
        )
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            for _ in range(3000):
                row = await (await conn.execute(query, (task_id, patterns))).fetchone()
                if row is not None and row[0] == len(patterns):
                    return
                await asyncio.sleep(0.01)
        raise AssertionError(f"the checkpoints of {patterns} were not committed within 30 s")

    @inner.tool
    async def charge(ctx: RunContext[None], amount: int) -> str:
        maybe_die(f"tool-{amount}")
        await asyncio.sleep(0.05 * amount)  # the parallel calls finish in different orders
        if (state / f"kill-after-tool-{amount}").exists():
            await earlier_calls_committed(amount)
        record("charge", str(amount))
        maybe_die(f"after-tool-{amount}")
        return f"receipt-{amount}"

    agent = AbsurdAgent(inner)
    absurd = AsyncAbsurd(dsn, queue_name=queue)

    @absurd.register_task(name="crashy")
    async def crashy(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        first = await agent.run("bill")
        maybe_die("between-runs")
        second = await agent.run("again", message_history=first.all_messages())
        return {
            "output": first.output,
            "second": second.output,
            "usage": [first.usage.requests, first.usage.input_tokens, first.usage.output_tokens],
            "run_ids": [first.run_id, second.run_id],
        }

    asyncio.run(work_until_stopped(absurd, state, "crash", claim_timeout=claim_timeout))


if __name__ == "__main__":
    main()

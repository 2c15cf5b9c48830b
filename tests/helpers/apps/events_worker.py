"""A worker process for the event-log crash tests: streams an answer and can SIGKILL itself mid-answer.

Usage: python -m tests.helpers.apps.events_worker <dsn> <queue> <state dir> [claim_timeout]
A file `kill-at-<n>` in the state dir makes the process kill itself (once) before streaming word `n`, after
the words before it are in the event log (so the crash leaves partial events). Tool calls are counted in
`<state dir>/tool`.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from pydantic_ai_absurd import AbsurdAgent
from tests.helpers.apps._common import die_if_armed, work_until_stopped


def main() -> None:
    dsn, queue, state = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    claim_timeout = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    absurd = AsyncAbsurd(dsn, queue_name=queue)
    task_ids: list[str] = []

    async def deltas_in_log() -> int:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cur = await conn.execute(
                "select count(*) from pydantic_ai_absurd.events where queue_name = %s and task_id = %s"
                " and kind = 'part_delta' and attempt = (select max(attempt) from pydantic_ai_absurd.events"
                " where queue_name = %s and task_id = %s)",
                (queue, task_ids[-1], queue, task_ids[-1]),
            )
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        turn = sum(1 for m in messages if m.kind == "response")
        if turn == 0:
            yield {0: DeltaToolCall(name="lookup", json_args='{"key": "k"}', tool_call_id="t1")}
            return
        words = int(os.environ.get("ANSWER_WORDS", "40"))
        for i in range(words):
            trigger = state / f"kill-at-{i}"
            if trigger.exists():
                while await deltas_in_log() < i - 1:  # the first word is the part start, not a delta
                    await asyncio.sleep(0.02)
                die_if_armed(trigger)
            yield f"w{i} "

    inner = Agent(FunctionModel(stream_function=stream, model_name="scripted"), name="support")

    @inner.tool_plain
    def lookup(key: str) -> str:
        with (state / "tool").open("a") as file:
            file.write("x\n")
        return f"value of {key}"

    agent = AbsurdAgent(inner, absurd, publish_events=True)

    @absurd.register_task(name="answer")
    async def answer(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        task_ids.append(ctx.task_id)
        result = await agent.run(params.get("prompt", "hi"))
        return {"output": result.output}

    asyncio.run(work_until_stopped(absurd, state, "events", claim_timeout=claim_timeout))


if __name__ == "__main__":
    main()

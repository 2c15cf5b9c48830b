"""A worker process for the inbox crash test: an approval agent that can SIGKILL itself at chosen points.

Usage: python -m tests.helpers.apps.inbox_worker <dsn> <queue> <state dir>
Counters are appended to files in <state dir>; a file `kill-<point>` makes the process kill itself once there.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent, DeferredToolRequests, RunContext, Tool
from pydantic_ai.capabilities import HandleDeferredToolCalls
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from pydantic_ai_absurd import AbsurdAgent, Inbox
from tests.helpers.apps._common import append, die_if_armed, work_until_stopped


def main() -> None:
    dsn, queue, state = sys.argv[1], sys.argv[2], Path(sys.argv[3])

    def record(name: str, value: str = "x") -> None:
        append(state / name, value)

    def maybe_die(point: str) -> None:
        die_if_armed(state / f"kill-{point}")

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        turn = sum(1 for m in messages if m.kind == "response")
        record("model", str(turn))
        if turn == 0:
            return ModelResponse(parts=[ToolCallPart("delete_file", {"path": "/srv/old"}, tool_call_id="d1")])
        returns = [str(p.content) for m in messages for p in m.parts if p.part_kind == "tool-return"]
        return ModelResponse(parts=[TextPart("; ".join(returns))])

    def delete_file(path: str) -> str:
        maybe_die("tool")
        record("deleted", path)
        return f"deleted {path}"

    absurd = AsyncAbsurd(dsn, queue_name=queue)
    inbox = Inbox(absurd, notify=lambda request: record("notified", request.token))

    async def ask(ctx: RunContext[Any], requests: DeferredToolRequests, token: str) -> None:
        await inbox.ask(ctx, requests, token)
        maybe_die("after-ask")

    agent = AbsurdAgent(
        Agent(
            FunctionModel(respond, model_name="scripted"),
            name="ops",
            tools=[Tool(delete_file, requires_approval=True)],
            capabilities=[HandleDeferredToolCalls(ask, name="approve")],
        )
    )

    @absurd.register_task(name="ops")
    async def ops(params: dict[str, Any], ctx: Any) -> str:
        return (await agent.run("clean up")).output

    asyncio.run(work_until_stopped(absurd, state, "inbox", claim_timeout=2))


if __name__ == "__main__":
    main()

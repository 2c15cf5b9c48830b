"""A task checkpointed by an earlier build resumes on today's code (stored checkpoints are compatibility data).

Each fixture holds the checkpoints an earlier build wrote for one run of the same flow: a model request, two
parallel tool calls, a second model request, an approval wait that timed out, and the final model request.

- `fixtures/checkpoints_0354ed8.json`: main@0354ed8, before the package was reshaped and checkpoints gained
  digests (a timed-out wait is a bare `true` checkpoint).
- `fixtures/checkpoints_26084a3_pydantic_ai_2.68.json`: main@26084a3 on pydantic-ai-slim 2.68 (request digests,
  the capability 2.78 deprecated for `HandleDeferredToolCalls`), before Pydantic AI 2.78 added `request_timestamp` and `duration` to model responses: the
  digests of the later requests, whose history holds those responses, must still match.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent, DeferredToolRequests, DeferredToolResults, RunContext
from pydantic_ai.capabilities import HandleDeferredToolCalls
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from pydantic_ai_absurd import AbsurdAgent
from tests.helpers.agents import run_until_done
from tests.helpers.paths import FIXTURES

RECORDINGS = {
    name: json.loads((FIXTURES / f"checkpoints_{name}.json").read_text())
    for name in ("0354ed8", "26084a3_pydantic_ai_2.68")
}


def legacy_agent(calls: list[str]) -> AbsurdAgent[None, str]:
    """The agent the recording was made with (same names, tools and flow)."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        turn = sum(1 for m in messages if m.kind == "response")
        calls.append(f"model@{turn}")
        if turn == 0:
            return ModelResponse(
                parts=[
                    ToolCallPart("charge", {"zeta": 2, "amount": 1}, tool_call_id="p1"),
                    ToolCallPart("charge", {"zeta": 3, "amount": 2}, tool_call_id="p2"),
                ]
            )
        if turn == 1:
            return ModelResponse(parts=[ToolCallPart("refund", {"amount": 5}, tool_call_id="r1")])
        returns = [str(p.content) for m in messages for p in m.parts if p.part_kind == "tool-return"]
        return ModelResponse(parts=[TextPart(" | ".join(returns))])

    async def ask(ctx: RunContext[None], requests: DeferredToolRequests, token: str) -> DeferredToolResults | None:
        calls.append("ask")
        return None

    inner = Agent(
        FunctionModel(respond, model_name="scripted"),
        name="legacy",
        capabilities=[HandleDeferredToolCalls(ask, name="approve", timeout=timedelta(seconds=1))],
    )

    @inner.tool
    async def charge(ctx: RunContext[None], zeta: int, amount: int) -> dict[str, Any]:
        calls.append(f"charge@{ctx.tool_call_id}")
        return {"zeta": zeta, "receipt": f"r-{amount}"}

    @inner.tool(requires_approval=True)
    async def refund(ctx: RunContext[None], amount: int) -> str:  # pragma: no cover - the wait timed out
        calls.append("refund")
        return f"refunded {amount}"

    return AbsurdAgent(inner)


async def plant(dsn: str, queue: str, task_id: str, run_id: str, checkpoints: list[dict[str, Any]]) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for checkpoint in checkpoints:
            await conn.execute(
                f'insert into absurd."c_{queue}" (task_id, checkpoint_name, state, owner_run_id)'
                " values (%s, %s, %s::jsonb, %s)",
                (task_id, checkpoint["name"], json.dumps(checkpoint["state"]), run_id),
            )


@pytest.mark.parametrize("build", sorted(RECORDINGS))
@pytest.mark.parametrize("recorded", ["all steps", "all but the last model request"])
async def test_a_recorded_task_of_an_earlier_build_resumes(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, recorded: str, build: str
) -> None:
    recording = RECORDINGS[build]
    calls: list[str] = []
    agent = legacy_agent(calls)

    @absurd_client.register_task(name=recording["task_name"])
    async def legacy(params: Any, ctx: Any) -> str:
        return (await agent.run(params["prompt"])).output

    checkpoints = recording["checkpoints"]
    if recorded != "all steps":
        assert checkpoints[-1]["name"] == "legacy__model.request#3"
        checkpoints = checkpoints[:-1]
    spawned = await absurd_client.spawn(recording["task_name"], recording["params"])
    await plant(absurd_dsn, absurd_queue, str(spawned["task_id"]), str(spawned["run_id"]), checkpoints)
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.state == "completed", snapshot.failure
    assert snapshot.result == recording["result"]
    # No tool ran again, nobody was asked again, and the model was called only for a step not recorded.
    assert calls == ([] if recorded == "all steps" else ["model@2"])

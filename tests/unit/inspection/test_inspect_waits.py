"""Inspecting a run that waits for input: the waiting attempt, the wait's steps, the time spent waiting."""

from __future__ import annotations

from typing import Any

from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent, DeferredToolRequests, DeferredToolResults, RunContext
from pydantic_ai.capabilities import HandleDeferredToolCalls
from pydantic_ai.messages import TextPart, ToolCallPart

from pydantic_ai_absurd import AbsurdAgent, inspect_task, resolve_event_token
from pydantic_ai_absurd.inspection import list_tasks
from tests.helpers.agents import Script, run_until_done


async def test_waiting_then_resumed_task(absurd_client: AsyncAbsurd) -> None:
    tokens: list[str] = []
    script = Script(
        turns=[
            lambda _: [ToolCallPart("refund", {"amount": 5}, tool_call_id="r1")],
            lambda messages: [TextPart("done")],
        ]
    )

    async def ask(ctx: RunContext[None], requests: DeferredToolRequests, token: str) -> DeferredToolResults | None:
        tokens.append(token)
        return None

    inner = Agent(  # pyright: ignore[reportCallIssue, reportArgumentType]
        script.model(),
        name="support",
        capabilities=[HandleDeferredToolCalls(ask, name="approve_refund")],  # pyright: ignore[reportArgumentType]
    )

    @inner.tool(requires_approval=True)
    async def refund(ctx: RunContext[None], amount: int) -> str:
        return f"refunded {amount}"

    agent = AbsurdAgent(inner)

    @absurd_client.register_task(name="support")
    async def task(params: Any, ctx: Any) -> str:
        return (await agent.run("refund me")).output

    spawned = await absurd_client.spawn("support", {})
    await absurd_client.work_batch(claim_timeout=30)

    waiting = await inspect_task(absurd_client, spawned["task_id"])
    assert waiting.state == "sleeping"
    (attempt,) = waiting.attempts
    assert attempt.ended == "waiting" and attempt.wake_event is not None
    assert [step.kind for step in waiting.steps] == ["model_request", "wait_for_input"]
    assert waiting.steps[1].name == "support__external_event:approve_refund"
    (row,) = await list_tasks(absurd_client)
    assert (row.state, row.last_step) == ("sleeping", "support__external_event:approve_refund")

    await resolve_event_token(absurd_client, tokens[0], {"approvals": {"r1": True}})
    assert (await run_until_done(absurd_client, spawned["task_id"])).state == "completed"

    done = await inspect_task(absurd_client, spawned["task_id"])
    (attempt,) = done.attempts  # woken, the same run (attempt) went on
    assert attempt.ended == "completed"
    kinds = [(step.kind, step.name.removeprefix("support__")) for step in done.steps]
    assert kinds[:2] == [("model_request", "model.request"), ("wait_for_input", "external_event:approve_refund")]
    assert ("wait_for_input", "external_event:approve_refund.event") in kinds
    assert ("tool_call", "function_toolset__<agent>.call_tool:refund@r1") in kinds
    model = done.steps[0]
    # The run was claimed again after the event, so it replayed what it had done before waiting.
    assert model.replayed_by == (1,) and model.usage is not None
    assert done.totals.tokens_saved == model.usage
    assert done.totals.waiting_seconds > 0
    tool = next(step for step in done.steps if step.kind == "tool_call")
    assert (tool.tool_name, tool.tool_args, tool.result_preview) == ("refund", {"amount": 5}, "refunded 5")

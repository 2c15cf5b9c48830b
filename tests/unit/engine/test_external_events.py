"""Approvals inside one durable run: the task suspends (holding no worker) until the token is resolved."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent, DeferredToolRequests, DeferredToolResults, RunContext
from pydantic_ai.capabilities import HandleDeferredToolCalls
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import TextPart, ToolCallPart

from pydantic_ai_absurd import AbsurdAgent, fail_event_token, resolve_event_token
from pydantic_ai_absurd.testing import run_queued
from tests.helpers.agents import Script, run_to_end, run_until_done
from tests.helpers.sql import checkpoint_names, client_on_fake_clock


def refund_agent(
    tokens: list[str], asked: list[str], answer: DeferredToolResults | None = None, timeout: timedelta | None = None
) -> tuple[AbsurdAgent[None, str], list[int]]:
    refunds: list[int] = []
    script = Script(
        turns=[
            lambda _: [ToolCallPart("refund", {"amount": 5}, tool_call_id="r1")],
            lambda messages: [
                TextPart(
                    "; ".join(
                        str(part.content) for m in messages for part in m.parts if part.part_kind == "tool-return"
                    )
                )
            ],
        ]
    )

    async def ask(ctx: RunContext[None], requests: DeferredToolRequests, token: str) -> DeferredToolResults | None:
        asked.append(token)
        tokens.append(token)
        return answer

    inner = Agent(
        script.model(),
        name="support",
        capabilities=[HandleDeferredToolCalls(ask, name="approve_refund", timeout=timeout)],
    )

    @inner.tool(requires_approval=True)
    async def refund(ctx: RunContext[None], amount: int) -> str:
        refunds.append(amount)
        return f"refunded {amount}"

    return AbsurdAgent(inner), refunds


async def test_run_suspends_until_the_token_is_resolved(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    tokens: list[str] = []
    asked: list[str] = []
    agent, refunds = refund_agent(tokens, asked)

    @absurd_client.register_task(name="support")
    async def task(params: Any, ctx: Any) -> str:
        return (await agent.run("refund me")).output

    spawned = await absurd_client.spawn("support", {})
    await absurd_client.work_batch(claim_timeout=30)
    snapshot = await absurd_client.fetch_task_result(spawned["task_id"])
    assert snapshot is not None and snapshot.state == "sleeping"
    assert len(tokens) == 1 and tokens[0].startswith("pydantic-ai-absurd:")
    assert refunds == []

    await resolve_event_token(absurd_client, tokens[0], {"approvals": {"r1": True}})
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.result == "refunded 5", snapshot.failure
    assert refunds == [5]
    assert len(asked) == 1  # the replay did not ask again
    names = await checkpoint_names(absurd_dsn, absurd_queue, str(spawned["task_id"]))
    assert "support__external_event:approve_refund" in names
    assert "support__external_event:approve_refund.event" in names


async def test_an_immediate_answer_needs_no_wait(absurd_client: AsyncAbsurd) -> None:
    agent, refunds = refund_agent([], [], DeferredToolResults(approvals={"r1": True}))

    @absurd_client.register_task(name="support")
    async def task(params: Any, ctx: Any) -> str:
        return (await agent.run("refund me")).output

    spawned = await absurd_client.spawn("support", {})
    assert (await run_until_done(absurd_client, spawned["task_id"])).result == "refunded 5"
    assert refunds == [5]


async def test_a_failed_token_denies_the_call(absurd_client: AsyncAbsurd) -> None:
    tokens: list[str] = []
    agent, refunds = refund_agent(tokens, [])

    @absurd_client.register_task(name="support")
    async def task(params: Any, ctx: Any) -> str:
        return (await agent.run("refund me")).output

    spawned = await absurd_client.spawn("support", {})
    await absurd_client.work_batch(claim_timeout=30)
    await fail_event_token(absurd_client, tokens[0], "manager said no")
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.state == "completed", snapshot.failure
    assert "manager said no" in str(snapshot.result)
    assert refunds == []


async def test_tokens_from_elsewhere_are_refused(absurd_client: AsyncAbsurd) -> None:
    with pytest.raises(UserError, match="not a resume token"):
        await resolve_event_token(absurd_client, "something-else", {})


async def test_a_timeout_is_journaled_and_denies_the_call(absurd_dsn: str, absurd_queue: str) -> None:

    tokens: list[str] = []
    agent, refunds = refund_agent(tokens, [], timeout=timedelta(seconds=1))
    crash = {"armed": True}
    async with client_on_fake_clock(absurd_dsn, absurd_queue) as (client, clock):

        @client.register_task(name="support")
        async def task(params: Any, ctx: Any) -> str:
            output = (await agent.run("refund me")).output
            if crash["armed"]:
                crash["armed"] = False
                raise RuntimeError("crash after the timed-out wait was journaled")
            return output

        spawned = await client.spawn("support", {})
        await run_queued(client)  # the run sleeps until its wait times out (1 s)
        asleep = await client.fetch_task_result(spawned["task_id"])
        assert asleep is not None and asleep.state == "sleeping"
        await clock.advance(timedelta(seconds=1.5))  # it times out, and becomes claimable again
        snapshot = await run_to_end(client, spawned["task_id"])
    assert snapshot.state == "completed", snapshot.failure
    assert "Timed out" in str(snapshot.result)
    assert refunds == []
    assert len(tokens) == 1
    names = await checkpoint_names(absurd_dsn, absurd_queue, str(spawned["task_id"]))
    assert "support__external_event:approve_refund.timed_out" in names


PLAIN_PAYLOAD = {"approvals": {"r1": True}}
"""The documented shape: the JSON form of `DeferredToolResults`, without this package's envelope."""


async def check_a_plain_payload_resumes_the_run(
    absurd_client: AsyncAbsurd, send: Callable[[str], Awaitable[None]]
) -> None:
    """`send(token)` answers the run's approval with `PLAIN_PAYLOAD`; the run resumes and the refund happens."""
    tokens: list[str] = []
    agent, refunds = refund_agent(tokens, [])

    @absurd_client.register_task(name="support")
    async def task(params: Any, ctx: Any) -> str:
        return (await agent.run("refund me")).output

    spawned = await absurd_client.spawn("support", {})
    await absurd_client.work_batch(claim_timeout=30)
    await send(tokens[0])
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.result == "refunded 5", snapshot.failure
    assert refunds == [5]


async def test_a_plain_json_payload_resumes_the_run(absurd_client: AsyncAbsurd) -> None:
    async def send(token: str) -> None:
        await absurd_client.emit_event(token, PLAIN_PAYLOAD)

    await check_a_plain_payload_resumes_the_run(absurd_client, send)

"""Helpers of the `durable_transaction` tests: a refunds table per test and a scripted refund agent."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelResponsePart, TextPart, ToolCallPart

from pydantic_ai_absurd import AbsurdAgent, durable_transaction
from tests.helpers.agents import Script

STEP = "billing__function_toolset__<agent>.call_tool:refund@call-{}"
"""The checkpoint name of the refund tool's call `call-<order id>`."""


def register(absurd: AsyncAbsurd, agent: AbsurdAgent[None, str]) -> None:
    """Register the task `refund`, which runs `agent` on the prompt "refund"."""

    @absurd.register_task(name="refund")
    async def run(params: dict[str, Any], ctx: Any) -> str:
        return (await agent.run("refund")).output


async def count_rows(dsn: str, table: str) -> int:
    """Committed rows of `table`, read on a connection of its own."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(f'select count(*) from "{table}"')
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])


async def refunds_table(dsn: str, name: str) -> AsyncIterator[str]:
    """Create table `name` (order_id, amount) for the test and drop it after."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(f'create table "{name}" (order_id text not null, amount int not null)')
        try:
            yield name
        finally:
            await conn.execute(f'drop table if exists "{name}"')


def refund_calls(*order_ids: str) -> Script:
    """A model that asks for one refund per order id (parallel calls), then answers with the tool returns."""

    def first(_: object) -> list[ModelResponsePart]:
        return [ToolCallPart("refund", {"order_id": o, "amount": 10}, tool_call_id=f"call-{o}") for o in order_ids]

    def last(messages: object) -> list[ModelResponsePart]:
        return [TextPart("done")]

    return Script(turns=[first, last])


@dataclass
class Refunds:
    """What the refund tool did: executions per order id (in this process)."""

    executions: list[str] = field(default_factory=list[str])


def refund_agent(
    script: Script,
    table: str,
    refunds: Refunds,
    *,
    inside: Callable[[str, psycopg.AsyncConnection[object]], Awaitable[None]] | None = None,
    after: Callable[[str], Awaitable[None]] | None = None,
) -> AbsurdAgent[None, str]:
    """An agent whose `refund` tool inserts one row in `table` in a `durable_transaction()` block.

    `inside(order_id, conn)` runs in the block after the insert, `after(order_id)` after the block.
    """
    agent = Agent(script.model(), name="billing")

    @agent.tool
    async def refund(ctx: RunContext[None], order_id: str, amount: int) -> str:
        refunds.executions.append(order_id)
        async with durable_transaction() as conn:
            await conn.execute(
                f'insert into "{table}" (order_id, amount) values (%s, %s)',
                (order_id, amount),
            )
            if inside is not None:
                await inside(order_id, conn)
        if after is not None:
            await after(order_id)
        return f"refunded {amount} on {order_id}"

    return AbsurdAgent(agent)

"""`inspect` measures the time a run waited for input: from the ask to the answer, by the database's clock."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent, DeferredToolRequests, DeferredToolResults, RunContext, Tool
from pydantic_ai.capabilities import HandleDeferredToolCalls
from pydantic_ai.messages import TextPart, ToolCallPart

from pydantic_ai_absurd import AbsurdAgent, Inbox, inspect_task
from pydantic_ai_absurd.inspection._render import render_timeline
from pydantic_ai_absurd.testing import run_queued
from tests.helpers.agents import Script
from tests.helpers.sql import client_on_fake_clock, wait_for_database_clock

WAITED = timedelta(seconds=1.5)
WAITED_INLINE = timedelta(seconds=0.3)
"""The inline ask's wait, on the real clock: any length shows whether the ask's own time is counted."""


async def _spawn_approval_task(absurd: AsyncAbsurd, ask: Any, script: Script, **wait: Any) -> str:
    """Spawn a task whose agent asks `ask` to approve `delete_file`, and run it as far as it goes."""

    async def delete_file(path: str) -> str:
        return f"deleted {path}"

    inner = Agent(
        script.model(),
        name="ops",
        tools=[Tool(delete_file, requires_approval=True)],
        capabilities=[HandleDeferredToolCalls(ask, name="approve", **wait)],
    )
    agent = AbsurdAgent(inner)

    @absurd.register_task(name="ops")
    async def task(params: Any, ctx: Any) -> str:
        return (await agent.run("clean up")).output

    spawned = await absurd.spawn("ops", {})
    await run_queued(absurd)
    return str(spawned["task_id"])


async def test_waiting_time_is_ask_to_answer(
    absurd_dsn: str, absurd_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The inbox answers on connections of its own: they run on the fake clock too.
    async with client_on_fake_clock(absurd_dsn, absurd_queue, new_connections=monkeypatch) as (client, clock):
        inbox = Inbox(client)
        script = Script(
            turns=[
                lambda _: [ToolCallPart("delete_file", {"path": "/tmp/a"}, tool_call_id="d1")],
                lambda _: [TextPart("done")],
            ]
        )
        task_id = await _spawn_approval_task(client, inbox.ask, script, timeout=timedelta(hours=24))
        waiting = await inspect_task(client, task_id)
        ask = next(step for step in waiting.steps if step.kind == "wait_for_input")
        assert ask.committed_at is not None

        await clock.advance(WAITED)
        (request,) = await inbox.pending(task_id=task_id)
        await inbox.approve(request.token)
        await run_queued(client)

        done = await inspect_task(client, task_id)
    assert done.state == "completed"
    assert done.totals.waiting_seconds >= WAITED.total_seconds()
    shown = next(line for line in render_timeline(done).splitlines() if "waiting for input" in line)
    assert float(shown.rsplit(" ", 1)[1].removesuffix("s")) >= WAITED.total_seconds()


async def test_an_unanswered_wait_counts_until_now(
    absurd_dsn: str, absurd_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `inspect_task` reads "now" on a connection of its own: it runs on the fake clock too.
    async with client_on_fake_clock(absurd_dsn, absurd_queue, new_connections=monkeypatch) as (client, clock):
        inbox = Inbox(client)
        script = Script(turns=[lambda _: [ToolCallPart("delete_file", {"path": "/tmp/a"}, tool_call_id="d1")]])
        task_id = await _spawn_approval_task(client, inbox.ask, script)
        first = await inspect_task(client, task_id)
        ask = next(step for step in first.steps if step.kind == "wait_for_input")
        assert ask.committed_at is not None
        await clock.advance(WAITED)

        waiting = await inspect_task(client, task_id)
    assert waiting.state == "sleeping"
    ask = next(step for step in waiting.steps if step.kind == "wait_for_input")
    assert ask.waited_seconds is not None and ask.waited_seconds >= WAITED.total_seconds()
    assert waiting.totals.waiting_seconds >= WAITED.total_seconds()
    assert "waited " in render_timeline(waiting)


async def test_an_ask_that_answers_inline_counts_its_own_time(absurd_client: AsyncAbsurd, absurd_dsn: str) -> None:
    """An `ask` that prompts someone and returns the answer: the wait is the ask itself.

    On the real clock: on the fake one, the checkpoints after the ask share its timestamp, and their order (by
    commit time) is then undefined, so the step before the ask could be any of them.
    """
    script = Script(
        turns=[
            lambda _: [ToolCallPart("delete_file", {"path": "/tmp/a"}, tool_call_id="d1")],
            lambda _: [TextPart("done")],
        ]
    )
    started: list[datetime] = []

    async def ask(ctx: RunContext[None], requests: DeferredToolRequests, token: str) -> DeferredToolResults:
        async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
            row = await (await conn.execute("select absurd.current_time()")).fetchone()
        assert row is not None
        started.append(row[0])
        await wait_for_database_clock(absurd_dsn, row[0] + WAITED_INLINE)  # someone takes a while to answer
        return DeferredToolResults(approvals={"d1": True})

    task_id = await _spawn_approval_task(absurd_client, ask, script)
    done = await inspect_task(absurd_client, task_id)
    assert done.state == "completed" and started
    assert done.totals.waiting_seconds >= WAITED_INLINE.total_seconds()

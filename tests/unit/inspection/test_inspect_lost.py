"""`inspect` tells the truth about crashes: lost executions, the steps that ran again, failure tracebacks."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from absurd_sdk import AsyncAbsurd, AsyncTaskContext

from pydantic_ai_absurd import inspect_task
from pydantic_ai_absurd.inspection._render import render_timeline
from pydantic_ai_absurd.worker import _takeover as takeover  # pyright: ignore[reportPrivateUsage]
from tests.helpers.agents import run_until_done
from tests.helpers.polling import wait_until
from tests.helpers.sql import client_on_fake_clock
from tests.helpers.workers import (
    is_completed,
    running_worker,
)


async def test_an_expired_lease_shows_as_a_lost_execution(absurd_dsn: str, absurd_queue: str) -> None:
    async with client_on_fake_clock(absurd_dsn, absurd_queue) as (client, clock):

        @client.register_task(name="two_steps")
        async def two_steps(params: Any, ctx: AsyncTaskContext) -> str:
            async def step() -> str:
                await clock.advance(timedelta(seconds=0.1))  # the step takes its time
                return "ok"

            await ctx.step("first", step)
            return "done"

        spawned = await client.spawn("two_steps", None)
        [claimed] = await client.claim_tasks(claim_timeout=1, worker_id="vanished-host")
        await clock.advance(timedelta(seconds=1.5))  # the claim expires: nobody heartbeats it
        assert (await run_until_done(client, spawned["task_id"])).state == "completed"

        timeline = await inspect_task(client, spawned["task_id"])
    (lost,) = timeline.lost_executions
    assert (lost.how, lost.attempt, lost.worker) == ("lease_expired", claimed["attempt"], "vanished-host")
    assert [timeline.steps[index - 1].name for index in lost.reran] == ["first"]
    assert "lease expired" in render_timeline(timeline)


async def test_the_traceback_of_a_failed_attempt_is_shown(absurd_client: AsyncAbsurd) -> None:
    @absurd_client.register_task(name="broken", default_max_attempts=1)
    async def broken(params: Any, ctx: AsyncTaskContext) -> str:
        raise ValueError("the invoice total is negative")

    spawned = await absurd_client.spawn("broken", None)
    assert (await run_until_done(absurd_client, spawned["task_id"])).state == "failed"
    text = render_timeline(await inspect_task(absurd_client, spawned["task_id"]))
    assert "ValueError: the invoice total is negative" in text
    assert "Traceback (most recent call last):" in text
    assert 'raise ValueError("the invoice total is negative")' in text
    assert all(len(line) <= 100 for line in text.splitlines())


async def test_a_takeover_whose_record_fails_still_hands_the_run_back(
    absurd_client: AsyncAbsurd, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pydantic_ai_absurd import _worker_records

    monkeypatch.setattr(_worker_records, "_LOST", "pydantic_ai_absurd.migrations")  # exists, other columns

    @absurd_client.register_task(name="hello")
    async def hello(params: Any, ctx: AsyncTaskContext) -> str:
        return "hi"

    spawned = await absurd_client.spawn("hello", None)
    ghost = f"{takeover.CLAIM_PREFIX}ghost:1:deadbeef"  # a worker of ours whose lock nobody holds: dead
    await absurd_client.claim_tasks(claim_timeout=60, worker_id=ghost)
    async with running_worker(absurd_client) as worker:
        await wait_until(lambda: is_completed(absurd_client, spawned["task_id"]))
        assert worker.health.taken_over == 1
    assert "cannot record the lost executions of a takeover" in caplog.text
    monkeypatch.undo()
    assert (await inspect_task(absurd_client, spawned["task_id"])).lost_executions == ()

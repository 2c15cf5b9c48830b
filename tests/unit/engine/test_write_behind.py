"""Model and tool steps return while their checkpoint write is in flight; nothing runs before it commits."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from absurd_sdk import AsyncAbsurd, FailedTask
from pydantic_ai import Agent, RunContext

from pydantic_ai_absurd import AbsurdAgent
from pydantic_ai_absurd._steps import _settle, commit_hook, run_step  # pyright: ignore[reportPrivateUsage]
from tests.helpers.agents import Script, run_until_done, two_tools_script
from tests.helpers.sql import checkpoints

_YIELDS = 50
"""Event-loop turns a held write gives the run: more than it needs to reach the next body if nothing stopped it."""


def _agent(script: Script, order: list[str]) -> AbsurdAgent[None, str]:
    agent = Agent(script.model(), name="behind")

    @agent.tool
    async def first(ctx: RunContext[None], n: int) -> str:
        order.append("body first")
        return "one"

    @agent.tool
    async def second(ctx: RunContext[None], n: int) -> str:
        order.append("body second")
        return "two"

    return AbsurdAgent(agent)


def _short(checkpoint_name: str) -> str:
    return checkpoint_name.rsplit("__", 1)[-1]


async def test_no_body_starts_before_the_writes_of_the_steps_before_it_committed(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    """Each write is held for many loop turns; the parallel tools and the next request still come after it."""
    order: list[str] = []
    durable = _agent(two_tools_script(), order)

    async def slow_write(checkpoint_name: str) -> None:
        for _ in range(_YIELDS):
            await asyncio.sleep(0)

    async def committed(checkpoint_name: str) -> None:
        order.append(f"committed {_short(checkpoint_name)}")

    @absurd_client.register_task(name="behind")
    async def behind(params: Any, ctx: Any) -> str:
        with commit_hook(slow_write, after=committed):
            output = (await durable.run("go")).output
        order.append("run returned")
        return output

    spawned = await absurd_client.spawn("behind", {})
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.result == "done", snapshot.failure
    assert order[0] == "committed model.request"
    assert set(order[1:3]) == {"body first", "body second"}
    assert set(order[3:5]) == {
        "committed <agent>.call_tool:first@c1",
        "committed <agent>.call_tool:second@c2",
    }
    assert order[5:] == ["committed model.request#2", "run returned"]
    assert len(await checkpoints(absurd_dsn, absurd_queue, str(spawned["task_id"]))) == 4


async def test_a_write_that_failed_fails_the_run_before_the_next_body(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    order: list[str] = []
    durable = _agent(two_tools_script(), order)

    async def failing_write(checkpoint_name: str) -> None:
        raise RuntimeError(f"the write of {_short(checkpoint_name)} failed")

    @absurd_client.register_task(name="behind")
    async def behind(params: Any, ctx: Any) -> str:
        with commit_hook(failing_write):
            return (await durable.run("go")).output

    spawned = await absurd_client.spawn("behind", {}, max_attempts=1)
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.state == "failed"
    assert "the write of model.request failed" in str(snapshot.failure)
    assert order == []  # neither tool ran: their step settled the failed write first
    assert await checkpoints(absurd_dsn, absurd_queue, str(spawned["task_id"])) == {}


async def test_a_step_cancelled_while_settling_waits_for_the_write_in_flight(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    write_started = asyncio.Event()
    release = asyncio.Event()
    ran: list[str] = []

    async def hold(checkpoint_name: str) -> None:
        if checkpoint_name == "one":
            write_started.set()
            await release.wait()

    async def body(name: str) -> str:
        ran.append(name)
        return name

    @absurd_client.register_task(name="settle")
    async def settle(params: Any, ctx: Any) -> str:
        with commit_hook(hold):
            outcome = await run_step("one", lambda: body("one"), write_behind=True)  # returns, its write held
            assert outcome.executed and outcome.value == "one"
            await write_started.wait()
            second = asyncio.ensure_future(run_step("two", lambda: body("two")))
            for _ in range(_YIELDS):
                await asyncio.sleep(0)
            assert not second.done()  # settling `one` before it begins
            second.cancel()
            await asyncio.sleep(0)
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await second
        return "torn down"

    spawned = await absurd_client.spawn("settle", {})
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.result == "torn down", snapshot.failure
    assert ran == ["one"]
    stored = await checkpoints(absurd_dsn, absurd_queue, str(spawned["task_id"]))
    assert set(stored) == {"one"}


async def test_of_several_failed_writes_the_end_state_is_raised() -> None:
    """An end state (the run was taken over, say) explains why the other writes failed: it is the one raised."""

    async def fail(error: BaseException) -> None:
        raise error

    writes = {asyncio.ensure_future(fail(RuntimeError("connection lost"))), asyncio.ensure_future(fail(FailedTask()))}
    with pytest.raises(FailedTask):
        await _settle(writes)
    with pytest.raises(RuntimeError, match="connection lost"):
        await _settle({asyncio.ensure_future(fail(RuntimeError("connection lost")))})

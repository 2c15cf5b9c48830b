"""The lease keeper in isolation (with a stand-in task context), and the checkpointed graph sleep."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest
from absurd_sdk import AsyncAbsurd, AsyncTaskContext, CancelledTask, FailedTask

from pydantic_ai_absurd import _lease as lease_module
from pydantic_ai_absurd._execution import current_task_context
from pydantic_ai_absurd._lease import LeaseKeeper
from pydantic_ai_absurd._time import graph_sleep
from tests.helpers.agents import SimulatedCrash, run_until_done
from tests.helpers.sql import checkpoints


class FakeTaskContext:
    """Only what the lease keeper touches: the claim timeout and `heartbeat()`."""

    task_id = "fake"

    def __init__(self, outcomes: list[BaseException | None]) -> None:
        self._claim_timeout = 0.03  # heartbeats every 10 ms (`_fast_heartbeats`)
        self.outcomes = outcomes
        self.beats = 0

    async def heartbeat(self) -> None:
        self.beats += 1
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome


@pytest.fixture(autouse=True)
def _fast_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    """The keeper beats at most every 0.2 s (`MIN_HEARTBEAT_INTERVAL`); the stand-in contexts here every 10 ms."""
    monkeypatch.setattr(lease_module, "MIN_HEARTBEAT_INTERVAL", 0.01)


def keeper(ctx: FakeTaskContext) -> LeaseKeeper:
    return LeaseKeeper(cast(AsyncTaskContext, ctx))


@pytest.mark.parametrize("ended", [CancelledTask(), FailedTask()])
async def test_an_ended_run_aborts_every_running_body(ended: Exception) -> None:
    ctx = FakeTaskContext([None, ended])
    lease = keeper(ctx)
    finished: list[str] = []

    async def body(name: str) -> None:
        await asyncio.sleep(30)
        finished.append(name)  # pragma: no cover - aborted first

    results = await asyncio.gather(lease.run(lambda: body("a")), lease.run(lambda: body("b")), return_exceptions=True)
    assert [type(r) for r in results] == [type(ended), type(ended)]
    assert finished == []
    with pytest.raises(type(ended)):  # later steps of the same execution end at once
        await lease.run(lambda: asyncio.sleep(0))


async def test_a_failed_heartbeat_is_logged_and_the_body_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    ctx = FakeTaskContext([ConnectionError("blip")])
    lease = keeper(ctx)

    async def body() -> str:
        while ctx.beats < 2:  # a failed heartbeat, then another: the body was never interrupted
            await asyncio.sleep(0.005)
        return "done"

    with caplog.at_level(logging.WARNING, logger="pydantic_ai_absurd.lease"):
        assert await lease.run(body) == "done"
    assert ctx.beats >= 2
    assert "Heartbeat for task fake failed" in caplog.text


async def test_no_heartbeat_once_no_body_runs() -> None:
    ctx = FakeTaskContext([])
    lease = keeper(ctx)
    assert await lease.run(lambda: asyncio.sleep(0, result=1)) == 1
    assert lease._heartbeat is None  # pyright: ignore[reportPrivateUsage]  # stopped with the last body
    assert ctx.beats == 0


async def test_graph_sleep_keeps_its_wake_time_across_a_resume(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    crash = {"armed": True}

    @absurd_client.register_task(name="sleepy")
    async def task(params: Any, ctx: Any) -> str:
        assert current_task_context() is not None
        await graph_sleep("sleeper", 1, 0.3, suspend_threshold=5.0)
        if crash["armed"]:
            crash["armed"] = False
            raise SimulatedCrash("after the sleep")
        return "awake"

    spawned = await absurd_client.spawn("sleepy", {})
    first = await absurd_client.fetch_task_result(spawned["task_id"])
    assert first is not None
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.result == "awake"
    stored = await checkpoints(absurd_dsn, absurd_queue, str(spawned["task_id"]))
    assert list(stored) == ["sleeper__graph.sleep"]  # recorded once; the resume reused the wake time


async def test_the_keeper_owns_its_bodies_a_cancelled_caller_waits_for_the_body_to_stop() -> None:
    lease = keeper(FakeTaskContext([]))
    entered = asyncio.Event()
    cleanup_may_finish = asyncio.Event()
    log: list[str] = []

    async def body() -> None:
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await cleanup_may_finish.wait()  # e.g. a tool closing a connection
            log.append("body stopped")
            raise

    caller = asyncio.ensure_future(lease.run(body))
    await entered.wait()
    caller.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not caller.done()  # still waiting for its body
    cleanup_may_finish.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert log == ["body stopped"]


async def test_a_held_execution_is_cancelled_when_the_run_ends_between_steps() -> None:
    ctx = FakeTaskContext([CancelledTask()])
    lease = keeper(ctx)
    with pytest.raises(asyncio.CancelledError):
        async with lease.hold():
            await asyncio.sleep(30)  # user code between steps, not a step body
    assert isinstance(lease.ended, CancelledTask)

"""Worker options do what they say, the start-up check, and the one lease keeper of a running task."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd, AsyncTaskContext, CancelledTask, FailedTask
from pydantic_ai import Agent
from pydantic_ai.messages import TextPart, ToolCallPart

from pydantic_ai_absurd import AbsurdAgent, _absurd
from pydantic_ai_absurd._steps import run_step
from pydantic_ai_absurd.errors import IncompatibleSdkError
from pydantic_ai_absurd.schema import create_queue_sync, drop_queue_sync
from pydantic_ai_absurd.worker import DEFAULT_CONCURRENCY, Worker, WorkerConfig, WorkerHealth, run_worker
from pydantic_ai_absurd.worker import _run as run_module  # pyright: ignore[reportPrivateUsage]
from tests.helpers.agents import Script
from tests.helpers.polling import WAIT, wait_until
from tests.helpers.sql import runs, task_state
from tests.helpers.workers import running_worker


async def _state(absurd: AsyncAbsurd, task_id: str) -> str | None:
    snapshot = await absurd.fetch_task_result(task_id)
    return None if snapshot is None else snapshot.state


# -- queue ------------------------------------------------------------------------------------------------------


@pytest.fixture
async def other_queue(absurd_dsn: str) -> AsyncIterator[str]:
    name = f"other_{uuid.uuid4().hex[:10]}"
    await asyncio.to_thread(create_queue_sync, absurd_dsn, name)
    yield name
    await asyncio.to_thread(drop_queue_sync, absurd_dsn, name)


@pytest.mark.parametrize("registered_for", ["the client's queue", "the worker's queue"])
async def test_worker_queue_option_runs_tasks_of_that_queue(
    absurd_client: AsyncAbsurd, absurd_dsn: str, other_queue: str, registered_for: str
) -> None:
    explicit = other_queue if registered_for == "the worker's queue" else None

    @absurd_client.register_task(name="where", queue=explicit)
    async def where(params: Any, ctx: AsyncTaskContext) -> str:
        return await ctx.step("step", _answer)

    spawner = AsyncAbsurd(absurd_dsn, queue_name=other_queue)  # a web process that registers nothing
    try:
        spawned = await spawner.spawn("where", None, queue=other_queue)
    finally:
        await spawner.close()
    async with running_worker(absurd_client, queue=other_queue) as worker:
        assert worker.queue == other_queue
        await wait_until(lambda: _completed_in(absurd_client, spawned["task_id"], other_queue))
    snapshot = await absurd_client.fetch_task_result(spawned["task_id"], queue_name=other_queue)
    assert snapshot is not None
    assert snapshot.result == "here"
    state = await task_state(absurd_dsn, other_queue, spawned["task_id"])
    assert state["attempts"] == 1  # no attempt burnt on a queue mismatch
    assert worker.health.completed == 1


async def _completed_in(absurd: AsyncAbsurd, task_id: str, queue: str) -> bool:
    snapshot = await absurd.fetch_task_result(task_id, queue_name=queue)
    return snapshot is not None and snapshot.state == "completed"


async def _answer() -> str:
    return "here"


async def _captured_config(monkeypatch: pytest.MonkeyPatch, absurd: AsyncAbsurd, **kwargs: Any) -> WorkerConfig:
    seen: list[WorkerConfig] = []

    async def run(self: Worker) -> None:
        seen.append(self.config)

    monkeypatch.setattr(run_module.Worker, "run", run)
    await run_worker(absurd, **kwargs)
    [config] = seen
    return config


async def test_run_worker_keyword_arguments_override_the_config(
    absurd_client: AsyncAbsurd, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = WorkerConfig(concurrency=4, claim_timeout=30, poll_interval=2.0, queue="q1", drain_timeout=3.0)
    got = await _captured_config(monkeypatch, absurd_client, config=base, concurrency=100)
    assert got.concurrency == 100  # explicit, even though 100 is the default
    assert DEFAULT_CONCURRENCY == 100
    assert (got.claim_timeout, got.poll_interval, got.queue, got.drain_timeout) == (30, 2.0, "q1", 3.0)
    got = await _captured_config(
        monkeypatch, absurd_client, config=base, claim_timeout=10, poll_interval=0.5, queue="q2", drain_timeout=25.0
    )
    assert (got.concurrency, got.claim_timeout, got.poll_interval, got.queue, got.drain_timeout) == (
        4,
        10,
        0.5,
        "q2",
        25.0,
    )
    got = await _captured_config(monkeypatch, absurd_client, config=base)
    assert got == base
    got = await _captured_config(monkeypatch, absurd_client, config=base, heartbeat=False)
    assert not got.heartbeat
    with pytest.raises(TypeError, match="no_such_option"):
        await _captured_config(monkeypatch, absurd_client, no_such_option=1)


# -- start-up check ---------------------------------------------------------------------------------------------


@pytest.fixture
def sdk_without_execute_task(monkeypatch: pytest.MonkeyPatch) -> Any:
    _absurd.missing_private_names.cache_clear()
    monkeypatch.delattr(AsyncAbsurd, "_execute_task")
    yield
    monkeypatch.undo()
    _absurd.missing_private_names.cache_clear()


async def test_worker_refuses_to_start_on_an_incompatible_sdk(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, sdk_without_execute_task: Any
) -> None:
    spawned = await absurd_client.spawn("anything", None, queue=absurd_queue)
    worker = Worker(absurd_client, WorkerConfig(handle_signals=False))
    with pytest.raises(IncompatibleSdkError, match=r"lacks AsyncAbsurd\._execute_task") as raised:
        await asyncio.wait_for(worker.run(), WAIT)
    assert "\n" not in str(raised.value)
    assert worker.health.claimed == 0
    assert (await task_state(absurd_dsn, absurd_queue, spawned["task_id"]))["state"] == "pending"  # never claimed


def test_cli_worker_refuses_to_start_on_an_incompatible_sdk(
    capsys: pytest.CaptureFixture[str], sdk_without_execute_task: Any, absurd_dsn: str
) -> None:
    from pydantic_ai_absurd.cli import main

    assert main(["worker", "tests.helpers.apps.worker_app:absurd", "--dsn", absurd_dsn]) == 2
    err = capsys.readouterr().err.strip()
    assert "lacks AsyncAbsurd._execute_task" in err
    assert len(err.splitlines()) == 1


# -- one lease keeper -------------------------------------------------------------------------------------------


async def test_cancel_during_a_long_step_raises_cancelled_task_from_the_step(absurd_client: AsyncAbsurd) -> None:
    started = asyncio.Event()
    seen: list[BaseException] = []
    stopped = asyncio.Event()

    @absurd_client.register_task(name="long_step")
    async def long_step(params: Any, ctx: AsyncTaskContext) -> str:
        async def body() -> str:
            started.set()
            try:
                await asyncio.sleep(WAIT * 3)
            except asyncio.CancelledError:
                seen.append(asyncio.CancelledError())  # the body itself is cancelled...
                raise
            return "never"

        try:
            await run_step("long", body)
        except BaseException as err:
            seen.append(err)  # ...and the caller of the step sees Absurd's exception
            stopped.set()
            raise
        return "never"

    spawned = await absurd_client.spawn("long_step", None)
    async with running_worker(absurd_client, claim_timeout=1, concurrency=1) as worker:
        await asyncio.wait_for(started.wait(), WAIT)
        await absurd_client.cancel_task(spawned["task_id"])
        await asyncio.wait_for(stopped.wait(), WAIT)  # within a heartbeat (1/3 s), not after the step
        await wait_until(lambda: _cancelled_counted(worker.health))
    assert [type(e) for e in seen] == [asyncio.CancelledError, CancelledTask]
    assert await _state(absurd_client, spawned["task_id"]) == "cancelled"
    assert worker.health.failed == 0


async def _cancelled_counted(health: WorkerHealth) -> bool:
    return health.cancelled == 1 and health.in_flight == 0


async def test_a_run_failed_elsewhere_stops_the_step_with_failed_task_and_is_logged_as_lost(
    absurd_client: AsyncAbsurd, absurd_queue: str, absurd_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    started = asyncio.Event()
    seen: list[BaseException] = []

    @absurd_client.register_task(name="long_step")
    async def long_step(params: Any, ctx: AsyncTaskContext) -> str:
        async def body() -> str:
            started.set()
            await asyncio.sleep(WAIT * 3)
            return "never"

        try:
            await run_step("long", body)
        except BaseException as err:
            seen.append(err)
            raise
        return "never"

    spawned = await absurd_client.spawn("long_step", None, max_attempts=1)
    with caplog.at_level(logging.INFO, logger="pydantic_ai_absurd.worker"):
        async with running_worker(absurd_client, claim_timeout=1, concurrency=1) as worker:
            await asyncio.wait_for(started.wait(), WAIT)
            [run] = await runs(absurd_dsn, absurd_queue, spawned["task_id"])
            async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
                await _absurd.fail_run(conn, absurd_queue, str(run["run_id"]), {"name": "elsewhere"})
            await wait_until(lambda: _lost_counted(worker.health))
    assert [type(e) for e in seen] == [FailedTask]
    assert any(r.getMessage().startswith("lost the claim of ") for r in caplog.records)
    assert worker.health.failed == 0


async def _lost_counted(health: WorkerHealth) -> bool:
    return health.lost == 1 and health.in_flight == 0


async def test_the_worker_has_no_heartbeat_loop_of_its_own() -> None:
    assert not hasattr(Worker, "_heartbeat_loop")
    assert not hasattr(Worker, "_extend")


async def test_drain_waits_for_a_sync_tool_in_a_thread_before_handing_back(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    in_thread = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def blocking() -> str:
        in_thread.set()
        release.wait(WAIT)
        order.append("thread returned")
        return "done"

    script = Script(
        turns=[lambda _: [ToolCallPart("blocking", {}, tool_call_id="call-1")], lambda _: [TextPart("finished")]]
    )
    agent = Agent(script.model(), name="syncer")
    agent.tool_plain(blocking)  # a sync tool: Pydantic AI runs it in a thread
    durable = AbsurdAgent(agent)

    @absurd_client.register_task(name="sync_tool")
    async def sync_tool(params: Any, ctx: AsyncTaskContext) -> object:
        return (await durable.run("go")).output

    spawned = await absurd_client.spawn("sync_tool", None)
    with caplog.at_level(logging.INFO, logger="pydantic_ai_absurd.worker"):
        async with running_worker(absurd_client, concurrency=1, drain_timeout=0.1) as worker:
            await asyncio.to_thread(in_thread.wait, WAIT)
            worker.request_stop()
            await wait_until(lambda: _logged(caplog, "still running in a thread"))
            # Past the drain timeout, the tool still runs: the run stays claimed by this worker.
            assert [r["state"] for r in await runs(absurd_dsn, absurd_queue, spawned["task_id"])] == ["running"]
            assert worker.health.handed_back == 0
            release.set()
    order.append("stopped")
    assert order == ["thread returned", "stopped"]
    assert worker.health.handed_back == 1
    assert [r["state"] for r in await runs(absurd_dsn, absurd_queue, spawned["task_id"])] == ["sleeping"]


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)

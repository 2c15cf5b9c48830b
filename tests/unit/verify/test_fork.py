"""Forking a task: a new task reuses a prefix of another's checkpoints and runs the rest live."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent
from pydantic_ai.messages import TextPart, ToolCallPart

from pydantic_ai_absurd import AbsurdAgent, fork_task
from pydantic_ai_absurd.errors import ForkError
from pydantic_ai_absurd.testing import run_queued
from pydantic_ai_absurd.verify import FORK_HEADER, ForkOrigin, fork_origin, fork_points_of, recorded_tasks
from tests.helpers.agents import Script, run_until_done
from tests.helpers.apps.verify_app import build_app
from tests.helpers.polling import wait_until
from tests.helpers.sql import checkpoint_names, checkpoints

STEPS = [
    "billing__model.request",
    "billing__function_toolset__<agent>.call_tool:charge@c1",
    "billing__function_toolset__<agent>.call_tool:charge@c2",
    "billing__model.request#2",
    "summary__model.request",
]
MODEL_STEPS = {0, 3, 4}
TOOL_STEPS = {1: 1, 2: 2}  # step index -> charged amount


async def completed_source(dsn: str, queue: str) -> str:
    app = build_app(dsn, queue, wait=False)
    spawned = await app.absurd.spawn("bill", {"prompt": "bill it"}, max_attempts=2)
    snapshot = await run_until_done(app.absurd, str(spawned["task_id"]))
    assert snapshot.state == "completed"
    assert app.model_calls == 3 and app.charges == [1, 2]
    await app.absurd.close()
    task_id = str(spawned["task_id"])
    assert await checkpoint_names(dsn, queue, task_id) == STEPS
    return task_id


async def test_fork_at_every_step_reuses_the_prefix(absurd_dsn: str, absurd_queue: str) -> None:
    source = await completed_source(absurd_dsn, absurd_queue)
    source_states = await checkpoints(absurd_dsn, absurd_queue, source)
    points = [0, 1, 3, 4, 5]
    probe = build_app(absurd_dsn, absurd_queue, wait=False)
    (recorded,) = await recorded_tasks(probe.absurd, [source])
    await probe.absurd.close()
    assert fork_points_of(recorded) == points
    for at_step in points:
        app = build_app(absurd_dsn, absurd_queue, wait=False)
        fork_id = await fork_task(app.absurd, source, at_step=at_step)
        assert fork_id != source
        assert await checkpoint_names(absurd_dsn, absurd_queue, fork_id) == STEPS[:at_step]
        snapshot = await run_until_done(app.absurd, fork_id)
        assert snapshot.state == "completed"
        assert snapshot.result == {"billed": "done", "summary": "done"}
        live_models = len([index for index in MODEL_STEPS if index >= at_step])
        assert app.model_calls == live_models, at_step
        assert app.charges == [amount for index, amount in TOOL_STEPS.items() if index >= at_step], at_step
        assert await checkpoint_names(absurd_dsn, absurd_queue, fork_id) == STEPS
        await app.absurd.close()
    assert await checkpoints(absurd_dsn, absurd_queue, source) == source_states


async def test_fork_records_its_origin_and_keeps_the_source_options(absurd_dsn: str, absurd_queue: str) -> None:
    source = await completed_source(absurd_dsn, absurd_queue)
    app = build_app(absurd_dsn, absurd_queue, wait=False)
    fork_id = await fork_task(app.absurd, source, at_step=3, params=None)  # None keeps the source's params
    (task,) = await recorded_tasks(app.absurd, [fork_id])
    assert task.task_name == "bill" and task.params == {"prompt": "bill it"} and task.state == "pending"
    origin = fork_origin(task.headers)
    assert origin == ForkOrigin(task_id=source, at_step=3, last_step=STEPS[2])
    assert origin is not None and origin.describe() == f"forked from {source} at step 3 (after {STEPS[2]!r})"
    assert task.headers[FORK_HEADER]["task_id"] == source
    (original,) = await recorded_tasks(app.absurd, [source])
    assert fork_origin(original.headers) is None and fork_origin(None) is None
    await app.absurd.close()


async def test_refused_at_step_values_name_the_valid_choices(absurd_dsn: str, absurd_queue: str) -> None:
    source = await completed_source(absurd_dsn, absurd_queue)
    app = build_app(absurd_dsn, absurd_queue, wait=False)
    cases: list[tuple[Any, str]] = [
        (-1, "is negative"),
        (6, "beyond the recording, which has 5 committed step"),
        (2, "one parallel batch of tool calls in two"),
        ("1", "must be an integer"),
        (True, "must be an integer"),
    ]
    for at_step, reason in cases:
        with pytest.raises(ForkError) as raised:
            await fork_task(app.absurd, source, at_step=at_step)
        message = str(raised.value)
        assert reason in message and message.endswith("valid choices: 0-1, 3-5.") and "\n" not in message
    with pytest.raises(ForkError, match="has no such task"):
        await fork_task(app.absurd, "01a23148-0000-7000-8000-000000000000", at_step=0)
    assert len(await recorded_tasks(app.absurd, states=("pending",))) == 0
    await app.absurd.close()


async def test_fork_with_new_params(absurd_dsn: str, absurd_queue: str) -> None:
    source = await completed_source(absurd_dsn, absurd_queue)
    fresh = build_app(absurd_dsn, absurd_queue, wait=False)
    rerun = await fork_task(fresh.absurd, source, at_step=0, params={"prompt": "bill it twice"})
    assert (await run_until_done(fresh.absurd, rerun)).state == "completed"
    assert fresh.model_calls == 3
    assert b"bill it twice" in fresh.billing.prompts[0]
    await fresh.absurd.close()
    # A new prompt changes what the copied model request asked: the fork fails loudly there, sending nothing.
    changed = build_app(absurd_dsn, absurd_queue, wait=False)
    fork_id = await fork_task(changed.absurd, source, at_step=1, params={"prompt": "something else"})
    snapshot = await run_until_done(changed.absurd, fork_id)
    assert snapshot.state == "failed"
    assert "Replay diverged at step 'billing__model.request'" in str(snapshot.failure)
    assert changed.model_calls == 0 and changed.charges == []
    await changed.absurd.close()


async def test_fork_of_a_running_task_copies_what_committed(absurd_dsn: str, absurd_queue: str) -> None:
    gate = asyncio.Event()
    entered = asyncio.Event()
    script = Script(
        turns=[
            lambda _: [ToolCallPart("slow", {"n": 1}, tool_call_id="s1")],
            lambda _: [TextPart("finished")],
        ]
    )
    absurd = AsyncAbsurd(absurd_dsn, queue_name=absurd_queue)
    agent = Agent(script.model(), name="slowpoke")
    tool_runs: list[int] = []

    @agent.tool_plain
    async def slow(n: int) -> int:
        tool_runs.append(n)
        if len(tool_runs) == 1:
            entered.set()
            await gate.wait()
        return n + 1

    durable = AbsurdAgent(agent)

    @absurd.register_task(name="slow")
    async def handler(params: Any, ctx: Any) -> str:
        return (await durable.run(str(params["prompt"]))).output

    spawned = await absurd.spawn("slow", {"prompt": "go"})
    source = str(spawned["task_id"])
    worker = asyncio.ensure_future(run_queued(absurd))
    await asyncio.wait_for(entered.wait(), 30)
    other = AsyncAbsurd(absurd_dsn, queue_name=absurd_queue)
    try:
        (running,) = await recorded_tasks(other, [source])
        assert running.state == "running" and [step.name for step in running.steps] == ["slowpoke__model.request"]
        with pytest.raises(ForkError, match="valid choices: 0-1"):
            await fork_task(other, source, at_step=2)
        fork_id = await fork_task(other, source, at_step=1)
    finally:
        await other.close()
    gate.set()
    await worker  # runs the source to its end, then the fork
    for task_id in (source, fork_id):
        snapshot = await run_until_done(absurd, task_id)
        assert snapshot.state == "completed" and snapshot.result == "finished"
    assert script.calls == 2 + 1  # the source's two model requests, and the fork's one after the copied one
    assert tool_runs == [1, 1]
    await wait_until(lambda: _names_equal(absurd_dsn, absurd_queue, source, fork_id))
    await absurd.close()


async def _names_equal(dsn: str, queue: str, first: str, second: str) -> bool:
    return await checkpoint_names(dsn, queue, first) == await checkpoint_names(dsn, queue, second)

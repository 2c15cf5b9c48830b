"""Issue-7 guarantees of the engine: finished bodies always commit, end states stick, divergence is loud."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from absurd_sdk import AsyncAbsurd, CancelledTask, SuspendTask
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, TextPart, ToolCallPart

from pydantic_ai_absurd import AbsurdAgent
from pydantic_ai_absurd._steps import commit_hook, run_step
from tests.helpers.agents import Script, SimulatedCrash, run_until_done, two_tools_script
from tests.helpers.sql import checkpoints


async def test_a_sibling_failing_during_a_checkpoint_write_does_not_lose_it(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    """`first` returned and its write is in flight when `second` raises: the write still commits."""
    script = two_tools_script()
    effects: list[str] = []
    write_started = asyncio.Event()
    sibling_failed = asyncio.Event()
    armed = {"crash": True}
    agent = Agent(script.model(), name="pair")

    @agent.tool
    async def first(ctx: RunContext[None], n: int) -> str:
        effects.append("first")
        return "one"

    @agent.tool
    async def second(ctx: RunContext[None], n: int) -> str:
        effects.append("second")
        if armed["crash"]:
            armed["crash"] = False
            await write_started.wait()
            sibling_failed.set()
            raise SimulatedCrash("second fails while first's checkpoint is being written")
        return "two"

    durable = AbsurdAgent(agent)

    async def hold_first_write(checkpoint_name: str) -> None:
        if "first@c1" in checkpoint_name and not write_started.is_set():
            write_started.set()
            await sibling_failed.wait()
            for _ in range(20):  # let the failure tear the run down (cancel `first`'s step) meanwhile
                await asyncio.sleep(0)

    @absurd_client.register_task(name="pair")
    async def pair(params: Any, ctx: Any) -> str:
        with commit_hook(hold_first_write):
            return (await durable.run("go")).output

    spawned = await absurd_client.spawn("pair", {})
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.result == "done", snapshot.failure
    assert write_started.is_set() and sibling_failed.is_set()
    assert effects.count("first") == 1, effects  # the retry replayed `first` from its committed checkpoint
    assert effects.count("second") == 2
    names = await checkpoints(absurd_dsn, absurd_queue, str(spawned["task_id"]))
    assert any("first@c1" in name for name in names)


@pytest.mark.parametrize(
    "step",
    [
        "kind__model.request",
        "kind__mcp_server__docs.call_tool:search@c9",
        "kind__event_stream_handler@function_tool_result@c9",
        "kind__function_toolset__tools.call_tool:charge@c9",
    ],
)
async def test_every_step_kind_commits_once_its_body_returned(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, step: str
) -> None:
    """The shielded write is the one path of every step kind; cancel the step's caller mid-write."""
    write_started = asyncio.Event()
    release = asyncio.Event()

    async def hold(checkpoint_name: str) -> None:
        write_started.set()
        await release.wait()

    async def body() -> dict[str, int]:
        return {"value": 7}

    @absurd_client.register_task(name="kinds")
    async def kinds(params: Any, ctx: Any) -> str:
        with commit_hook(hold):
            runner = asyncio.ensure_future(run_step(step, body))
            await write_started.wait()
            runner.cancel()
            await asyncio.sleep(0)
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await runner
        return "torn down"

    spawned = await absurd_client.spawn("kinds", {})
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.result == "torn down", snapshot.failure
    stored = await checkpoints(absurd_dsn, absurd_queue, str(spawned["task_id"]))
    assert stored[step]["json"] == '{"value":7}'


async def test_a_swallowed_cancellation_ends_every_later_step(absurd_client: AsyncAbsurd) -> None:
    """`complete_step` reports the cancel; user code swallows it; the next run may not call the model."""
    script = Script(turns=[lambda _: [ToolCallPart("work", {}, tool_call_id="w1")], lambda _: [TextPart("done")]])
    agent = Agent(script.model(), name="stubborn")
    observed: list[str] = []

    @agent.tool
    async def work(ctx: RunContext[None]) -> str:
        await absurd_client.cancel_task(task_ids["id"])  # noticed at this tool's checkpoint write
        return "worked"

    durable = AbsurdAgent(agent)
    task_ids: dict[str, str] = {}

    @absurd_client.register_task(name="stubborn")
    async def stubborn(params: Any, ctx: Any) -> str:
        try:
            await durable.run("first")
        except Exception as error:  # what careless user code does
            observed.append(type(error).__name__)
        calls_before = script.calls
        try:
            await durable.run("second")
        finally:
            observed.append(f"model calls in the second run: {script.calls - calls_before}")
        return "unreachable"  # pragma: no cover

    spawned = await absurd_client.spawn("stubborn", {})
    task_ids["id"] = str(spawned["task_id"])
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.state == "cancelled"
    assert observed == ["CancelledTask", "model calls in the second run: 0"]


async def test_a_swallowed_suspension_is_raised_again(absurd_client: AsyncAbsurd) -> None:
    from pydantic_ai.external_events import wait_for_external_event

    script = Script(turns=[lambda _: [ToolCallPart("ask", {}, tool_call_id="a1")], lambda _: [TextPart("done")]])
    agent = Agent(script.model(), name="asker")
    swallowed: list[str] = []

    # Without a step of its own (a wait cannot run inside a durable unit), so the wait is the run's.
    @agent.tool(metadata={"absurd": False})
    async def ask(ctx: RunContext[None]) -> str:
        async def hand_out(token: str) -> None:
            return None

        try:
            return str(await wait_for_external_event("answer", ask=hand_out))
        except Exception as error:  # swallows Absurd's SuspendTask
            swallowed.append(type(error).__name__)
            return "no answer"

    durable = AbsurdAgent(agent)
    raised: list[type[BaseException]] = []

    @absurd_client.register_task(name="asker")
    async def asker(params: Any, ctx: Any) -> str:
        try:
            return (await durable.run("go")).output
        except SuspendTask:
            raised.append(SuspendTask)
            raise

    spawned = await absurd_client.spawn("asker", {})
    await absurd_client.work_batch(claim_timeout=30)
    snapshot = await absurd_client.fetch_task_result(spawned["task_id"])
    assert snapshot is not None and snapshot.state == "sleeping"
    assert swallowed == ["SuspendTask"]
    assert raised == [SuspendTask]
    assert script.calls == 1  # the model was not asked again with the swallowed "no answer"


async def test_concurrent_runs_whose_start_order_flips_fail_loudly(absurd_client: AsyncAbsurd) -> None:
    """Two runs of one agent behind awaits of varying length swap identities on replay: caught by the digest."""

    def answer(messages: list[ModelMessage]) -> list[Any]:
        prompt = next(p.content for m in messages for p in m.parts if p.part_kind == "user-prompt")
        return [TextPart(f"answer to {prompt}")]

    script = Script(turns=[answer])
    agent = AbsurdAgent(Agent(script.model(), name="racer"))
    attempt = {"n": 0}

    @absurd_client.register_task(name="race")
    async def race(params: Any, ctx: Any) -> list[str]:
        attempt["n"] += 1
        first = "a" if attempt["n"] == 1 else "b"
        started = asyncio.Event()

        async def run(prompt: str) -> str:
            if prompt != first:
                await started.wait()  # the latency of a rate limiter, say: differs per attempt
            else:
                started.set()
            return (await agent.run(prompt)).output

        results = await asyncio.gather(run("a"), run("b"))
        if attempt["n"] == 1:
            raise SimulatedCrash("after both runs")
        return results  # pragma: no cover

    spawned = await absurd_client.spawn("race", {}, max_attempts=2)
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.state == "failed"
    failure = snapshot.failure
    assert isinstance(failure, dict)
    assert failure["name"] == "ReplayDivergenceError"
    assert "racer__model.request" in failure["message"]
    assert "answer to" not in str(snapshot.result)


async def test_a_changed_prompt_is_detected_on_replay(absurd_client: AsyncAbsurd) -> None:
    script = Script(turns=[lambda _: [ToolCallPart("slow", {}, tool_call_id="s1")], lambda _: [TextPart("done")]])
    instructions = {"text": "Be brief."}
    agent = Agent(script.model(), name="editor", instructions=lambda: instructions["text"])
    crash = {"armed": True}

    @agent.tool_plain
    def slow() -> str:
        if crash["armed"]:
            crash["armed"] = False
            instructions["text"] = "Be verbose."  # a deploy changed the prompt while the task was in flight
            raise SimulatedCrash("worker died")
        return "ok"

    durable = AbsurdAgent(agent)

    @absurd_client.register_task(name="edit")
    async def edit(params: Any, ctx: Any) -> str:
        return (await durable.run("go")).output

    spawned = await absurd_client.spawn("edit", {}, max_attempts=2)
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.state == "failed"
    assert isinstance(snapshot.failure, dict)
    assert snapshot.failure["name"] == "ReplayDivergenceError"
    assert script.calls == 1  # the stored response was not handed to the changed request, nor re-sent


async def test_checkpoints_of_older_builds_still_replay(absurd_client: AsyncAbsurd) -> None:
    """Bare ISO times and bare `true` timeouts (the 0.1.0 development formats) are read."""

    async def never() -> object:  # pragma: no cover - replayed, never run
        raise AssertionError("replayed steps do not run")

    @absurd_client.register_task(name="legacy")
    async def legacy(params: Any, ctx: Any) -> list[object]:
        ctx._checkpoint_cache["old.time"] = "2026-11-30T10:00:00+00:00"
        ctx._checkpoint_cache["old.timed_out"] = True
        return [(await run_step("old.time", never)).value, (await run_step("old.timed_out", never)).value]

    spawned = await absurd_client.spawn("legacy", {})
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.result == ["2026-11-30T10:00:00+00:00", True]


def test_end_states_are_never_ordinary_exceptions_we_catch() -> None:
    # They subclass Exception in absurd-sdk 0.5.1: every `except Exception` of ours must let them through.
    assert issubclass(CancelledTask, Exception)

"""A durable run end to end: checkpoints, replay after a failed run, and identity with an uninterrupted run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from absurd_sdk import AsyncAbsurd
from pydantic import BaseModel
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import TextPart, ToolCallPart

from pydantic_ai_absurd import AbsurdAgent, AbsurdDurability
from tests.helpers.agents import Script, SimulatedCrash, run_until_done
from tests.helpers.sql import checkpoint_names


class Receipt(BaseModel):
    zeta: int
    alpha: str


def two_charges_then_text(final: str = "done") -> Script:
    return Script(
        turns=[
            lambda _: [
                ToolCallPart("charge", {"zzz": 3, "amount": 1}, tool_call_id="call-1"),
                ToolCallPart("charge", {"zzz": 4, "amount": 2}, tool_call_id="call-2"),
            ],
            lambda _: [TextPart(final)],
        ]
    )


def build_agent(
    script: Script, side_effects: list[int], crash_at: set[str], ids: list[tuple[str, str]] | None = None
) -> AbsurdAgent[None, str]:
    agent = Agent(script.model(), name="billing")

    @agent.tool
    async def charge(ctx: RunContext[None], zzz: int, amount: int) -> Receipt:
        key = f"tool:{ctx.tool_call_id}"
        side_effects.append(amount)
        if ids is not None:
            ids.append((str(ctx.run_id), str(ctx.conversation_id)))
        if key in crash_at:
            crash_at.discard(key)
            raise SimulatedCrash(key)
        return Receipt(zeta=zzz, alpha=f"charged {amount}")

    return AbsurdAgent(agent)


def test_run_sync_outside_a_task() -> None:
    agent = build_agent(two_charges_then_text(), [], set())
    assert agent.run_sync("bill").output == "done"
    asyncio.get_event_loop_policy().get_event_loop().close()  # the loop `run_sync` left behind


async def test_outside_a_task_the_agent_is_plain_and_needs_no_database() -> None:
    script = two_charges_then_text()
    effects: list[int] = []
    agent = build_agent(script, effects, set())
    result = await agent.run("bill")
    assert result.output == "done"
    assert sorted(effects) == [1, 2]
    async with agent.run_stream("bill") as stream:
        assert await stream.get_output() == "done"
    async with agent.iter("bill") as run:
        async for _ in run:
            pass
    assert run.result is not None and run.result.output == "done"


async def test_durable_run_checkpoints_each_model_and_tool_call(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    script = two_charges_then_text()
    effects: list[int] = []
    agent = build_agent(script, effects, set())

    @absurd_client.register_task(name="bill")
    async def bill(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        result = await agent.run(params["prompt"])
        return {"output": result.output, "requests": result.usage.requests}

    spawned = await absurd_client.spawn("bill", {"prompt": "bill"})
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.state == "completed"
    assert snapshot.result == {"output": "done", "requests": 2}
    names = set(await checkpoint_names(absurd_dsn, absurd_queue, spawned["task_id"]))
    assert names == {
        "billing__model.request",
        "billing__model.request#2",
        "billing__function_toolset__<agent>.call_tool:charge@call-1",
        "billing__function_toolset__<agent>.call_tool:charge@call-2",
    }


async def test_resumed_run_is_indistinguishable_from_an_uninterrupted_one(absurd_client: AsyncAbsurd) -> None:
    reference_script = two_charges_then_text()
    reference_effects: list[int] = []
    reference = build_agent(reference_script, reference_effects, set())
    script = two_charges_then_text()
    effects: list[int] = []
    ids: list[tuple[str, str]] = []
    crashing = build_agent(script, effects, {"tool:call-2"}, ids)
    results: dict[str, Any] = {}

    @absurd_client.register_task(name="reference")
    async def run_reference(params: Any, ctx: Any) -> None:
        results["reference"] = await reference.run("bill")

    @absurd_client.register_task(name="crashing")
    async def run_crashing(params: Any, ctx: Any) -> None:
        results["crashing"] = await crashing.run("bill")

    first = await absurd_client.spawn("reference", {})
    assert (await run_until_done(absurd_client, first["task_id"])).state == "completed"
    second = await absurd_client.spawn("crashing", {})
    assert (await run_until_done(absurd_client, second["task_id"])).state == "completed"

    # The model was asked twice in all, across two executions; the committed tool call ran once.
    assert script.calls == 2
    assert sorted(effects) == [1, 2, 2]
    ref, resumed = results["reference"], results["crashing"]
    assert resumed.output == ref.output
    assert resumed.usage == ref.usage
    assert resumed.run_id == f"{second['task_id']}:billing:1"
    assert resumed.conversation_id != ref.conversation_id  # different tasks, different conversations
    # The crashed execution ran the tools with the same run and conversation IDs the resumed run ended with.
    assert set(ids) == {(resumed.run_id, resumed.conversation_id)}

    # What the model was sent after the resume is byte-identical to the uninterrupted run's prompts,
    # although the stored tool returns and args went through jsonb (which reorders keys).
    def normalized(prompt: bytes, task_id: object, conversation_id: str) -> bytes:
        return prompt.replace(str(task_id).encode(), b"T").replace(conversation_id.encode(), b"C")

    assert normalized(script.prompts[1], second["task_id"], resumed.conversation_id) == normalized(
        reference_script.prompts[1], first["task_id"], ref.conversation_id
    )
    assert b'"zzz": 4, "amount": 2' in script.prompts[1]
    assert b'{"zeta": 4, "alpha": "charged 2"}' in script.prompts[1]


async def test_replay_sends_no_model_request_twice(absurd_client: AsyncAbsurd) -> None:
    script = two_charges_then_text()
    crash_after_first_request = {"armed": True}

    def before(index: int) -> None:
        if index == 1 and crash_after_first_request["armed"]:
            crash_after_first_request["armed"] = False
            raise SimulatedCrash("in second model call")

    script.before_call = before
    effects: list[int] = []
    agent = build_agent(script, effects, set())

    @absurd_client.register_task(name="bill")
    async def bill(params: Any, ctx: Any) -> str:
        return (await agent.run("bill")).output

    spawned = await absurd_client.spawn("bill", {})
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.result == "done"
    assert script.calls == 2  # the first request was replayed from Postgres, the failed one sent again
    assert sorted(effects) == [1, 2]


async def test_two_runs_in_one_task_resume_between_them(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    script = Script(turns=[lambda _: [TextPart("answer")]])
    agent = AbsurdAgent(Agent(script.model(), name="helper"))
    crashed = {"done": False}

    @absurd_client.register_task(name="two")
    async def two(params: Any, ctx: Any) -> list[str]:
        first = await agent.run("one")
        if not crashed["done"]:
            crashed["done"] = True
            raise SimulatedCrash("between runs")
        second = await agent.run("two", message_history=first.all_messages())
        return [first.run_id, second.run_id]

    spawned = await absurd_client.spawn("two", {})
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    task_id = spawned["task_id"]
    assert snapshot.result == [f"{task_id}:helper:1", f"{task_id}:helper:2"]
    assert script.calls == 2
    assert set(await checkpoint_names(absurd_dsn, absurd_queue, task_id)) == {
        "helper__model.request",
        "helper~2__model.request",
    }


async def test_capability_on_a_plain_agent_is_durable(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    script = Script(turns=[lambda _: [TextPart("hi")]])
    agent = Agent(script.model(), name="plain", capabilities=[AbsurdDurability()])

    @absurd_client.register_task(name="t")
    async def t(params: Any, ctx: Any) -> str:
        return (await agent.run("x")).output

    spawned = await absurd_client.spawn("t", {})
    assert (await run_until_done(absurd_client, spawned["task_id"])).result == "hi"
    assert await checkpoint_names(absurd_dsn, absurd_queue, spawned["task_id"]) == ["plain__model.request"]


async def test_streaming_runs_are_durable(absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str) -> None:
    script = Script(turns=[lambda _: [TextPart("streamed")]])
    agent = AbsurdAgent(Agent(script.model(), name="streamer"))

    @absurd_client.register_task(name="s")
    async def s(params: Any, ctx: Any) -> list[str]:
        async with agent.run_stream("x") as stream:
            first = await stream.get_output()
        async with agent.run_stream_events("y") as stream_events:
            events = [event.event_kind async for event in stream_events]
        return [first, str("agent_run_result" in events)]

    spawned = await absurd_client.spawn("s", {})
    assert (await run_until_done(absurd_client, spawned["task_id"])).result == ["streamed", "True"]
    assert set(await checkpoint_names(absurd_dsn, absurd_queue, spawned["task_id"])) == {
        "streamer__model.request_stream",
        "streamer~2__model.request_stream",
    }


async def test_step_results_reach_the_right_call_when_latency_flips(absurd_client: AsyncAbsurd) -> None:
    """Two parallel calls of one tool, whose order of reaching the step flips between first run and replay."""
    script = Script(
        turns=[
            lambda _: [
                ToolCallPart("lookup", {"key": "slow"}, tool_call_id="a"),
                ToolCallPart("lookup", {"key": "fast"}, tool_call_id="b"),
            ],
            lambda messages: [
                TextPart(str([p.content for m in messages for p in m.parts if p.part_kind == "tool-return"]))
            ],
        ]
    )
    attempt = {"n": 0}
    ran: list[str] = []
    inner = Agent(script.model(), name="racer")

    @inner.tool
    async def lookup(ctx: RunContext[None], key: str) -> str:
        # A pre-step delay whose order flips on the replay (as a rate limiter or hook would).
        slow_first = attempt["n"] == 0
        await asyncio.sleep(0.05 if (key == "slow") == slow_first else 0)
        ran.append(key)
        if attempt["n"] == 0 and key == "fast":
            attempt["n"] += 1
            raise SimulatedCrash("after the slow call committed")
        return f"value-of-{key}"

    agent = AbsurdAgent(inner)

    @absurd_client.register_task(name="race")
    async def race(params: Any, ctx: Any) -> str:
        return (await agent.run("go")).output

    spawned = await absurd_client.spawn("race", {})
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.result == "['value-of-slow', 'value-of-fast']"
    assert sorted(ran) == ["fast", "fast", "slow"]  # the committed call was replayed, not run again


@pytest.mark.parametrize("bad", ["has#hash", "has@at", "has space", "has~tilde"])
def test_identifiers_that_would_corrupt_step_names_are_refused(bad: str) -> None:
    from pydantic_ai.exceptions import UserError

    with pytest.raises(UserError, match="corrupt the Absurd step names"):
        AbsurdAgent(Agent("test", name=bad))


async def test_concurrent_runs_of_one_agent_in_one_task_keep_their_own_steps(absurd_client: AsyncAbsurd) -> None:
    def answer(messages: list[Any]) -> list[Any]:
        prompt = next(p.content for m in messages for p in m.parts if p.part_kind == "user-prompt")
        return [TextPart(f"answer to {prompt}")]

    script = Script(turns=[answer])
    crash = {"armed": True}
    agent = AbsurdAgent(Agent(script.model(), name="twins"))

    @absurd_client.register_task(name="gather")
    async def gather(params: Any, ctx: Any) -> list[str]:
        results = await asyncio.gather(agent.run("a"), agent.run("b"), agent.run("c"))
        if crash["armed"]:
            crash["armed"] = False
            raise SimulatedCrash("after all three runs")
        return [r.output for r in results]

    spawned = await absurd_client.spawn("gather", {})
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.result == ["answer to a", "answer to b", "answer to c"]
    assert script.calls == 3


async def test_iter_inside_a_task_is_durable(absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str) -> None:
    script = two_charges_then_text()
    effects: list[int] = []
    agent = build_agent(script, effects, {"tool:call-2"})

    @absurd_client.register_task(name="nodes")
    async def nodes(params: Any, ctx: Any) -> list[str]:
        kinds: list[str] = []
        async with agent.iter("bill") as run:
            async for node in run:
                kinds.append(type(node).__name__)
        assert run.result is not None
        return [*kinds, run.result.output]

    spawned = await absurd_client.spawn("nodes", {})
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.result is not None and snapshot.result[-1] == "done"
    assert script.calls == 2
    assert sorted(effects) == [1, 2, 2]  # only the crashed call ran again
    assert len(await checkpoint_names(absurd_dsn, absurd_queue, str(spawned["task_id"]))) == 4

"""Clear errors, raised early, for every misuse the engine can detect."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent, FunctionToolset
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import TextPart

from pydantic_ai_absurd import AbsurdAgent, AbsurdDurability
from tests.helpers.agents import Script, run_until_done


def text_agent(name: str | None = "named") -> Agent[None, str]:
    return Agent(Script(turns=[lambda _: [TextPart("ok")]]).model(), name=name)


def test_agent_without_a_name_is_refused() -> None:
    with pytest.raises(UserError, match="unique `name`"):
        AbsurdAgent(text_agent(name=None))


def test_bad_model_and_toolset_ids_are_refused() -> None:
    with pytest.raises(UserError, match="model ID 'a#b'"):
        AbsurdDurability[None](models={"a#b": text_agent().model})  # type: ignore[dict-item]
    agent = Agent(text_agent().model, name="ok", toolsets=[FunctionToolset[None](id="bad@id")])
    with pytest.raises(UserError, match="toolset ID 'bad@id'"):
        AbsurdAgent(agent).run_sync("x")
    asyncio.get_event_loop_policy().get_event_loop().close()  # the loop `run_sync` left behind


async def failure_of(absurd: AsyncAbsurd, handler: Any) -> str:
    absurd.register_task(name="t")(handler)
    spawned = await absurd.spawn("t", {}, max_attempts=1)
    snapshot = await run_until_done(absurd, spawned["task_id"])
    assert snapshot.state == "failed"
    assert snapshot.failure is not None
    return str(snapshot.failure["message"])


async def test_unregistered_model_instance_at_run_time(absurd_client: AsyncAbsurd) -> None:
    agent = AbsurdAgent(text_agent())
    stray = Script(turns=[lambda _: [TextPart("stray")]]).model()

    async def handler(params: Any, ctx: Any) -> str:
        return (await agent.run("x", model=stray)).output

    assert "was not registered" in await failure_of(absurd_client, handler)


async def test_toolset_added_at_run_time_is_refused_in_a_task(absurd_client: AsyncAbsurd) -> None:
    agent = AbsurdAgent(text_agent())
    late = FunctionToolset[None](id="late")

    @late.tool_plain
    def side_effect() -> str:  # pragma: no cover - never called
        return "x"

    async def handler(params: Any, ctx: Any) -> str:
        return (await agent.run("x", toolsets=[late])).output

    message = await failure_of(absurd_client, handler)
    assert "late" in message and "Absurd" in message
    # Outside a task the same call is a plain run.
    assert (await agent.run("x", toolsets=[late])).output == "ok"


async def test_agent_toolset_decorators_are_durable_like_any_toolset(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    """`@agent.toolset` functions of the wrapped agent run as steps; run-time additions stay refused."""
    from pydantic_ai.messages import ToolCallPart

    from tests.helpers.agents import SimulatedCrash
    from tests.helpers.sql import checkpoint_names

    script = Script(
        turns=[lambda _: [ToolCallPart("lookup", {"key": "k"}, tool_call_id="l1")], lambda _: [TextPart("ok")]]
    )
    inner = Agent(script.model(), name="decorated")
    effects: list[str] = []
    crash = {"armed": True}
    extra = FunctionToolset[None](id="decorated-tools")

    @extra.tool_plain
    def lookup(key: str) -> str:
        effects.append(key)
        return f"value of {key}"

    @inner.toolset(id="decorated-dynamic")
    def tools(ctx: Any) -> FunctionToolset[None]:
        return extra

    agent = AbsurdAgent(inner)

    @absurd_client.register_task(name="t")
    async def handler(params: Any, ctx: Any) -> str:
        output = (await agent.run("x")).output
        if crash["armed"]:
            crash["armed"] = False
            raise SimulatedCrash("after the run")
        return output

    spawned = await absurd_client.spawn("t", {})
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.result == "ok", snapshot.failure
    assert effects == ["k"]  # the replay took the tool's result from its checkpoint
    names = await checkpoint_names(absurd_dsn, absurd_queue, str(spawned["task_id"]))
    assert "decorated__dynamic_toolset__decorated-dynamic.call_tool:lookup@l1" in names, names


def test_sync_task_context_is_refused(absurd_dsn: str, absurd_queue: str) -> None:
    from absurd_sdk import Absurd

    agent = AbsurdAgent(text_agent())
    absurd = Absurd(absurd_dsn, queue_name=absurd_queue)
    errors: list[str] = []

    @absurd.register_task(name="sync")
    def sync_task(params: Any, ctx: Any) -> None:
        try:
            _ = agent.durability.in_durable_context
        except UserError as error:
            errors.append(str(error))

    absurd.spawn("sync", {})
    absurd.work_batch()
    absurd.close()
    assert errors and "async Absurd task" in errors[0]

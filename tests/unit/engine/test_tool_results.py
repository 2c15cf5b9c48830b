"""Tool results of every kind survive the JSON checkpoint; unstorable ones fail once, clearly; control flow is journaled."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from absurd_sdk import AsyncAbsurd
from pydantic import BaseModel
from pydantic_ai import Agent, BinaryContent, DeferredToolRequests, ModelRetry, RunContext, ToolReturn
from pydantic_ai.exceptions import ApprovalRequired, CallDeferred
from pydantic_ai.messages import TextPart, ToolCallPart

from pydantic_ai_absurd import AbsurdAgent
from tests.helpers.agents import Script, SimulatedCrash, run_until_done


class Invoice(BaseModel):
    total: float
    issued: datetime


@dataclasses.dataclass
class Point:
    x: int
    y: int


RESULTS: dict[str, Any] = {
    "model": Invoice(total=9.5, issued=datetime(2026, 1, 2, tzinfo=UTC)),
    "dataclass": Point(1, 2),
    "datetime": datetime(2026, 3, 4, 5, 6, tzinfo=UTC),
    "bytes": b"\x00\x01raw",
    "binary": BinaryContent(data=b"\x89PNG", media_type="image/png"),
    "tool_return": ToolReturn(return_value={"b": 1, "a": 2}, content="extra context", metadata={"k": "v"}),
}


def kinds_agent(runs: dict[str, int], crash: dict[str, bool]) -> tuple[AbsurdAgent[None, str], Script]:
    kinds = list(RESULTS)
    script = Script(
        turns=[
            lambda _: [ToolCallPart("produce", {"kind": k}, tool_call_id=f"id-{k}") for k in kinds],
            lambda _: [TextPart("ok")],
        ]
    )

    def before(index: int) -> None:
        if index == 1 and crash["armed"]:
            crash["armed"] = False
            raise SimulatedCrash("before the final request")

    script.before_call = before
    inner = Agent(script.model(), name="kinds")

    @inner.tool
    async def produce(ctx: RunContext[None], kind: str) -> Any:
        runs[kind] = runs.get(kind, 0) + 1
        return RESULTS[kind]

    return AbsurdAgent(inner), script


async def test_every_supported_kind_of_result_replays_to_the_same_value(absurd_client: AsyncAbsurd) -> None:
    reference_runs: dict[str, int] = {}
    reference, reference_script = kinds_agent(reference_runs, {"armed": False})
    runs: dict[str, int] = {}
    resumed, script = kinds_agent(runs, {"armed": True})
    conversations: dict[str, str] = {}

    @absurd_client.register_task(name="reference")
    async def run_reference(params: Any, ctx: Any) -> str:
        result = await reference.run("go")
        conversations["reference"] = result.conversation_id
        return result.output

    @absurd_client.register_task(name="resumed")
    async def run_resumed(params: Any, ctx: Any) -> str:
        result = await resumed.run("go")
        conversations["resumed"] = result.conversation_id
        return result.output

    first = await absurd_client.spawn("reference", {})
    second = await absurd_client.spawn("resumed", {})
    assert (await run_until_done(absurd_client, first["task_id"])).result == "ok"
    assert (await run_until_done(absurd_client, second["task_id"])).result == "ok"
    assert runs == {kind: 1 for kind in RESULTS}  # replayed from the checkpoints, not run again

    def normalized(prompt: bytes, task_id: object, conversation_id: str) -> bytes:
        return prompt.replace(str(task_id).encode(), b"T").replace(conversation_id.encode(), b"C")

    assert normalized(script.prompts[-1], second["task_id"], conversations["resumed"]) == normalized(
        reference_script.prompts[-1], first["task_id"], conversations["reference"]
    )
    assert b'"total": 9.5' in script.prompts[-1] and b'{"b": 1, "a": 2}' in script.prompts[-1]


async def test_unserializable_result_fails_clearly_and_never_reruns_the_tool(absurd_client: AsyncAbsurd) -> None:
    class Socketish:
        pass

    script = Script(turns=[lambda _: [ToolCallPart("open_socket", {}, tool_call_id="s1")], lambda _: [TextPart("x")]])
    inner = Agent(script.model(), name="sock")
    runs = {"n": 0}

    @inner.tool_plain
    def open_socket() -> Any:
        runs["n"] += 1
        return Socketish()

    agent = AbsurdAgent(inner)

    @absurd_client.register_task(name="sock")
    async def task(params: Any, ctx: Any) -> str:
        return (await agent.run("go")).output

    spawned = await absurd_client.spawn("sock", {}, max_attempts=3)
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.state == "failed"
    assert snapshot.failure is not None
    message = snapshot.failure["message"]
    assert isinstance(message, str)
    assert "Tool 'open_socket'" in message and "Socketish" in message and "JSON-compatible" in message
    assert snapshot.failure["name"] == "UnserializableResultError"
    assert runs["n"] == 1  # three attempts, one side effect


async def test_model_retry_is_journaled(absurd_client: AsyncAbsurd) -> None:
    script = Script(
        turns=[
            lambda _: [ToolCallPart("flaky", {}, tool_call_id="r1")],
            lambda _: [ToolCallPart("flaky", {}, tool_call_id="r2")],
            lambda _: [TextPart("finished")],
        ]
    )
    crash = {"armed": True}

    def before(index: int) -> None:
        if index == 1 and crash["armed"]:
            crash["armed"] = False
            raise SimulatedCrash("after the retry was journaled")

    script.before_call = before
    calls: list[str | None] = []
    inner = Agent(script.model(), name="flow")

    @inner.tool
    async def flaky(ctx: RunContext[None]) -> str:
        calls.append(ctx.tool_call_id)
        if ctx.retry == 0:
            raise ModelRetry("try again")
        return "fine"

    agent = AbsurdAgent(inner)

    @absurd_client.register_task(name="flow")
    async def task(params: Any, ctx: Any) -> str:
        return (await agent.run("go")).output

    spawned = await absurd_client.spawn("flow", {})
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.result == "finished", snapshot.failure
    assert calls == ["r1", "r2"]  # the call that raised `ModelRetry` was not run again on resume


async def test_approval_and_deferral_are_journaled(absurd_client: AsyncAbsurd) -> None:
    script = Script(
        turns=[
            lambda _: [
                ToolCallPart("needs_approval", {}, tool_call_id="a1"),
                ToolCallPart("later", {}, tool_call_id="d1"),
            ],
        ]
    )
    calls: list[str] = []
    crash = {"armed": True}
    inner = Agent(script.model(), name="flow", output_type=[str, DeferredToolRequests])

    @inner.tool
    async def needs_approval(ctx: RunContext[None]) -> str:
        calls.append("needs_approval")
        raise ApprovalRequired()

    @inner.tool
    async def later(ctx: RunContext[None]) -> str:
        calls.append("later")
        raise CallDeferred()

    agent = AbsurdAgent(inner)

    @absurd_client.register_task(name="flow")
    async def task(params: Any, ctx: Any) -> list[str]:
        output = (await agent.run("go")).output
        if crash["armed"]:
            crash["armed"] = False
            raise SimulatedCrash("after the run")
        assert isinstance(output, DeferredToolRequests)
        return sorted([call.tool_name for call in output.approvals] + [call.tool_name for call in output.calls])

    spawned = await absurd_client.spawn("flow", {})
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.result == ["later", "needs_approval"], snapshot.failure
    assert sorted(calls) == ["later", "needs_approval"]
    assert script.calls == 1

"""`run_as_child` with an in-process worker: inside a task (suspend, resume) and outside one (spawn, poll)."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd, AsyncTaskContext, SpawnOptions
from pydantic import BaseModel
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, UserPromptPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from pydantic_ai_absurd import AbsurdAgent, ChildTaskCancelledError, ChildTaskFailedError, inspect_task
from pydantic_ai_absurd.inspection._render import render_timeline
from pydantic_ai_absurd.worker import RetryPolicy
from tests.helpers.polling import wait_terminal, wait_until
from tests.helpers.workers import running_worker


class Answer(BaseModel):
    text: str
    seen_metadata: Any = None
    history_length: int = 0


def _prompt(messages: list[ModelMessage]) -> str:
    last = messages[-1]
    assert isinstance(last, ModelRequest)
    return str(next(part.content for part in last.parts if isinstance(part, UserPromptPart)))


def _child(absurd: AsyncAbsurd, asked: list[str], gate: asyncio.Event | None = None) -> AbsurdAgent[None, Answer]:
    async def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        asked.append(_prompt(messages))
        if gate is not None:
            await gate.wait()
        if "fail" in _prompt(messages):
            raise RuntimeError("the child cannot")
        return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, {"text": _prompt(messages).upper()})])

    agent: Agent[None, Answer] = Agent(FunctionModel(model), name="child", output_type=Answer)

    @agent.output_validator
    def add_context(ctx: RunContext[None], output: Answer) -> Answer:
        return output.model_copy(update={"seen_metadata": ctx.metadata, "history_length": len(ctx.messages)})

    child = AbsurdAgent(agent, absurd)
    child.register_task()
    return child


async def test_a_task_handler_runs_children_and_resumes_with_their_typed_results(absurd_client: AsyncAbsurd) -> None:
    asked: list[str] = []
    child = _child(absurd_client, asked)
    history = [ModelRequest(parts=[UserPromptPart(content="earlier")]), ModelResponse(parts=[TextPart("noted")])]

    @absurd_client.register_task(name="parent")
    async def parent(params: dict[str, Any], ctx: AsyncTaskContext) -> dict[str, Any]:
        first, second = await asyncio.gather(
            child.run_as_child("one", metadata={"n": 1}),
            child.run_as_child("two", message_history=history),
        )
        assert isinstance(first.output, Answer)
        return {
            "outputs": [first.output.model_dump(), second.output.model_dump()],
            "requests": first.usage.requests + second.usage.requests,
            "messages": len(first.messages),
        }

    spawned = await absurd_client.spawn("parent", {})
    async with running_worker(absurd_client, concurrency=1):
        snapshot = await wait_terminal(absurd_client, str(spawned["task_id"]))
    assert snapshot.state == "completed", snapshot
    assert snapshot.result["outputs"] == [
        {"text": "ONE", "seen_metadata": {"n": 1}, "history_length": 2},
        {"text": "TWO", "seen_metadata": None, "history_length": 4},
    ]
    assert snapshot.result["requests"] == 2 and snapshot.result["messages"] >= 2
    assert sorted(asked) == ["one", "two"]  # each child ran once, the parent's replay asked nobody again
    timeline = await inspect_task(absurd_client, str(spawned["task_id"]))
    assert [step.kind for step in timeline.steps] == ["child_task", "child_task", "child_task"]  # 2 ends, 1 event
    report = render_timeline(timeline)
    assert "Children (2)" in report and "total with descendants:" in report
    child_report = render_timeline(await inspect_task(absurd_client, timeline.children[0].task_id))
    assert f"child of: {timeline.task_id}" in child_report


async def test_outside_a_task_the_child_is_spawned_and_polled(absurd_client: AsyncAbsurd) -> None:
    asked: list[str] = []
    child = _child(absurd_client, asked)
    async with running_worker(absurd_client, concurrency=1, retry_policy=RetryPolicy(default_strategy=None)):
        result = await child.run_as_child("hello", metadata={"from": "script"})
        assert result.output.text == "HELLO" and result.output.seen_metadata == {"from": "script"}
        assert result.usage.requests == 1
        with pytest.raises(
            ChildTaskFailedError, match=r"Child task 'child' \(.*\) failed for good: .*the child cannot"
        ):
            await child.run_as_child("fail now", max_attempts=1)


async def test_a_cancelled_child_raises_in_its_caller(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    asked: list[str] = []
    gate = asyncio.Event()
    child = _child(absurd_client, asked, gate)
    async with running_worker(absurd_client, concurrency=1):
        call = asyncio.ensure_future(child.run_as_child("wait for me"))
        await wait_until(lambda: asked)
        async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
            await conn.execute(f"select absurd.cancel_task(%s, task_id) from absurd.t_{absurd_queue}", (absurd_queue,))
        with pytest.raises(ChildTaskCancelledError, match="was cancelled before it finished"):
            await call
        gate.set()


async def test_a_call_that_asks_something_else_when_it_runs_again_fails_the_parent_for_good(
    absurd_client: AsyncAbsurd,
) -> None:
    asked: list[str] = []
    child = _child(absurd_client, asked)
    executions: list[int] = []

    @absurd_client.register_task(name="fickle")
    async def fickle(params: dict[str, Any], ctx: AsyncTaskContext) -> str:
        executions.append(1)
        return (await child.run_as_child(f"question {len(executions)}")).output.text  # differs on the resume

    spawned = await absurd_client.spawn("fickle", {})
    async with running_worker(absurd_client, concurrency=1):
        snapshot = await wait_terminal(absurd_client, str(spawned["task_id"]))
    assert snapshot.state == "failed"
    assert snapshot.failure["name"] == "ReplayDivergenceError"
    assert "asks its child something else" in snapshot.failure["message"]
    assert asked == ["question 1"] and len(executions) == 2  # one child, no second spawn


async def test_a_durable_child_gets_the_clients_spawn_hook_and_defaults_like_a_plain_spawn(
    absurd_dsn: str, absurd_queue: str
) -> None:
    seen: list[tuple[str, Any]] = []

    async def before_spawn(task_name: str, params: Any, options: SpawnOptions) -> SpawnOptions:
        seen.append((task_name, options.get("idempotency_key")))
        return {**options, "headers": {**(options.get("headers") or {}), "tenant": "acme"}}

    client = AsyncAbsurd(absurd_dsn, queue_name=absurd_queue, hooks={"before_spawn": before_spawn})
    try:
        child = _child(client, [])

        @client.register_task(name="parent")
        async def parent(params: dict[str, Any], ctx: AsyncTaskContext) -> list[str]:
            results = [await child.run_as_child("plain"), await child.run_as_child("once", max_attempts=1)]
            return [result.task_id for result in results]

        spawned = await client.spawn("parent", {})
        async with running_worker(client, concurrency=1):
            snapshot = await wait_terminal(client, str(spawned["task_id"]))
        assert snapshot.state == "completed", snapshot
        plain, once = snapshot.result
        async with await psycopg.AsyncConnection.connect(absurd_dsn) as conn:
            cur = await conn.execute(
                f"select task_id::text, headers, max_attempts from absurd.t_{absurd_queue} where task_name = 'child'"
            )
            rows = {row[0]: row[1:] for row in await cur.fetchall()}
        assert rows == {plain: ({"tenant": "acme"}, 5), once: ({"tenant": "acme"}, 1)}  # never Absurd's unlimited
        child_keys = {key for name, key in seen if name == "child"}  # a resumed parent spawns again: same key
        assert len(child_keys) == 2 and all(key and key.startswith("pydantic-ai-absurd:") for key in child_keys)
    finally:
        await client.close()

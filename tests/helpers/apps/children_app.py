"""A worker process for the child-task tests: `python -m tests.helpers.apps.children_app` (settings from the
environment, as `WORKER_<NAME>` variables: the `workers` fixture's `worker(..., command=...)` sets them).

Agents: `researcher` (registered as the task `researcher`, on `WORKER_CHILD_QUEUE` or the parent's queue) asks
its model once, calls its `lookup` tool, asks again and returns a `Report`; `coordinator` (the task
`coordinate`) fans out to one researcher per topic from its `research` tool. Every model call and every tool
body run is a row of `child_calls`, so a test counts them across processes. A topic steers a researcher:

- `gate:<name>` (without `deep`): `lookup` records `lookup_start`, then waits until the test opens the gate (`child_gates`);
- `fail`: the researcher's model raises (every attempt);
- `deep`: `lookup` runs a `helper` agent as a child of the researcher (a grandchild of the coordinator),
  whose model waits for the gate `help <topic>` when the topic holds `gate:`.

`params["split"]`: the coordinator's model calls `research` twice in one response (two tool calls in parallel).
`params["catch"]`: the coordinator's tool returns the message of a failed child instead of raising.
`params["crash_after_children"]`: the first run of the tool raises once all children ended (the parent retries).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psycopg
from absurd_sdk import AsyncAbsurd, AsyncTaskContext
from pydantic import BaseModel
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from pydantic_ai_absurd import AbsurdAgent, ChildTaskFailedError
from pydantic_ai_absurd.worker import RetryPolicy, run_worker

DSN = os.environ.get("WORKER_DSN", "")
QUEUE = os.environ.get("WORKER_QUEUE", "default")
CHILD_QUEUE = os.environ.get("WORKER_CHILD_QUEUE") or QUEUE

TABLES = """
create table if not exists child_calls (
    queue text not null, what text not null, topic text not null, pid int not null,
    at timestamptz not null default clock_timestamp()
);
create table if not exists child_gates (queue text not null, name text not null)
"""

absurd = AsyncAbsurd(DSN or None, queue_name=QUEUE)


class Report(BaseModel):
    topic: str
    facts: list[str]


async def record(what: str, topic: str) -> None:
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        await conn.execute(
            "insert into child_calls (queue, what, topic, pid) values (%s, %s, %s, %s)",
            (QUEUE, what, topic, os.getpid()),
        )


async def gate_open(name: str) -> bool:
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        cur = await conn.execute("select 1 from child_gates where queue = %s and name = %s", (QUEUE, name))
        return await cur.fetchone() is not None


def _prompt(messages: list[ModelMessage]) -> str:
    first = messages[0]
    assert isinstance(first, ModelRequest)
    part = next(p for p in first.parts if isinstance(p, UserPromptPart))
    return str(part.content)


async def researcher_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    topic = _prompt(messages)
    await record("researcher_model", topic)
    if "fail" in topic:
        raise RuntimeError(f"no sources for {topic}")
    if len(messages) == 1:
        return ModelResponse(parts=[ToolCallPart("lookup", {"topic": topic}, tool_call_id="lookup1")])
    facts = [str(getattr(part, "content", "")) for part in messages[-1].parts]
    return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, {"topic": topic, "facts": facts})])


async def helper_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    await record("helper_model", _prompt(messages))
    if "gate:" in _prompt(messages):
        while not await gate_open(_prompt(messages)):
            await asyncio.sleep(0.05)
    return ModelResponse(parts=[TextPart(f"helped with {_prompt(messages)}")])


helper = AbsurdAgent(Agent(FunctionModel(helper_model), name="helper"), absurd)
helper.register_task(queue=CHILD_QUEUE)

researcher = AbsurdAgent(Agent(FunctionModel(researcher_model), name="researcher", output_type=Report), absurd)
researcher.register_task(queue=CHILD_QUEUE)


@researcher.tool
async def lookup(ctx: RunContext[None], topic: str) -> str:
    await record("lookup_start", topic)
    found = f"fact about {topic}"
    if "deep" in topic:
        found += f"; {(await helper.run_as_child(f'help {topic}')).output}"
    elif "gate:" in topic:
        while not await gate_open(topic):
            await asyncio.sleep(0.05)
    await record("lookup_end", topic)
    return found


async def coordinator_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    await record("coordinator_model", "")
    if len(messages) == 1:
        prompt = _prompt(messages)
        topics = prompt.removeprefix("split:").split(",")
        if prompt.startswith("split:"):  # two parallel tool calls, each with its own children
            halves = [topics[: len(topics) // 2], topics[len(topics) // 2 :]]
            return ModelResponse(
                parts=[
                    ToolCallPart("research", {"topics": half}, tool_call_id=f"half{n}") for n, half in enumerate(halves)
                ]
            )
        return ModelResponse(parts=[ToolCallPart("research", {"topics": topics}, tool_call_id="research1")])
    returns = [str(part.content) for part in messages[-1].parts if isinstance(part, ToolReturnPart)]
    return ModelResponse(parts=[TextPart(f"summary: {' | '.join(returns)}")])


coordinator = AbsurdAgent(Agent(FunctionModel(coordinator_model), name="coordinator"), absurd)


@coordinator.tool
async def research(ctx: RunContext[dict[str, Any]], topics: list[str]) -> list[Any]:
    params = ctx.deps
    await record("research_body", ",".join(topics))
    try:
        results = await asyncio.gather(
            *(researcher.run_as_child(topic, max_attempts=params.get("child_attempts")) for topic in topics)
        )
    except ChildTaskFailedError as error:
        if not params.get("catch"):
            raise
        return [f"failed: {error}"]
    if params.get("crash_after_children") and not await gate_open("crashed"):
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
            await conn.execute("insert into child_gates values (%s, 'crashed')", (QUEUE,))
        raise RuntimeError("the parent fails once after its children ended")
    return [result.output.model_dump() for result in results]


@absurd.register_task(name="coordinate")
async def coordinate(params: dict[str, Any], ctx: AsyncTaskContext) -> dict[str, Any]:
    prompt = ("split:" if params.get("split") else "") + ",".join(params["topics"])
    result = await coordinator.run(prompt, deps=params)
    return {"output": result.output}


async def main() -> None:
    await run_worker(
        absurd,
        concurrency=int(os.environ.get("WORKER_CONCURRENCY", "1")),
        claim_timeout=int(os.environ.get("WORKER_CLAIM_TIMEOUT", "10")),
        poll_interval=0.05,
        queue=os.environ.get("WORKER_WORK_QUEUE") or QUEUE,
        retry_policy=RetryPolicy(default_strategy=None),
    )


if __name__ == "__main__":
    asyncio.run(main())

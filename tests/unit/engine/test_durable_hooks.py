"""The hooks Pydantic AI 2.78 gives durable engines, under Absurd: durable sleep, execution attempt, divergence,
token counting and `durable=False` tools."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent, RunContext
from pydantic_ai.capabilities import RetryOnModelErrors
from pydantic_ai.exceptions import ModelUnavailableError
from pydantic_ai.messages import (
    AgentStreamEvent,
    ModelMessage,
    ModelResponse,
    PartStartEvent,
    TextPart,
    ToolCallPart,
)
from pydantic_ai.models import ModelRequestParameters
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.settings import ModelSettings
from pydantic_ai.usage import RequestUsage, UsageLimits

from pydantic_ai_absurd import AbsurdAgent, AbsurdDurability, ReplayDivergenceError
from pydantic_ai_absurd._absurd import read_runs
from tests.helpers.agents import SimulatedCrash, run_to_end
from tests.helpers.events import collect
from tests.helpers.sql import checkpoint_names, client_on_fake_clock


def flaky_model(calls: list[str], *, failures: int) -> FunctionModel:
    """Fails its first `failures` calls with a transient provider error without a retry-after, then answers."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        calls.append("model")
        if len(calls) <= failures:
            raise ModelUnavailableError("flaky", "overloaded")
        return ModelResponse(parts=[TextPart("done")])

    return FunctionModel(respond, model_name="flaky")


async def test_a_long_graph_sleep_suspends_the_task(absurd_dsn: str, absurd_queue: str) -> None:
    calls: list[str] = []
    inner = Agent(
        flaky_model(calls, failures=1),
        name="patient",
        capabilities=[RetryOnModelErrors(initial_delay=0.6, max_delay=0.6, max_attempts=3)],
    )
    agent = AbsurdAgent(inner, suspend_threshold=0.2)
    async with client_on_fake_clock(absurd_dsn, absurd_queue) as (client, clock):

        @client.register_task(name="patient")
        async def patient(params: Any, ctx: Any) -> str:
            return (await agent.run("go")).output

        spawned = await client.spawn("patient", {})
        await client.work_batch(claim_timeout=30, batch_size=1)
        first = await client.fetch_task_result(spawned["task_id"])
        assert first is not None and first.state == "sleeping"  # suspended in Postgres: no worker slot held
        assert await checkpoint_names(absurd_dsn, absurd_queue, str(spawned["task_id"])) == ["patient__graph.sleep"]
        await client.work_batch(claim_timeout=30, batch_size=1)
        assert calls == ["model"]  # asleep until the delay (0.6 s) has passed
        await clock.advance(timedelta(seconds=1))
        snapshot = await run_to_end(client, spawned["task_id"])
    assert (snapshot.state, snapshot.result) == ("completed", "done")
    assert calls == ["model", "model"]


async def test_a_short_graph_sleep_stays_in_the_worker(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    calls: list[str] = []
    inner = Agent(
        flaky_model(calls, failures=1),
        name="brisk",
        capabilities=[RetryOnModelErrors(initial_delay=0.05, max_delay=0.05, max_attempts=3)],
    )
    agent = AbsurdAgent(inner)  # default threshold: 5 s
    crash = {"armed": True}

    @absurd_client.register_task(name="brisk")
    async def brisk(params: Any, ctx: Any) -> str:
        output = (await agent.run("go")).output
        if crash["armed"]:
            crash["armed"] = False
            raise SimulatedCrash("after the run")
        return output

    spawned = await absurd_client.spawn("brisk", {})
    await absurd_client.work_batch(claim_timeout=30, batch_size=1)
    names = await checkpoint_names(absurd_dsn, absurd_queue, str(spawned["task_id"]))
    assert names == ["brisk__graph.sleep", "brisk__model.request"]
    snapshot = await run_to_end(absurd_client, spawned["task_id"])
    assert (snapshot.state, snapshot.result) == ("completed", "done")
    # The failed request left no checkpoint and gave its step name to the retry, so the replay after the crash
    # found the answer under the first name and called the model no more.
    assert calls == ["model", "model"]


def test_the_engine_declares_absurds_suspension_and_divergence() -> None:
    from absurd_sdk import SuspendTask

    spec = AbsurdDurability.engine_spec
    assert spec.control_flow_error_types == (SuspendTask,)
    assert spec.nondeterminism_error_types == (ReplayDivergenceError,)


async def test_stream_events_carry_absurds_attempt(absurd_client: AsyncAbsurd) -> None:
    seen: list[tuple[int, int]] = []
    attempts = {"n": 0}

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        attempts["n"] += 1
        yield "partial "
        if attempts["n"] == 1:
            raise SimulatedCrash("the worker died while the model streamed")
        yield "answer"

    async def handler(ctx: RunContext[None], events: AsyncIterator[AgentStreamEvent]) -> None:
        async for event in events:
            if isinstance(event, PartStartEvent) and event.origin is not None:
                seen.append((event.origin.attempt, event.origin.execution_attempt))

    agent = AbsurdAgent(
        Agent(FunctionModel(stream_function=stream, model_name="streamer"), name="streamer"),
        absurd_client,
        event_stream_handler=handler,
        publish_events=True,
    )

    @absurd_client.register_task(name="streamer")
    async def streamer(params: Any, ctx: Any) -> str:
        return (await agent.run("go")).output

    spawned = await absurd_client.spawn("streamer", {})
    snapshot = await run_to_end(absurd_client, spawned["task_id"])
    assert (snapshot.state, snapshot.result) == ("completed", "partial answer")
    # The model step's attempt stays 1; the execution of that attempt is Absurd's run attempt.
    assert seen == [(1, 1), (1, 2)]
    # The event log keeps both, each telling which execution wrote it: a reader drops the superseded one.
    logged = [
        (item.attempt, item.event.origin.execution_attempt)
        for item in await collect(absurd_client, spawned["task_id"])
        if isinstance(item.event, PartStartEvent) and item.event.origin is not None
    ]
    assert logged == [(1, 1), (2, 2)]


async def test_a_divergence_fails_the_task_for_good_under_absurds_own_worker(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    prompts = {"prompt": "first"}
    crash = {"armed": True}

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart("ok")])

    agent = AbsurdAgent(Agent(FunctionModel(respond, model_name="m"), name="drifty"))

    @absurd_client.register_task(name="drifty")
    async def drifty(params: Any, ctx: Any) -> str:
        output = (await agent.run(prompts["prompt"])).output
        if crash["armed"]:
            crash["armed"] = False
            prompts["prompt"] = "second"  # the code changed before the retry
            raise SimulatedCrash("after the model step")
        return output

    spawned = await absurd_client.spawn("drifty", {}, max_attempts=5)
    snapshot = await run_to_end(absurd_client, spawned["task_id"])
    assert snapshot.state == "failed"
    assert snapshot.failure is not None and snapshot.failure["name"] == "ReplayDivergenceError"
    # Attempt 1 crashed, attempt 2 diverged and ended the task: no third attempt diverging again.
    async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
        runs = await read_runs(conn, absurd_queue, str(spawned["task_id"]))
    assert [run["attempt"] for run in runs] == [1, 2]


class CountingModel(FunctionModel):
    """A scripted model that can count tokens ahead of a request, counting how often it was asked to."""

    def __init__(self, counted: list[int]) -> None:
        def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            if not any(p.part_kind == "tool-return" for m in messages for p in m.parts):
                return ModelResponse(parts=[ToolCallPart("crash_once", {}, tool_call_id="c1")])
            return ModelResponse(parts=[TextPart("counted")])

        super().__init__(respond, model_name="counter")
        self.counted = counted

    async def count_tokens(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> RequestUsage:
        self.counted.append(len(messages))
        return RequestUsage(input_tokens=10 * len(messages))


async def test_token_counting_is_a_step_and_replays(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    counted: list[int] = []
    crash = {"armed": True}
    inner = Agent(CountingModel(counted), name="counter")

    @inner.tool_plain
    async def crash_once() -> str:
        if crash["armed"]:
            crash["armed"] = False
            raise SimulatedCrash("the worker died in the tool")
        return "ran"

    agent = AbsurdAgent(inner)

    @absurd_client.register_task(name="counter")
    async def counter(params: Any, ctx: Any) -> str:
        limits = UsageLimits(count_tokens_before_request=True, input_tokens_limit=1000)
        return (await agent.run("go", usage_limits=limits)).output

    spawned = await absurd_client.spawn("counter", {})
    snapshot = await run_to_end(absurd_client, spawned["task_id"])
    assert (snapshot.state, snapshot.result) == ("completed", "counted")
    # Counted once per request: the retry after the crash replayed the first count from its checkpoint.
    assert counted == [1, 3]
    names = await checkpoint_names(absurd_dsn, absurd_queue, str(spawned["task_id"]))
    assert [name for name in names if "count_tokens" in name] == [
        "counter__model.count_tokens",
        "counter__model.count_tokens#2",
    ]


async def test_a_tool_with_durable_false_runs_outside_a_step(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    ran: list[str] = []
    crash = {"armed": True}

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if not any(p.part_kind == "tool-return" for m in messages for p in m.parts):
            return ModelResponse(
                parts=[ToolCallPart("pure", {}, tool_call_id="p1"), ToolCallPart("effect", {}, tool_call_id="e1")]
            )
        return ModelResponse(parts=[TextPart("both ran")])

    inner = Agent(FunctionModel(respond, model_name="m"), name="mixed")

    @inner.tool_plain(durable=False)
    async def pure() -> str:
        ran.append("pure")
        return "pure result"

    @inner.tool_plain
    async def effect() -> str:
        ran.append("effect")
        return "effect result"

    agent = AbsurdAgent(inner)

    @absurd_client.register_task(name="mixed")
    async def mixed(params: Any, ctx: Any) -> str:
        output = (await agent.run("go")).output
        if crash["armed"]:
            crash["armed"] = False
            raise SimulatedCrash("after the run")
        return output

    spawned = await absurd_client.spawn("mixed", {})
    snapshot = await run_to_end(absurd_client, spawned["task_id"])
    assert (snapshot.state, snapshot.result) == ("completed", "both ran")
    # The pure tool has no checkpoint, so the replay ran it again; the durable one ran once.
    assert sorted(ran) == ["effect", "pure", "pure"]
    names = await checkpoint_names(absurd_dsn, absurd_queue, str(spawned["task_id"]))
    assert [name for name in names if ".call_tool:" in name] == ["mixed__function_toolset__<agent>.call_tool:effect@e1"]


@pytest.mark.parametrize("bad", [{"suspend_threshold": -1.0}, {"max_provider_wait": -0.5}])
def test_negative_wait_settings_are_refused(bad: dict[str, float]) -> None:
    from pydantic_ai.exceptions import UserError

    with pytest.raises(UserError, match="must not be negative"):
        AbsurdDurability[None](**bad)

"""Text Postgres cannot hold (NUL, lone surrogates, control characters, 1 MB) is stored and replayed exactly."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from absurd_sdk import AsyncAbsurd
from pydantic import BaseModel, ValidationError
from pydantic_ai import Agent, DeferredToolRequests, DeferredToolResults, Tool
from pydantic_ai.capabilities import HandleDeferredToolCalls
from pydantic_ai.conversation import Conversation
from pydantic_ai.exceptions import CallDeferred
from pydantic_ai.messages import (
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from pydantic_ai_absurd import AbsurdAgent, Inbox, PostgresConversationStore, fork_task, stream_events
from pydantic_ai_absurd._checkpoint import Checkpoint
from pydantic_ai_absurd._text import is_storable
from pydantic_ai_absurd.cli import main
from pydantic_ai_absurd.client import spawn_task
from pydantic_ai_absurd.errors import NonRetryableError, UnstorableTextError, one_line
from pydantic_ai_absurd.events import sse_events
from pydantic_ai_absurd.testing import run_queued
from pydantic_ai_absurd.worker import RetryPolicy
from pydantic_ai_absurd.worker._retry import failure_reason
from tests.helpers.agents import SimulatedCrash, run_until_done
from tests.helpers.polling import wait_until
from tests.helpers.sql import checkpoints, task_state
from tests.helpers.workers import running_worker

NASTY_ARG = "a\x00b\x01\x1b[31m\u2028c"  # Pydantic AI cannot send a lone surrogate in arguments
NASTY_RESULT = "\ud800\udfff\x00 lone \udc80 and a NUL \x00\x7f"


class Recorder:
    """A scripted model that calls `echo` once, then answers with the text the tool returned (plus a NUL)."""

    def __init__(self, *, crash_before_final: bool) -> None:
        self.calls = 0
        self.returns: list[object] = []
        self.crash_before_final = crash_before_final

    def model(self) -> FunctionModel:
        def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            self.calls += 1
            returns = [part.content for m in messages for part in m.parts if isinstance(part, ToolReturnPart)]
            if not returns:
                return ModelResponse(parts=[ToolCallPart("echo", {"text": NASTY_ARG}, tool_call_id="c\x001")])
            self.returns.append(returns[-1])
            if self.crash_before_final:
                self.crash_before_final = False
                raise SimulatedCrash("before the final answer is stored")
            return ModelResponse(parts=[TextPart(f"{returns[-1]}|\x00|\ud83d")])

        async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
            for index, part in enumerate(respond(messages, info).parts):
                if isinstance(part, TextPart):
                    yield part.content
                elif isinstance(part, ToolCallPart):
                    call = DeltaToolCall(
                        name=part.tool_name, json_args=part.args_as_json_str(), tool_call_id=part.tool_call_id
                    )
                    yield {index: call}

        return FunctionModel(respond, stream_function=stream, model_name="scripted")


def strings_in(value: object) -> list[str]:
    """Every string in a decoded JSON value, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        items = cast(dict[str, object], value).items()
        return [text for key, item in items for text in [key, *strings_in(item)]]
    if isinstance(value, list):
        return [text for item in cast(list[object], value) for text in strings_in(item)]
    return []


def echo_agent(
    recorder: Recorder, tool_args: list[str], result: str, *, publish_events: bool = False
) -> AbsurdAgent[None, str]:
    inner = Agent(recorder.model(), name="echoer")

    @inner.tool_plain
    def echo(text: str) -> str:
        tool_args.append(text)
        return result

    return AbsurdAgent(inner, publish_events=publish_events)


async def test_nul_and_surrogates_in_tool_args_and_results_round_trip(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    recorder = Recorder(crash_before_final=True)
    tool_args: list[str] = []
    agent = echo_agent(recorder, tool_args, NASTY_RESULT)
    outputs: list[str] = []

    @absurd_client.register_task(name="echo")
    async def task(params: Any, ctx: Any) -> dict[str, int]:
        outputs.append((await agent.run("go")).output)
        return {"length": len(outputs[-1])}

    spawned = await absurd_client.spawn("echo", {}, max_attempts=3)
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.state == "completed", (snapshot.failure or {}).get("traceback")
    assert tool_args == [NASTY_ARG]  # the tool ran once, with the exact arguments
    # first run: 2 model calls (the second crashed); the retry replays the first and calls the model once
    assert recorder.calls == 3
    assert recorder.returns == [NASTY_RESULT, NASTY_RESULT]  # the replayed tool result is the same text
    assert outputs == [f"{NASTY_RESULT}|\x00|\ud83d"]
    stored = await checkpoints(absurd_dsn, absurd_queue, spawned["task_id"])
    assert NASTY_RESULT in strings_in([Checkpoint.read(state).decode(step=name) for name, state in stored.items()])


async def test_a_one_megabyte_tool_result_round_trips(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    big = ("0123456789abcdef\x00\ud800" * 60_000)[:1_048_576]
    recorder = Recorder(crash_before_final=True)
    tool_args: list[str] = []
    agent = echo_agent(recorder, tool_args, big)

    @absurd_client.register_task(name="big")
    async def task(params: Any, ctx: Any) -> int:
        return len((await agent.run("go")).output)

    spawned = await absurd_client.spawn("big", {}, max_attempts=3)
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.state == "completed", snapshot.failure
    assert len(tool_args) == 1 and recorder.calls == 3
    assert recorder.returns == [big, big]
    stored = await checkpoints(absurd_dsn, absurd_queue, spawned["task_id"])
    assert big in strings_in([Checkpoint.read(state).decode(step=name) for name, state in stored.items()])


async def _failed(absurd: AsyncAbsurd, task_id: str) -> dict[str, Any] | None:
    snapshot = await absurd.fetch_task_result(task_id)
    if snapshot is None or snapshot.state != "failed":
        return None
    return cast(dict[str, Any], snapshot.failure)


@pytest.mark.parametrize(
    ("kind", "name", "attempts"),
    [
        ("non_retryable", "NonRetryableError", 1),  # not retried: the reason is recorded, not lost
        ("retryable", "ValueError", 2),
        ("result", "TaskResultNotSerializableError", 1),
    ],
)
async def test_failures_and_results_quoting_nul_or_surrogates_are_recorded_once(
    absurd_client: AsyncAbsurd,
    absurd_dsn: str,
    absurd_queue: str,
    kind: str,
    name: str,
    attempts: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pydantic_ai_absurd.worker")
    calls: list[str] = []

    @absurd_client.register_task(name="quoting")
    async def quoting(params: str, ctx: Any) -> Any:
        calls.append(params)
        if params == "non_retryable":
            raise NonRetryableError("refused tool input 'a\x00b\ud800'")
        if params == "retryable":
            raise ValueError("flaky tool said 'a\x00b\ud800'")
        return {"answer": ["ok", "a\x00b"]}

    spawned = await absurd_client.spawn("quoting", kind, max_attempts=2)
    async with running_worker(absurd_client, retry_policy=RetryPolicy(default_strategy=None)):
        failure = await wait_until(lambda: _failed(absurd_client, spawned["task_id"]))
    assert failure["name"] == name
    assert len(calls) == attempts
    state = await task_state(absurd_dsn, absurd_queue, spawned["task_id"])
    assert (state["state"], state["attempts"]) == ("failed", attempts)
    message = failure["message"]
    if kind == "result":
        assert "result['answer'][1] = 'a\\x00b'" in message and "\n" not in message
    else:
        assert "'a\\x00b\\ud800'" in message
        assert "a\\x00b\\ud800" in failure["traceback"]
    logged = [record.getMessage() for record in caplog.records if record.name == "pydantic_ai_absurd.worker"]
    failed = [line for line in logged if line.startswith("failed ")]
    assert failed and all(is_storable(line) and "\\x00" in line for line in failed)


async def test_the_event_log_keeps_nul_and_surrogates_exactly(absurd_client: AsyncAbsurd) -> None:
    recorder = Recorder(crash_before_final=False)
    tool_args: list[str] = []
    agent = echo_agent(recorder, tool_args, NASTY_RESULT, publish_events=True)

    @absurd_client.register_task(name="published")
    async def task(params: Any, ctx: Any) -> int:
        return len((await agent.run("go")).output)

    spawned = await absurd_client.spawn("published", {}, max_attempts=3)
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.state == "completed", (snapshot.failure or {}).get("traceback")
    assert recorder.calls == 2 and tool_args == [NASTY_ARG]
    events = [item.event async for item in stream_events(absurd_client, spawned["task_id"])]
    calls = [event for event in events if isinstance(event, FunctionToolCallEvent)]
    results = [event for event in events if isinstance(event, FunctionToolResultEvent)]
    assert [call.part.args_as_dict() for call in calls] == [{"text": NASTY_ARG}]
    assert [call.part.tool_call_id for call in calls] == ["c\x001"]
    assert [result.part.content for result in results] == [NASTY_RESULT]


async def test_inbox_requests_and_answers_keep_nul_and_surrogates_exactly(absurd_client: AsyncAbsurd) -> None:
    inbox = Inbox(absurd_client)
    seen: list[object] = []
    ran: list[str] = []

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returns = [part.content for m in messages for part in m.parts if isinstance(part, ToolReturnPart)]
        if not returns:
            return ModelResponse(
                parts=[
                    ToolCallPart("delete_file", {"path": "/tmp/\x00x"}, tool_call_id="d\x001"),
                    ToolCallPart("lookup", {"key": "k\x1b"}, tool_call_id="l1"),
                ]
            )
        seen.extend(returns)
        return ModelResponse(parts=[TextPart("done")])

    async def delete_file(path: str) -> str:
        ran.append(path)
        return "deleted"

    async def lookup(key: str) -> str:
        raise CallDeferred(metadata={"key": key})

    inner = Agent(
        FunctionModel(respond, model_name="scripted"),
        name="ops",
        tools=[Tool(delete_file, requires_approval=True), Tool(lookup)],
        capabilities=[HandleDeferredToolCalls(inbox.ask, name="approve")],
    )
    agent = AbsurdAgent(inner)

    @absurd_client.register_task(name="ops")
    async def ops(params: Any, ctx: Any) -> str:
        return (await agent.run("go")).output

    spawned = await absurd_client.spawn("ops", {}, max_attempts=2)
    await run_queued(absurd_client)
    [request] = await inbox.pending(task_id=spawned["task_id"])
    assert [(c.args_as_dict(), c.tool_call_id) for c in request.approvals] == [({"path": "/tmp/\x00x"}, "d\x001")]
    assert request.metadata == {"l1": {"key": "k\x1b"}}
    rest = await inbox.approve(request.token, answered_by="al\x00ice")
    assert rest is not None and rest.approvals == [] and [c.tool_call_id for c in rest.calls] == ["l1"]
    await inbox.answer(request.token, DeferredToolResults(calls={"l1": "v\x00\ud800\udc00"}))
    done = await run_until_done(absurd_client, spawned["task_id"])
    assert done.state == "completed", (done.failure or {}).get("traceback")
    assert ran == ["/tmp/\x00x"]
    assert sorted(map(str, seen)) == ["deleted", "v\x00\ud800\udc00"]


async def test_the_conversation_store_keeps_nul_and_surrogates_exactly(absurd_dsn: str) -> None:
    messages: list[ModelMessage] = [
        ModelRequest(parts=[UserPromptPart(content="hi \x00")]),
        ModelResponse(parts=[ToolCallPart("lookup", {"q": "a\x00b"}, tool_call_id="c\x001")]),
        ModelRequest(parts=[ToolReturnPart("lookup", NASTY_RESULT, tool_call_id="c\x001")]),
        ModelResponse(parts=[TextPart("plain")]),
    ]
    deferred = DeferredToolRequests(calls=[ToolCallPart("ask", {"q": "\ud800"}, tool_call_id="d1")])
    conversation_id = f"conv-{uuid.uuid4().hex[:12]}"
    async with PostgresConversationStore(absurd_dsn) as store:
        conversation = Conversation(conversation_id=conversation_id, messages=messages)
        conversation.deferred_tool_requests = deferred
        await store.save(conversation)
        loaded = await store.load(conversation_id)
    assert loaded is not None
    assert loaded.messages == messages
    assert loaded.deferred_tool_requests == deferred


async def test_spawning_with_unstorable_params_fails_clearly(absurd_client: AsyncAbsurd) -> None:
    with pytest.raises(UnstorableTextError) as raised:
        await spawn_task(absurd_client, "anything", {"q": ["ok", "a\x00b"]}, queue="default")
    message = str(raised.value)
    assert "params['q'][1] = 'a\\x00b'" in message and "\n" not in message
    with pytest.raises(UnstorableTextError, match=r"Cannot fork task .*params\['q'\] = '\\ud800'"):
        await fork_task(absurd_client, str(uuid.uuid4()), at_step=0, params={"q": "\ud800"})


def test_validation_errors_are_one_line_without_documentation_urls() -> None:
    class Params(BaseModel):
        n: int

    with pytest.raises(ValidationError) as raised:
        Params.model_validate({"n": "many"})
    expected = "1 validation error for Params: n: Input should be a valid integer, unable to parse string as an integer"
    assert one_line(raised.value) == expected
    reason = failure_reason(raised.value, retryable=False)
    assert reason["message"] == expected and "errors.pydantic.dev" not in reason["message"]


# What Pydantic AI's JSON codec cannot write: raw bytes that are not UTF-8. The tool ran; its failure is
# recorded once.
@pytest.mark.parametrize("returned", [b"\x80\xff raw"], ids=["bytes"])
async def test_a_tool_result_the_codec_cannot_write_fails_once_and_never_reruns(
    absurd_client: AsyncAbsurd, returned: object
) -> None:
    recorder = Recorder(crash_before_final=False)
    runs: list[str] = []
    inner = Agent(recorder.model(), name="echoer")

    @inner.tool_plain
    def echo(text: str) -> Any:
        runs.append(text)
        return returned

    agent = AbsurdAgent(inner)

    @absurd_client.register_task(name="raw")
    async def task(params: Any, ctx: Any) -> str:
        return (await agent.run("go")).output

    spawned = await absurd_client.spawn("raw", {}, max_attempts=3)
    snapshot = await run_until_done(absurd_client, spawned["task_id"])
    assert snapshot.state == "failed" and snapshot.failure is not None
    assert snapshot.failure["name"] == "UnserializableResultError"
    assert "Tool 'echo'" in str(snapshot.failure["message"])
    assert len(runs) == 1 and recorder.calls == 1  # three attempts: one tool call, one model request


async def test_inspect_prints_lone_surrogates_as_escapes(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = echo_agent(Recorder(crash_before_final=False), [], NASTY_RESULT)

    @absurd_client.register_task(name="echo")
    async def task(params: Any, ctx: Any) -> int:
        return len((await agent.run("go")).output)

    spawned = await absurd_client.spawn("echo", {})
    assert (await run_until_done(absurd_client, spawned["task_id"])).state == "completed"
    code = await asyncio.to_thread(main, ["inspect", str(spawned["task_id"]), "-d", absurd_dsn, "-q", absurd_queue])
    out = capsys.readouterr().out
    assert code == 0 and "\\ud800\\udfff\\x00 lone \\udc80" in out
    out.encode("utf-8")  # a terminal could print it: no lone surrogate left
    argv = ["inspect", str(spawned["task_id"]), "--json", "-d", absurd_dsn, "-q", absurd_queue]
    code = await asyncio.to_thread(main, argv)
    out = capsys.readouterr().out
    out.encode("utf-8")
    # As JSON escapes, which JSON reads back (an adjacent high and low surrogate as the pair they spell).
    assert code == 0 and any("\x00 lone \udc80 and a NUL \x00\x7f" in text for text in strings_in(json.loads(out)))


@pytest.mark.parametrize("protocol", ["vercel-ai", "ag-ui"])
async def test_sse_sends_lone_surrogates_as_replacement_characters(absurd_client: AsyncAbsurd, protocol: str) -> None:
    agent = echo_agent(Recorder(crash_before_final=False), [], NASTY_RESULT, publish_events=True)

    @absurd_client.register_task(name="echo")
    async def task(params: Any, ctx: Any) -> int:
        return len((await agent.run("go")).output)

    spawned = await absurd_client.spawn("echo", {})
    assert (await run_until_done(absurd_client, spawned["task_id"])).state == "completed"
    body = "".join([chunk async for chunk in sse_events(absurd_client, str(spawned["task_id"]), protocol=protocol)])  # type: ignore[arg-type]
    body.encode("utf-8")  # every chunk was sent, as UTF-8
    data = [line.removeprefix("data: ") for line in body.split("\n") if line.startswith("data: {")]
    shown = "\ufffd\ufffd\x00 lone \ufffd and a NUL \x00\x7f"
    assert any(shown in text for d in data for text in strings_in(json.loads(d)))
    assert data[-1].startswith(('{"type":"finish"', '{"type":"RUN_FINISHED"'))

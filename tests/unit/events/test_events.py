"""The event log of a durable run: order, batching, replays, interrupted steps, status events, readers, cleanup."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd
from psycopg import sql
from pydantic_ai import Agent, DeferredToolRequests, DeferredToolResults, RunContext
from pydantic_ai.capabilities import HandleDeferredToolCalls
from pydantic_ai.messages import FunctionToolCallEvent, FunctionToolResultEvent, TextPart, ToolCallPart

from pydantic_ai_absurd import AbsurdAgent, TaskEvent, resolve_event_token, stream_events
from pydantic_ai_absurd.client import TaskNotFoundError
from pydantic_ai_absurd.errors import EventLogError
from pydantic_ai_absurd.events import (
    ResumedEvent,
    RunFinishedEvent,
    RunStartedEvent,
    StepInterruptedEvent,
    WaitingForInputEvent,
    channel_name,
)
from pydantic_ai_absurd.events import _writer as event_writer
from tests.helpers.agents import Script, SimulatedCrash, run_until_done
from tests.helpers.events import answer_words, collect, log_rows, shown_text, streaming_agent
from tests.helpers.polling import WAIT


def register_chat(absurd: AsyncAbsurd, agent: AbsurdAgent[None, str], *, fail_after_run: bool = False) -> None:
    @absurd.register_task(name="chat")
    async def chat(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        result = await agent.run(params["prompt"])
        if fail_after_run and ctx.task_id not in failed_once:
            failed_once.add(ctx.task_id)
            raise SimulatedCrash("after the run")
        return {"output": result.output}

    failed_once: set[str] = set()


async def spawn_chat(absurd: AsyncAbsurd) -> str:
    spawned = await absurd.spawn("chat", {"prompt": "hi"})
    return str(spawned["task_id"])


def kinds(events: list[TaskEvent]) -> list[str]:
    return [e.kind for e in events]


async def test_log_holds_every_event_of_the_run_in_order(absurd_client: AsyncAbsurd) -> None:
    agent, _ = streaming_agent(absurd_client, words=3)
    register_chat(absurd_client, agent)
    task_id = await spawn_chat(absurd_client)
    snapshot = await run_until_done(absurd_client, task_id)
    assert snapshot.state == "completed"

    events = await collect(absurd_client, task_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert kinds(events) == [
        "run_started",
        "part_start",
        "part_end",
        "function_tool_call",
        "function_tool_result",
        "part_start",
        "final_result",
        "part_delta",
        "part_delta",
        "part_end",
        "run_finished",
    ]
    assert events[0].event == RunStartedEvent(attempt=1, run_id=events[0].event.run_id)  # type: ignore[union-attr]
    assert events[-1].event == RunFinishedEvent(status="completed")
    assert isinstance(events[3].event, FunctionToolCallEvent)
    assert events[3].step == "support__event_stream_handler@function_tool_call@c1"
    assert isinstance(events[4].event, FunctionToolResultEvent) and events[4].event.part.content == 3
    assert {e.step for e in events[5:10]} == {"support__model.request_stream#2"}
    assert shown_text(events) == "".join(answer_words(3))
    assert all(e.attempt == 1 for e in events)


async def test_outside_a_task_publish_events_changes_nothing(absurd_client: AsyncAbsurd) -> None:
    agent, _ = streaming_agent(absurd_client, words=2)
    result = await agent.run("hi")
    assert result.output == "".join(answer_words(2))


async def _notifications_until_done(absurd: AsyncAbsurd, dsn: str, task_id: str) -> tuple[list[TaskEvent], list[str]]:
    """Run the task to its end; return its log and the `NOTIFY` payloads of its writes (one per write)."""
    notifications: list[str] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(sql.SQL("listen {}").format(sql.Identifier(channel_name(task_id))))
        await run_until_done(absurd, task_id)
        events = await collect(absurd, task_id)
        # Every write committed before the run ended: read the notifications up to the last event's.
        async for note in conn.notifies(timeout=WAIT):
            notifications.append(note.payload)
            if int(note.payload) >= events[-1].seq:
                break
    return events, notifications


async def test_text_deltas_are_batched_into_few_writes(
    absurd_client: AsyncAbsurd, absurd_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the size rule writes deltas here: the interval rule (tested below) would add writes on a slow machine.
    monkeypatch.setattr(event_writer, "DELTA_FLUSH_INTERVAL", 3600.0)
    agent, _ = streaming_agent(absurd_client, words=2000, tool=False)
    register_chat(absurd_client, agent)
    task_id = await spawn_chat(absurd_client)
    events, notifications = await _notifications_until_done(absurd_client, absurd_dsn, task_id)
    assert sum(1 for e in events if e.kind == "part_delta") == 1999
    # One write per event that is not a delta (run started, part start, final result, part end, run finished),
    # and one per 500 deltas (the 1,999th goes with the part end).
    assert kinds(events) == [
        "run_started",
        "part_start",
        "final_result",
        *["part_delta"] * 1999,
        "part_end",
        "run_finished",
    ]
    assert [int(n) for n in notifications] == [1, 2, 3, 503, 1003, 1503, 2003, 2004]


async def test_a_buffered_delta_is_written_after_the_interval_while_the_stream_waits(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str
) -> None:
    delta_written = asyncio.Event()

    async def before_word(turn: int, i: int) -> None:
        if i == 2:  # "w0 " started the part, "w1 " is the buffered delta: no event comes until the log has it
            await asyncio.wait_for(delta_written.wait(), WAIT)

    agent, _ = streaming_agent(absurd_client, words=3, tool=False, before_word=before_word)
    register_chat(absurd_client, agent)
    task_id = await spawn_chat(absurd_client)
    async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
        await conn.execute(sql.SQL("listen {}").format(sql.Identifier(channel_name(task_id))))
        run = asyncio.ensure_future(run_until_done(absurd_client, task_id))
        async for _ in conn.notifies(timeout=WAIT):
            if any(kind == "part_delta" for _, kind, _, _ in await log_rows(absurd_dsn, absurd_queue, task_id)):
                delta_written.set()
                break
        snapshot = await run
    assert snapshot.state == "completed", snapshot.failure
    assert delta_written.is_set()
    events = await collect(absurd_client, task_id)
    assert shown_text(events) == "".join(answer_words(3))


async def test_replayed_steps_publish_nothing(absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str) -> None:
    agent, calls = streaming_agent(absurd_client, words=3)
    register_chat(absurd_client, agent, fail_after_run=True)
    task_id = await spawn_chat(absurd_client)
    snapshot = await run_until_done(absurd_client, task_id)
    assert snapshot.state == "completed"
    assert calls == {"model": 2, "tool": 1}

    events = await collect(absurd_client, task_id)
    assert kinds(events).count("part_delta") == 2
    assert kinds(events).count("function_tool_call") == 1
    started = [e.event for e in events if isinstance(e.event, RunStartedEvent)]
    assert [s.attempt for s in started] == [1, 2]
    assert not any(isinstance(e.event, StepInterruptedEvent) for e in events)
    assert kinds(events)[-2:] == ["run_started", "run_finished"]


async def test_a_failed_step_leaves_its_partial_events_and_a_marker(absurd_client: AsyncAbsurd) -> None:
    attempts: list[int] = []

    def before_word(turn: int, index: int) -> None:
        if index == 0:
            attempts.append(turn)
        if len(attempts) == 1 and index == 3:
            raise SimulatedCrash("model connection dropped mid-answer")

    agent, calls = streaming_agent(absurd_client, words=6, before_word=before_word)
    register_chat(absurd_client, agent)
    task_id = await spawn_chat(absurd_client)
    snapshot = await run_until_done(absurd_client, task_id)
    assert snapshot.state == "completed"
    assert calls["tool"] == 1

    events = await collect(absurd_client, task_id)
    marker_at = next(i for i, e in enumerate(events) if isinstance(e.event, StepInterruptedEvent))
    marker = events[marker_at].event
    assert isinstance(marker, StepInterruptedEvent)
    assert marker.step == "support__model.request_stream#2" and marker.attempt == 1
    partial = [e for e in events[:marker_at] if e.step == marker.step]
    assert [e.kind for e in partial] == ["part_start", "final_result", "part_delta", "part_delta"]
    assert marker.last_seq == partial[-1].seq
    assert events[marker_at + 1].event == RunStartedEvent(attempt=2, run_id=events[marker_at + 1].event.run_id)  # type: ignore[union-attr]
    after = events[marker_at + 1 :]
    assert [e.kind for e in after if e.step == marker.step].count("part_delta") == 5
    assert all(e.attempt == 2 for e in after)
    assert shown_text(events) == "".join(answer_words(6))


async def test_any_offset_yields_exactly_the_events_after_it(absurd_client: AsyncAbsurd) -> None:
    agent, _ = streaming_agent(absurd_client, words=4)
    register_chat(absurd_client, agent)
    task_id = await spawn_chat(absurd_client)
    await run_until_done(absurd_client, task_id)
    full = await collect(absurd_client, task_id)
    for after in range(len(full) + 1):
        assert await collect(absurd_client, task_id, after=after) == full[after:]
    assert await collect(absurd_client, task_id, after=str(3)) == full[3:]


async def test_live_readers_see_the_run_as_it_happens(absurd_client: AsyncAbsurd) -> None:
    gate = asyncio.Event()
    seen_first: asyncio.Event = asyncio.Event()

    async def before_word(turn: int, index: int) -> None:
        if index == 2:
            await gate.wait()

    agent, _ = streaming_agent(absurd_client, words=4, before_word=before_word)
    register_chat(absurd_client, agent)
    task_id = await spawn_chat(absurd_client)

    async def reader() -> list[TaskEvent]:
        out: list[TaskEvent] = []
        async for item in stream_events(absurd_client, task_id, poll_interval=60):
            out.append(item)
            if item.kind == "part_start" and item.step and "#2" in item.step:
                seen_first.set()
        return out

    readers = [asyncio.ensure_future(reader()) for _ in range(5)]
    work = asyncio.ensure_future(run_until_done(absurd_client, task_id))
    await asyncio.wait_for(seen_first.wait(), 20)  # streamed live, while the model is still answering
    assert not work.done()
    gate.set()
    await work
    results = await asyncio.wait_for(asyncio.gather(*readers), 20)
    full = await collect(absurd_client, task_id)
    assert all(result == full for result in results)


def approval_agent(absurd: AsyncAbsurd, tokens: list[str]) -> AbsurdAgent[None, str]:
    script = Script(
        turns=[
            lambda _: [ToolCallPart("refund", {"amount": 5}, tool_call_id="r1")],
            lambda _: [TextPart("refund done")],
        ]
    )

    async def ask(ctx: RunContext[None], requests: DeferredToolRequests, token: str) -> DeferredToolResults | None:
        tokens.append(token)
        return None

    inner = Agent(
        script.model(),
        name="support",
        capabilities=[HandleDeferredToolCalls(ask, name="approve_refund", timeout=timedelta(hours=1))],
    )

    @inner.tool(requires_approval=True)
    async def refund(ctx: RunContext[None], amount: int) -> str:
        return f"refunded {amount}"

    return AbsurdAgent(inner, absurd, publish_events=True)


async def test_waiting_for_input_then_resumed(absurd_client: AsyncAbsurd) -> None:
    tokens: list[str] = []
    register_chat(absurd_client, approval_agent(absurd_client, tokens))
    task_id = await spawn_chat(absurd_client)
    await absurd_client.work_batch(claim_timeout=30)
    snapshot = await absurd_client.fetch_task_result(task_id)
    assert snapshot is not None and snapshot.state == "sleeping"

    waiting = await collect_until(absurd_client, task_id, "waiting_for_input")
    assert waiting.event == WaitingForInputEvent(token=tokens[0])

    await resolve_event_token(absurd_client, tokens[0], {"approvals": {"r1": True}})
    assert (await run_until_done(absurd_client, task_id)).state == "completed"
    events = await collect(absurd_client, task_id)
    at = kinds(events).index("waiting_for_input")
    assert kinds(events)[at + 1] == "resumed"
    assert events[at + 1].event == ResumedEvent(attempt=1)
    assert kinds(events).count("run_started") == 1
    assert events[-1].event == RunFinishedEvent(status="completed")


async def collect_until(absurd: AsyncAbsurd, task_id: str, kind: str) -> TaskEvent:
    async for item in stream_events(absurd, task_id):
        if item.kind == kind:
            return item
    raise AssertionError(f"no {kind} event")


async def test_cancel_ends_the_log_and_its_readers(absurd_client: AsyncAbsurd) -> None:
    tokens: list[str] = []
    register_chat(absurd_client, approval_agent(absurd_client, tokens))
    task_id = await spawn_chat(absurd_client)
    await absurd_client.work_batch(claim_timeout=30)
    reader = asyncio.ensure_future(collect(absurd_client, task_id))
    await collect_until(absurd_client, task_id, "waiting_for_input")
    await absurd_client.cancel_task(task_id)
    events = await asyncio.wait_for(reader, 20)
    assert events[-1].event == RunFinishedEvent(status="cancelled")


async def test_the_log_is_removed_with_its_task(absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str) -> None:
    agent, _ = streaming_agent(absurd_client, words=2)
    register_chat(absurd_client, agent)
    task_id = await spawn_chat(absurd_client)
    await run_until_done(absurd_client, task_id)
    assert await log_rows(absurd_dsn, absurd_queue, task_id)
    async with await psycopg.AsyncConnection.connect(absurd_dsn, autocommit=True) as conn:
        await conn.execute("select absurd.cleanup_tasks(%s, 0, 1000)", (absurd_queue,))
    assert await log_rows(absurd_dsn, absurd_queue, task_id) == []
    with pytest.raises(TaskNotFoundError, match="cleaned up"):
        await collect(absurd_client, task_id)


async def test_reader_errors_are_one_line(absurd_client: AsyncAbsurd) -> None:
    with pytest.raises(TaskNotFoundError, match="not an Absurd task id"):
        await collect(absurd_client, "nope")
    with pytest.raises(TaskNotFoundError, match="No task"):
        await collect(absurd_client, "0190a0a0-0000-7000-8000-000000000000")
    with pytest.raises(EventLogError, match="not an event sequence number"):
        await collect(absurd_client, "0190a0a0-0000-7000-8000-000000000000", after="x")


async def test_a_task_that_publishes_nothing_ends_its_reader(absurd_client: AsyncAbsurd) -> None:
    @absurd_client.register_task(name="quiet")
    async def quiet(params: Any, ctx: Any) -> int:
        return 1

    spawned = await absurd_client.spawn("quiet", {})
    await run_until_done(absurd_client, str(spawned["task_id"]))
    assert await collect(absurd_client, str(spawned["task_id"])) == []


async def test_waiting_for_input_carries_the_inbox_request(absurd_client: AsyncAbsurd) -> None:
    from pydantic_ai_absurd import Inbox

    inbox = Inbox(absurd_client)
    script = Script(
        turns=[
            lambda _: [ToolCallPart("refund", {"amount": 5}, tool_call_id="r1")],
            lambda _: [TextPart("refund done")],
        ]
    )
    inner = Agent(
        script.model(), name="support", capabilities=[HandleDeferredToolCalls(inbox.ask, name="approve_refund")]
    )

    @inner.tool(requires_approval=True)
    async def refund(ctx: RunContext[None], amount: int) -> str:
        return f"refunded {amount}"

    register_chat(absurd_client, AbsurdAgent(inner, absurd_client, publish_events=True))
    task_id = await spawn_chat(absurd_client)
    await absurd_client.work_batch(claim_timeout=30)
    waiting = (await collect_until(absurd_client, task_id, "waiting_for_input")).event
    assert isinstance(waiting, WaitingForInputEvent)
    assert waiting.request is not None and waiting.request["name"] == "approve_refund"
    approvals: Any = waiting.request["requests"]["approvals"]  # type: ignore[index]
    assert [call["tool_call_id"] for call in approvals] == ["r1"]
    await inbox.approve(waiting.token)
    assert (await run_until_done(absurd_client, task_id)).state == "completed"
    assert (await collect(absurd_client, task_id))[-1].event == RunFinishedEvent(status="completed")


async def test_the_log_is_written_on_the_tasks_own_connection(absurd_client: AsyncAbsurd) -> None:
    """Pins `AsyncTaskContext._conn` (private, absurd-sdk 0.5.1), which the writer appends on."""
    from psycopg import AsyncConnection

    from pydantic_ai_absurd._absurd import missing_private_names, task_connection

    assert "AsyncTaskContext._conn" not in missing_private_names()
    seen: list[object] = []

    @absurd_client.register_task(name="probe")
    async def probe(params: Any, ctx: Any) -> int:
        conn = task_connection(ctx)
        assert isinstance(conn, AsyncConnection) and not conn.closed
        seen.append(conn)
        return 1

    spawned = await absurd_client.spawn("probe", {})
    await run_until_done(absurd_client, str(spawned["task_id"]))
    assert len(seen) == 1


async def test_the_capability_publishes_with_publish_events(absurd_client: AsyncAbsurd) -> None:
    """`AbsurdDurability(event_stream_handler=publish_events(handler))`: the same log, and the handler sees it all."""
    from pydantic_ai.messages import AgentStreamEvent
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    from pydantic_ai_absurd import AbsurdDurability, publish_events

    seen: list[str] = []

    async def mine(ctx: RunContext[None], stream: Any) -> None:
        async for event in stream:
            item: AgentStreamEvent = event
            seen.append(item.event_kind)

    async def stream(messages: list[Any], info: AgentInfo) -> Any:
        yield "hello "
        yield "world"

    agent = Agent(
        FunctionModel(stream_function=stream, model_name="scripted"),
        name="capable",
        capabilities=[AbsurdDurability(event_stream_handler=publish_events(mine))],
    )

    @absurd_client.register_task(name="chat")
    async def chat(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        async with agent.run_stream(params["prompt"]) as result:
            output = await result.get_output()
        return {"output": output}

    task_id = await spawn_chat(absurd_client)
    snapshot = await run_until_done(absurd_client, task_id)
    assert snapshot.result == {"output": "hello world"}, snapshot.failure
    events = await collect(absurd_client, task_id)
    assert kinds(events)[0] == "run_started" and kinds(events)[-1] == "run_finished"
    assert "part_delta" in kinds(events)
    assert "part_start" in seen  # the user's handler got the events too

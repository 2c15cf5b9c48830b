"""Helpers for the event-log tests: a streaming scripted agent, log reads, and the text a client would show."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
from absurd_sdk import AsyncAbsurd
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, PartDeltaEvent, PartStartEvent, TextPart, TextPartDelta
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, DeltaToolCalls, FunctionModel

from pydantic_ai_absurd import AbsurdAgent, TaskEvent, stream_events
from pydantic_ai_absurd.events import StepInterruptedEvent


def answer_words(count: int) -> list[str]:
    return [f"w{i} " for i in range(count)]


def streaming_agent(
    absurd: AsyncAbsurd,
    *,
    words: int = 5,
    tool: bool = True,
    before_word: Callable[[int, int], Any] | None = None,
    publish: bool = True,
) -> tuple[AbsurdAgent[None, str], dict[str, int]]:
    """An agent that calls `add` once (when `tool`), then streams `words` words. `before_word(turn, i)` may await."""
    calls = {"model": 0, "tool": 0}

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str | DeltaToolCalls]:
        calls["model"] += 1
        turn = sum(1 for m in messages if m.kind == "response")
        if tool and turn == 0:
            yield {0: DeltaToolCall(name="add", json_args='{"a": 1, "b": 2}', tool_call_id="c1")}
            return
        for i, word in enumerate(answer_words(words)):
            if before_word is not None:
                result = before_word(turn, i)
                if hasattr(result, "__await__"):
                    await result
            yield word

    base = Agent(FunctionModel(stream_function=stream, model_name="scripted"), name="support")

    @base.tool_plain
    def add(a: int, b: int) -> int:
        calls["tool"] += 1
        return a + b

    return AbsurdAgent(base, absurd, publish_events=publish), calls


async def collect(absurd: AsyncAbsurd, task_id: str, *, after: int | None = None) -> list[TaskEvent]:
    return [item async for item in stream_events(absurd, task_id, after=after)]


async def log_rows(dsn: str, queue: str, task_id: str) -> list[tuple[int, str, int | None, str | None]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "select seq, kind, attempt, step from pydantic_ai_absurd.events"
            " where queue_name = %s and task_id = %s order by seq",
            (queue, task_id),
        )
        return [(int(r[0]), str(r[1]), r[2], r[3]) for r in await cur.fetchall()]


def shown_text(events: list[TaskEvent]) -> str:
    """The answer a client shows: text of all parts, dropping the events of steps marked interrupted."""
    lost = {e.event.step: e.event.last_seq for e in events if isinstance(e.event, StepInterruptedEvent)}
    text: list[str] = []
    for item in events:
        if item.step in lost and item.seq <= lost[item.step]:
            continue
        event = item.event
        if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
            text.append(event.part.content)
        elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
            text.append(event.delta.content_delta)
    return "".join(text)

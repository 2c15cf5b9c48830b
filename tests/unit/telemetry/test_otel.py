"""Replay-safe OpenTelemetry: spans once per executed step, attempt attributes, trace context from spawn."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, cast

import pytest
from absurd_sdk import AbsurdHooks, AsyncAbsurd, AsyncTaskContext, SpawnOptions
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic_ai.models.instrumented import InstrumentationSettings

from pydantic_ai_absurd import inspect_task, otel_hooks
from pydantic_ai_absurd._pydantic_ai import active_run_usage
from pydantic_ai_absurd.telemetry import TRACE_HEADER, with_default_hooks
from tests.helpers.agents import run_until_done
from tests.helpers.inspection import billing_agent, register_billing


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def _named(spans: list[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name.startswith(prefix)]


def _attr(span: ReadableSpan, key: str) -> Any:
    return (span.attributes or {}).get(key)


async def test_replay_emits_no_duplicate_spans_and_usage_counts_once(
    absurd_dsn: str, absurd_queue: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    absurd = AsyncAbsurd(absurd_dsn, queue_name=absurd_queue, hooks=otel_hooks(tracer_provider=provider))
    try:
        settings = InstrumentationSettings(tracer_provider=provider)
        register_billing(absurd, billing_agent(crash_first=True, instrument=settings))
        with provider.get_tracer("web").start_as_current_span("web request") as web:
            spawned = await absurd.spawn("billing", {"prompt": "bill me"})
        assert (await run_until_done(absurd, spawned["task_id"])).state == "completed"
        timeline = await inspect_task(absurd, spawned["task_id"])
    finally:
        await absurd.close()
    finished = list(exporter.get_finished_spans())

    # One `chat` span per model request that ran: attempt 2 replayed the first one and made the second.
    chats = _named(finished, "chat ")
    assert len(chats) == 2 == timeline.totals.tokens_spent.requests
    # The tool ran on both attempts (it failed on the first): each execution has its span, none is a replay.
    assert len(_named(finished, "execute_tool charge")) == 2

    task_spans = _named(finished, "absurd task billing")
    runs = _named(finished, "invoke_agent support")
    assert [_attr(span, "absurd.attempt") for span in task_spans] == [1, 2]
    assert [_attr(span, "absurd.outcome") for span in task_spans] == ["failed", "completed"]
    assert [(_attr(run, "absurd.attempt"), _attr(run, "absurd.replayed_steps")) for run in runs] == [(1, 0), (2, 1)]
    assert {_attr(run, "absurd.task_id") for run in runs} == {str(spawned["task_id"])}
    assert [_attr(run, "absurd.run_id") for run in runs] == [attempt.run_id for attempt in timeline.attempts]

    # request -> task -> agent run -> model and tool calls, all in the web request's trace
    web_context = web.get_span_context()
    assert {span.context.trace_id for span in finished if span.context} == {web_context.trace_id}
    for task_span, run in zip(task_spans, runs, strict=True):
        assert task_span.parent is not None and task_span.parent.span_id == web_context.span_id
        assert run.parent is not None and task_span.context is not None
        assert run.parent.span_id == task_span.context.span_id

    # Usage: chat spans and agent run spans each sum to what was spent, nothing counted twice.
    spent = timeline.totals.tokens_spent
    assert sum(_attr(chat, "gen_ai.usage.input_tokens") for chat in chats) == spent.input_tokens
    assert sum(_attr(run, "gen_ai.aggregated_usage.input_tokens") for run in runs) == spent.input_tokens
    assert sum(_attr(run, "gen_ai.aggregated_usage.output_tokens") for run in runs) == spent.output_tokens


async def test_hooks_keep_user_hooks(spans: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, _ = spans
    seen: list[str] = []

    def before_spawn(task_name: str, params: Any, options: SpawnOptions) -> SpawnOptions:
        seen.append("spawn")
        return {**options, "headers": {"tenant": "acme"}}

    async def wrap(ctx: AsyncTaskContext, execute: Any) -> Any:
        seen.append("wrap")
        return await execute()

    user: Any = {"before_spawn": before_spawn, "wrap_task_execution": wrap}
    hooks: dict[str, Any] = dict(otel_hooks(user, tracer_provider=provider))
    again: dict[str, Any] = dict(otel_hooks(cast(AbsurdHooks, hooks)))
    assert again["wrap_task_execution"] is hooks["wrap_task_execution"]  # not applied twice
    assert dict(with_default_hooks(cast(AbsurdHooks, hooks)))["wrap_task_execution"] is hooks["wrap_task_execution"]

    spawn = hooks["before_spawn"]
    assert spawn("t", {}, {}) == {"headers": {"tenant": "acme"}}  # no active span: nothing to propagate
    with provider.get_tracer("web").start_as_current_span("web"):
        options: Any = spawn("t", {}, {})
    assert options["headers"]["tenant"] == "acme"
    assert options["headers"][TRACE_HEADER]["traceparent"].startswith("00-")
    assert seen == ["spawn", "spawn"]

    async def async_spawn(task_name: str, params: Any, options: SpawnOptions) -> SpawnOptions:
        return options

    chained: dict[str, Any] = dict(otel_hooks(cast(AbsurdHooks, {"before_spawn": async_spawn})))
    with provider.get_tracer("web").start_as_current_span("web"):
        result: Any = await chained["before_spawn"]("t", {}, {})
    assert TRACE_HEADER in result["headers"]


def test_worker_default_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "wrap_task_execution" in with_default_hooks({})
    monkeypatch.setenv("PYDANTIC_AI_ABSURD_OTEL", "0")
    assert with_default_hooks({}) == {}


def test_private_names_pinned() -> None:
    """`pydantic_ai._usage_attribution._active` and the SDK's context fields the spans read."""
    from pydantic_ai import _usage_attribution  # pyright: ignore[reportPrivateUsage]
    from pydantic_ai.usage import RunUsage

    usage = RunUsage()
    assert active_run_usage() is None
    with _usage_attribution.accumulate(usage):
        assert active_run_usage() is usage
    for name in ("_task", "_step_name_counter", "_checkpoint_cache", "_queue_name"):
        assert name in AsyncTaskContext.__annotations__
    assert os.environ.get("PYDANTIC_AI_ABSURD_OTEL", "1") != "0"

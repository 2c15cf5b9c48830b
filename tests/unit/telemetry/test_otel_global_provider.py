"""Task spans with the global tracer provider: recorded once one is set, skipped (as no-ops) while none is."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from absurd_sdk import AsyncAbsurd, AsyncTaskContext
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pydantic_ai_absurd import otel_hooks
from pydantic_ai_absurd.telemetry import TRACE_HEADER
from tests.helpers.agents import run_until_done

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT = f"00-{TRACE_ID:032x}-b7ad6b7169203331-01"


@pytest.fixture
def no_global_provider() -> None:
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):  # pragma: no cover - one is set
        pytest.skip("a global tracer provider is set in this process")


async def _run(dsn: str, queue: str, headers: dict[str, Any] | None = None) -> list[tuple[int, bool]]:
    """Run one task with `otel_hooks()`; the trace id and validity of the span current in its handler."""
    seen: list[tuple[int, bool]] = []
    absurd = AsyncAbsurd(dsn, queue_name=queue, hooks=otel_hooks())
    try:

        @absurd.register_task(name="traced")
        async def traced(params: Any, ctx: AsyncTaskContext) -> str:
            context = trace.get_current_span().get_span_context()
            seen.append((context.trace_id, context.is_valid))
            return "done"

        spawned = await absurd.spawn("traced", {}, headers=headers)
        snapshot = await run_until_done(absurd, spawned["task_id"])
        assert snapshot.state == "completed" and snapshot.result == "done"
    finally:
        await absurd.close()
    return seen


async def test_no_provider_no_parent_runs_the_task_without_a_span(
    no_global_provider: None, absurd_dsn: str, absurd_queue: str
) -> None:
    assert await _run(absurd_dsn, absurd_queue) == [(0, False)]


async def test_no_provider_keeps_the_spawners_trace_current(
    no_global_provider: None, absurd_dsn: str, absurd_queue: str
) -> None:
    assert await _run(absurd_dsn, absurd_queue, {TRACE_HEADER: {"traceparent": PARENT}}) == [(TRACE_ID, True)]


@pytest.fixture
def global_provider(no_global_provider: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # `set_tracer_provider` works once per process; this is the global it sets, restored after the test.
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    yield exporter
    provider.shutdown()


async def test_a_provider_set_after_the_hooks_records_the_task_spans(
    global_provider: InMemorySpanExporter, absurd_dsn: str, absurd_queue: str
) -> None:
    seen = await _run(absurd_dsn, absurd_queue, {TRACE_HEADER: {"traceparent": PARENT}})
    [span] = [span for span in global_provider.get_finished_spans() if span.name == "absurd task traced"]
    assert (span.attributes or {}).get("absurd.outcome") == "completed"
    assert span.parent is not None and span.parent.trace_id == TRACE_ID
    assert span.context is not None and seen == [(TRACE_ID, True)]
    assert await _run(absurd_dsn, absurd_queue) != []  # without a parent: a root span of its own
    assert len([span for span in global_provider.get_finished_spans() if span.name == "absurd task traced"]) == 2

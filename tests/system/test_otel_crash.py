"""Replay-safe OpenTelemetry across processes: one trace over a SIGKILLed worker and its replacement."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from absurd_sdk import AsyncAbsurd
from opentelemetry.sdk.trace import TracerProvider

from pydantic_ai_absurd import inspect_task, otel_hooks
from tests.helpers.polling import wait_terminal
from tests.helpers.processes import Workers


def _read_spans(state: Path, pid: int) -> list[dict[str, Any]]:
    path = state / f"spans-{pid}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.crash
async def test_trace_across_a_killed_worker_and_its_replacement(
    absurd_dsn: str, absurd_queue: str, tmp_path: Path, workers: Workers
) -> None:
    provider = TracerProvider()  # the web process's tracer: its span is the parent of the workers' spans
    (tmp_path / "kill-charge").touch()
    absurd = AsyncAbsurd(absurd_dsn, queue_name=absurd_queue, hooks=otel_hooks())
    try:
        with provider.get_tracer("web").start_as_current_span("web request") as web:
            spawned = await absurd.spawn("billing", {"prompt": "bill me"}, queue=absurd_queue)
        first = workers.app("otel_worker", absurd_dsn, absurd_queue, str(tmp_path))
        assert await asyncio.to_thread(first.wait, 60) == -signal.SIGKILL  # died inside `charge`
        second = workers.app("otel_worker", absurd_dsn, absurd_queue, str(tmp_path))
        try:
            assert (await wait_terminal(absurd, str(spawned["task_id"]), timeout=60)).state == "completed"
        finally:
            second.send_signal(signal.SIGTERM)
            await asyncio.to_thread(second.wait, 30)
        timeline = await inspect_task(absurd, spawned["task_id"])
    finally:
        await absurd.close()
        provider.shutdown()

    assert (tmp_path / "charges").read_text().split() == ["3"]  # the side effect ran once
    # The replacement took the dead worker's run over (no attempt used) and replayed its first step.
    assert [attempt.ended for attempt in timeline.attempts] == ["completed"]
    assert timeline.steps[0].kind == "model_request" and timeline.steps[0].replayed_by == (1,)
    dead, alive = _read_spans(tmp_path, first.pid), _read_spans(tmp_path, second.pid)

    # The killed worker exported its model request's span before dying (its run and task spans never ended).
    assert [span["name"] for span in dead] == ["chat scripted"]
    # The replacement replayed that request: no second span for it; it ran the tool and the last request.
    assert sorted(span["name"] for span in alive) == [
        "absurd task billing",
        "chat scripted",
        "execute_tool charge",
        "invoke_agent support",
    ]
    (run,) = [span for span in alive if span["name"] == "invoke_agent support"]
    (task,) = [span for span in alive if span["name"] == "absurd task billing"]
    assert run["attributes"]["absurd.attempt"] == 1 and run["attributes"]["absurd.replayed_steps"] == 1
    assert run["attributes"]["absurd.task_id"] == str(spawned["task_id"])
    assert task["attributes"]["absurd.outcome"] == "completed"

    # One trace from the web request across both processes.
    web_context = web.get_span_context()
    assert {span["trace_id"] for span in dead + alive} == {web_context.trace_id}
    assert task["parent_id"] == web_context.span_id and run["parent_id"] == task["span_id"]

    chats = [span for span in dead + alive if span["name"] == "chat scripted"]
    spent = timeline.totals.tokens_spent
    assert sum(span["attributes"]["gen_ai.usage.input_tokens"] for span in chats) == spent.input_tokens
    # The replacement's run span counts only the request it made, not the replayed one.
    (last_request,) = [step for step in timeline.steps if not step.replayed_by and step.usage is not None]
    assert last_request.usage is not None
    assert run["attributes"]["gen_ai.aggregated_usage.input_tokens"] == last_request.usage.input_tokens
    assert timeline.totals.tokens_saved.input_tokens == spent.input_tokens - last_request.usage.input_tokens

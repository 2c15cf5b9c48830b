"""Reading step names and checkpoint values, and how attempts ended (no database needed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pydantic_ai_absurd._absurd import CheckpointRow
from pydantic_ai_absurd.errors import InvalidDurationError
from pydantic_ai_absurd.inspection._render import parse_duration
from pydantic_ai_absurd.inspection._steps import decode_value, parse_step_name
from pydantic_ai_absurd.inspection._timeline import build_timeline


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("support__model.request", ("model_request", "support", 1, None, None)),
        ("support__model.request_stream.gpt-5#3", ("model_request", "support", 1, None, None)),
        ("support~2__model.request", ("model_request", "support", 2, None, None)),
        (
            "support__function_toolset__tools.call_tool:charge@call_1",
            ("tool_call", "support", 1, "charge", "call_1"),
        ),
        ("support__mcp_server__weather.call_tool:forecast@c%40x", ("mcp_call", "support", 1, "forecast", "c@x")),
        ("support__mcp_server__weather.get_tools#2", ("get_tools", "support", 1, None, None)),
        ("support__mcp_server__weather.get_instructions", ("get_instructions", "support", 1, None, None)),
        (
            "support__function_toolset__<agent>.validate_args:checked@c-1",
            ("validate_args", "support", 1, "checked", "c-1"),
        ),
        (
            "support__event_stream_handler@function_tool_call@c-1",
            ("event_handler", "support", 1, None, "c-1"),
        ),
        ("support__external_event:approve", ("wait_for_input", "support", 1, None, None)),
        ("support~3__external_event:approve.event", ("wait_for_input", "support", 3, None, None)),
        ("support__run.start_time@t1:support:2", ("run_start_time", "support", 2, None, None)),
        ("support__graph.sleep", ("sleep", "support", 1, None, None)),
        ("support__capability__audit.record@c-2", ("capability", "support", 1, None, "c-2")),
        ("support__conversation_load@chat-1", ("conversation_load", "support", 1, None, None)),
        ("support__conversation_save@chat%401#2", ("conversation_save", "support", 1, None, None)),
        ("support~2__model.request%232.provider_wait", ("provider_wait", "support", 2, None, None)),
        ("support__event_stream_handler@part_start", ("event_handler", "support", 1, None, None)),
        ("my-own-step", ("other", None, None, None, None)),
    ],
)
def test_step_names(name: str, expected: tuple[Any, ...]) -> None:
    parsed = parse_step_name(name)
    assert (parsed.kind, parsed.agent, parsed.run_ordinal, parsed.tool_name, parsed.tool_call_id) == expected


def test_wait_parts() -> None:
    assert parse_step_name("a__external_event:approve.timed_out").wait_part == "timed_out"
    assert parse_step_name("a__external_event:approve").wait_name == "approve"


def test_values() -> None:
    tool = decode_value({"json": json.dumps({"result": {"ok": 1}, "kind": "tool_return"})}, "tool_call")
    assert tool.preview == '{"ok": 1}'
    failed = decode_value({"error": "Tool 'x' returned a value that cannot be stored"}, "tool_call")
    assert failed.error is not None and failed.preview is not None
    assert decode_value("2026-01-01T00:00:00+00:00", "run_start_time").preview == "2026-01-01T00:00:00+00:00"
    long = decode_value({"json": json.dumps("x " * 200)}, "other")
    assert long.preview is not None and len(long.preview) == 120 and long.preview.endswith("…")


def _run(attempt: int, state: str, reason: Any = None, wake_event: str | None = None) -> dict[str, Any]:
    return {
        "run_id": f"r{attempt}",
        "attempt": attempt,
        "state": state,
        "claimed_by": "w",
        "claim_expires_at": None,
        "available_at": None,
        "wake_event": wake_event,
        "started_at": None,
        "completed_at": None,
        "failed_at": None,
        "failure_reason": reason,
        "created_at": None,
    }


def test_attempt_ends_waits_and_replays() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    task = {
        "task_id": "t",
        "task_name": "n",
        "params": {},
        "headers": {"pydantic_ai_absurd.forked_from": {"task_id": "t-parent", "at_step": 2, "last_step": "a"}},
        "state": "sleeping",
        "attempts": 3,
        "max_attempts": 5,
        "enqueue_at": t0,
        "first_started_at": t0,
        "cancelled_at": None,
        "result": None,
        "failure_reason": None,
    }
    runs = [
        _run(1, "failed", {"name": "$ClaimTimeout", "message": "worker did not finish"}),
        _run(2, "failed", {"name": "ValueError", "message": "boom"}),
        _run(3, "sleeping", wake_event="ev"),
    ]
    rows = [
        CheckpointRow("a__external_event:approve", {"json": "null"}, "r1", t0),
        CheckpointRow("a__graph.sleep", {"json": json.dumps((t0 + timedelta(seconds=30)).isoformat())}, "r1", t0),
        CheckpointRow("a__external_event:approve.event", {"ok": True}, "r3", t0 + timedelta(seconds=12)),
    ]
    timeline = build_timeline("q", task, runs, rows)
    assert [attempt.ended for attempt in timeline.attempts] == ["lease_expired", "failed", "waiting"]
    # attempt 2 wrote nothing and did not complete: it is not known to have replayed anything
    assert [step.replayed_by for step in timeline.steps] == [(3,), (3,), ()]
    assert timeline.totals.waiting_seconds == pytest.approx(42.0)
    assert timeline.forked_from == "t-parent"


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1h30m", 5400), ("2d", 172800)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5x", "-3", "1h soon"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvalidDurationError, match="Invalid duration"):
        parse_duration(text)

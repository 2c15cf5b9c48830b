"""`inspect_task`, `list_tasks` and the `inspect` / `tasks` CLI against real tasks in Postgres."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
import pytest
from absurd_sdk import AsyncAbsurd
from psycopg import sql

from pydantic_ai_absurd import TaskTimeline, inspect_task
from pydantic_ai_absurd.cli import main
from pydantic_ai_absurd.client import TaskNotFoundError
from pydantic_ai_absurd.errors import QueueNotFoundError
from pydantic_ai_absurd.inspection import JSON_FORMAT_VERSION, list_tasks
from pydantic_ai_absurd.inspection import _timeline as timeline_module  # pyright: ignore[reportPrivateUsage]
from tests.helpers.agents import run_until_done
from tests.helpers.inspection import billing_agent, register_billing


async def cli(*args: str) -> int:
    """Run the CLI in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(main, list(args))


async def _crashed_then_resumed(absurd: AsyncAbsurd) -> str:
    register_billing(absurd, billing_agent(crash_first=True))
    spawned = await absurd.spawn("billing", {"prompt": "bill me"})
    snapshot = await run_until_done(absurd, spawned["task_id"])
    assert snapshot.state == "completed"
    return str(spawned["task_id"])


async def test_timeline_of_a_crashed_and_resumed_task(absurd_client: AsyncAbsurd, absurd_queue: str) -> None:
    task_id = await _crashed_then_resumed(absurd_client)

    timeline = await inspect_task(absurd_client, task_id)

    assert isinstance(timeline, TaskTimeline)
    assert (timeline.task_id, timeline.queue, timeline.task_name, timeline.state) == (
        task_id,
        absurd_queue,
        "billing",
        "completed",
    )
    assert timeline.params == {"prompt": "bill me"}
    assert timeline.result == {"outputs": ["charged: {'receipt': 'r-3'}"]}
    first, second = timeline.attempts
    assert (first.attempt, first.ended, first.steps_executed) == (1, "failed", 1)
    assert first.failure is not None and first.failure["name"] == "SimulatedCrash"
    assert (second.attempt, second.ended, second.steps_executed) == (2, "completed", 2)
    assert first.claimed_by and second.claimed_by and second.finished_at is not None

    (run,) = timeline.runs
    assert (run.agent, run.run_ordinal) == ("support", 1)
    model, tool, answer = run.steps
    assert [step.index for step in run.steps] == [1, 2, 3]
    assert (model.name, model.kind, model.model_name) == ("support__model.request", "model_request", "scripted")
    assert model.preview == '→ charge({"amount": 3})'
    assert (model.executed_by, model.replayed_by) == (1, (2,))
    assert model.usage is not None and model.usage.input_tokens > 0 and model.usage.requests == 1
    assert tool.name == "support__function_toolset__<agent>.call_tool:charge@call_1"
    assert (tool.kind, tool.tool_name, tool.tool_call_id, tool.tool_args) == (
        "tool_call",
        "charge",
        "call_1",
        {"amount": 3},
    )
    assert tool.result_preview == '{"receipt": "r-3"}'
    assert (tool.executed_by, tool.replayed_by) == (2, ())
    assert (answer.name, answer.executed_by, answer.preview) == (
        "support__model.request#2",
        2,
        "charged: {'receipt': 'r-3'}",
    )
    assert all(step.committed_at is not None for step in run.steps)
    assert model.committed_at is not None and tool.committed_at is not None and model.committed_at <= tool.committed_at

    totals = timeline.totals
    assert model.usage is not None and answer.usage is not None
    assert totals.tokens_spent == model.usage + answer.usage
    assert totals.tokens_saved == model.usage
    assert (totals.steps, totals.steps_replayed, totals.waiting_seconds) == (3, 1, 0.0)
    assert timeline.forked_from is None


async def test_second_agent_run_is_its_own_group(absurd_client: AsyncAbsurd) -> None:
    register_billing(absurd_client, billing_agent(), runs=2)
    spawned = await absurd_client.spawn("billing", {"prompt": "twice"})
    assert (await run_until_done(absurd_client, spawned["task_id"])).state == "completed"

    timeline = await inspect_task(absurd_client, spawned["task_id"])  # a UUID is accepted too

    assert [(run.agent, run.run_ordinal, len(run.steps)) for run in timeline.runs] == [
        ("support", 1, 3),
        ("support", 2, 3),
    ]
    second = timeline.runs[1].steps
    assert second[1].name == "support~2__function_toolset__<agent>.call_tool:charge@call_1"
    assert second[1].tool_args == {"amount": 3}
    assert timeline.totals.tokens_saved.total_tokens == 0
    assert [step.index for step in timeline.steps] == list(range(1, 7))
    assert timeline.totals.tokens_spent == timeline.runs[0].usage + timeline.runs[1].usage


async def test_json_is_stable_and_cli_prints_it(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    task_id = await _crashed_then_resumed(absurd_client)

    assert await cli("inspect", task_id, "--database", absurd_dsn, "--json") == 0  # every queue searched
    data = json.loads(capsys.readouterr().out)

    assert data["format"] == JSON_FORMAT_VERSION
    assert set(data) == {
        "format", "task_id", "queue", "task_name", "state", "params", "headers", "result", "failure",
        "enqueued_at", "started_at", "cancelled_at", "max_attempts", "forked_from", "attempts", "runs", "totals",
        "lost_executions", "known_to_workers", "parent", "children", "total_usage",
    }  # fmt: skip
    assert data["queue"] == absurd_queue
    assert [attempt["ended"] for attempt in data["attempts"]] == ["failed", "completed"]
    step = data["runs"][0]["steps"][0]
    assert set(step) == {
        "index", "name", "kind", "agent", "run_ordinal", "model_name", "usage", "preview", "tool_name",
        "tool_call_id", "tool_args", "result_preview", "error", "executed_by", "replayed_by", "committed_at",
        "waited_seconds",
    }  # fmt: skip
    assert step["replayed_by"] == [2]
    assert set(data["totals"]) == {"tokens_spent", "tokens_saved", "steps", "steps_replayed", "waiting_seconds"}
    assert data["totals"]["tokens_saved"] == step["usage"]
    assert data == json.loads(json.dumps((await inspect_task(absurd_client, task_id)).to_json(), default=str))


async def test_cli_inspect_human_output_fits_100_columns(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    task_id = await _crashed_then_resumed(absurd_client)

    assert await cli("inspect", task_id, "-d", absurd_dsn, "-q", absurd_queue) == 0
    out = capsys.readouterr().out

    assert f"Task {task_id} (billing) on queue {absurd_queue}: completed" in out
    assert "Agent run support #1 (3 steps" in out
    assert 'charge({"amount": 3})' in out and "ran #1, replayed #2" in out
    assert "SimulatedCrash: worker died while charging" in out
    assert "tokens saved by replay:" in out
    assert max(len(line) for line in out.splitlines()) <= 100


async def test_unknown_task(absurd_client: AsyncAbsurd, absurd_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    missing = "01900000-0000-7000-8000-000000000000"
    with pytest.raises(TaskNotFoundError, match="No task"):
        await inspect_task(absurd_client, missing)

    assert await cli("inspect", missing, "-d", absurd_dsn) == 2
    err = capsys.readouterr().err
    assert err.startswith("pydantic-ai-absurd: error: No task 01900000") and err.count("\n") == 1
    assert await cli("inspect", "not-a-uuid", "-d", absurd_dsn) == 2
    assert "is not a task id" in capsys.readouterr().err


async def _backdate(dsn: str, queue: str, task_id: str, seconds: int) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL(
                "update absurd.{} set enqueue_at = enqueue_at - make_interval(secs => %s) where task_id = %s"
            ).format(sql.Identifier(f"t_{queue}")),
            (seconds, task_id),
        )


async def test_tasks_listing(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, capsys: pytest.CaptureFixture[str]
) -> None:
    done = await _crashed_then_resumed(absurd_client)
    await _backdate(absurd_dsn, absurd_queue, done, 7200)
    waiting = str((await absurd_client.spawn("billing", {"prompt": "later"}))["task_id"])

    rows = await list_tasks(absurd_client)
    assert [(row.task_id, row.state, row.attempts) for row in rows] == [(waiting, "pending", 1), (done, "completed", 2)]
    assert rows[1].last_step == "support__model.request#2" and rows[0].last_step is None
    assert rows[1].age_seconds >= 7200 > rows[0].age_seconds
    assert [row.task_id for row in await list_tasks(absurd_client, state="completed")] == [done]
    assert [row.task_id for row in await list_tasks(absurd_client, since=3600)] == [waiting]
    assert await list_tasks(absurd_client, name="other") == []
    assert [row.task_id for row in await list_tasks(absurd_client, limit=1)] == [waiting]

    assert await cli("tasks", "-d", absurd_dsn, "-q", absurd_queue) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["TASK", "ID", "NAME", "STATE", "ATT", "AGE", "LAST", "STEP"]  # one queue: no column
    assert lines[1].startswith(waiting) and lines[2].startswith(done)
    assert "completed" in lines[2] and "2.0h" in lines[2] and "support model.request#2" in lines[2]
    assert max(len(line) for line in lines) <= 100

    assert await cli("tasks", "-d", absurd_dsn, "--queue", absurd_queue, "--state", "completed", "--json") == 0
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert data["format"] == JSON_FORMAT_VERSION
    (row,) = data["tasks"]
    assert set(row) == {
        "task_id", "queue", "task_name", "state", "attempts", "enqueued_at", "age_seconds", "last_step",
        "last_step_at", "claimed_by", "known_to_workers",
    }  # fmt: skip
    assert (row["task_id"], row["queue"], row["attempts"]) == (done, absurd_queue, 2)

    assert await cli("tasks", "-d", absurd_dsn, "--since", "1h30m", "--name", "billing", "--json") == 0
    assert waiting in [row["task_id"] for row in json.loads(capsys.readouterr().out)["tasks"]]
    assert await cli("tasks", "-d", absurd_dsn, "--since", "soon") == 2
    assert "Invalid duration 'soon'" in capsys.readouterr().err


async def test_missing_queue_is_one_line(absurd_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli("tasks", "-d", absurd_dsn, "-q", "no_such_queue_here") == 2
    assert "Queue 'no_such_queue_here' does not exist" in capsys.readouterr().err


async def test_a_queue_dropped_while_every_queue_is_searched_is_skipped(
    absurd_client: AsyncAbsurd, absurd_dsn: str, absurd_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    @absurd_client.register_task(name="hello")
    async def hello(params: Any, ctx: Any) -> str:
        return "hi"

    task_id = str((await absurd_client.spawn("hello", None))["task_id"])
    listed = timeline_module._queue_names  # pyright: ignore[reportPrivateUsage]

    async def with_a_vanished_queue(conn: Any) -> list[str]:
        return ["test_dropped_meanwhile", *await listed(conn)]  # listed, then dropped before it was read

    monkeypatch.setattr(timeline_module, "_queue_names", with_a_vanished_queue)
    assert (await inspect_task(absurd_dsn, task_id)).task_id == task_id
    assert task_id in [row.task_id for row in await list_tasks(absurd_dsn, limit=10_000)]
    with pytest.raises(QueueNotFoundError):  # a queue asked for by name still fails loudly
        await list_tasks(absurd_dsn, queue="test_dropped_meanwhile")
